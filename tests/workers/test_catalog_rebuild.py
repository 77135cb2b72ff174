"""Catalog rebuild against a real redis-server and a real repository: a manifest that
recorded its server's spec brings the server back usable; one that did not (written by
an older engine) brings it back with a placeholder path that restores refuse."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings
from shared.store import Store
from workers.catalog import PLACEHOLDER_PREFIX, rebuild
from workers.engine import Engine, SnapshotMeta, StateSpec
from workers.jobs import Jobs
from workers.power import driver_for


def _meta(snapshot_id: int, server_id: int, spec: dict[str, object] | None) -> SnapshotMeta:
    return SnapshotMeta(
        snapshot_id=snapshot_id,
        server_id=server_id,
        server_name=f"srv-{server_id}",
        account="acme",
        name=f"snap-{snapshot_id}",
        description=None,
        created_at="2026-11-27T00:00:00Z",
        server_spec=spec,
    )


def test_rebuild_uses_the_recorded_server_spec_else_a_refused_placeholder(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "f").write_text("v1")
    engine = Engine(settings.storage_url)
    spec: dict[str, object] = {
        "state": {"kind": "directory", "path": str(state)},
        "power": {"kind": "none"},
        "host": "h1",
    }
    engine.capture(_meta(1, 10, spec), StateSpec(kind="directory", path=str(state)))
    engine.capture(_meta(2, 20, None), StateSpec(kind="directory", path=str(state)))

    report = rebuild(store, engine)
    assert (report.snapshots, report.servers) == (2, 2)

    known, unknown = store.get_server(10), store.get_server(20)
    assert known is not None and unknown is not None
    assert known.state.path == str(state) and known.host == "h1"
    assert unknown.state.path.startswith(PLACEHOLDER_PREFIX)

    jobs = Jobs(store, engine, driver_for, max_attempts=5)
    (state / "f").write_text("v2")
    refused = store.start_restore(account=None, snapshot_id=2)
    jobs.run(refused)
    op = store.get_operation(refused)
    assert op is not None and op.status == "failed"
    assert op.error is not None and op.error.code == "state_invalid"
    assert (state / "f").read_text() == "v2"

    restored = store.start_restore(account=None, snapshot_id=1)
    jobs.run(restored)
    op = store.get_operation(restored)
    assert op is not None and op.status == "succeeded", op
    assert (state / "f").read_text() == "v1"
