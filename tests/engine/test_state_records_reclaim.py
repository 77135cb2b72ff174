"""A reclaim deletes the trusted state records (restore/statecache.py) no engine of this
version reads: older formats everywhere, and path-only records in a shared (S3)
repository. Nothing deleted them before: they stayed in the repository for good."""

from __future__ import annotations

from workers.engine import Engine
from workers.engine.repository.backend import LocalBackend
from workers.engine.restore.statecache import StateCache, host_id

from .conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


def test_a_reclaim_deletes_the_state_records_no_engine_reads(
        engine: Engine, backend_kind: str) -> None:
    local = isinstance(engine.backend, LocalBackend)
    host = "" if local else host_id(engine.local_dir)
    current = StateCache(engine.backend, "/srv/web", host).key
    digest = "0" * 32
    old = [f"states/{digest}", f"states/{digest}-2"]
    path_only = f"states/{digest}-3"
    for key in (*old, path_only, current):
        engine.backend.put(key, b"record", durable=True)
    stats = engine.reclaim(wait=True)
    assert not stats.skipped_locked
    left = sorted(k for k, _s, _m in engine.backend.list("states/"))
    # file://: a record keyed by the path alone is the current one; s3://: per host
    assert left == (sorted([path_only, current]) if local else [current]), backend_kind
