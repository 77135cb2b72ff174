"""Two hosts of one S3 repository, each with a state at the same path: each restore's
trusted record (statecache.py) is its host's own, so neither overwrites the other's and a
host's next restore still skips reading what its last one wrote."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine import Engine
from workers.engine.restore.statecache import host_id

from .conftest import dir_state, make_meta
from .treecmp import assert_same


def test_two_hosts_restoring_one_path_keep_their_own_records(seaweed: SeaweedProcess,
                                                              tmp_path: Path) -> None:
    repo = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    a, b = (Engine(repo, seaweed.options(cache_dir=str(tmp_path / f"cache-{h}"),
                                         lock_settle=0.05)) for h in "ab")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}").write_bytes(os.urandom(5000 + i))
    a.capture(make_meta(1), dir_state(src))
    state = tmp_path / "srv"  # one path, on each host in turn (moved aside in between)
    a.restore(1, dir_state(state))
    state.rename(tmp_path / "on-a")
    b.restore(1, dir_state(state))
    state.rename(tmp_path / "on-b")
    for engine, kept in ((a, "on-a"), (b, "on-b")):
        (tmp_path / kept).rename(state)
        r = engine.restore(1, dir_state(state))
        assert_same(src, state)
        # its own record vouches for every file its last restore wrote: none read
        # (with one record per path, the other host's had replaced it: all 10 re-read)
        assert (r.files_reused, engine.last_bytes_read) == (10, 0)
        state.rename(tmp_path / kept)


def test_a_host_id_is_made_once_and_kept(tmp_path: Path) -> None:
    first = host_id(str(tmp_path / "cache"))
    assert len(first) == 32 and host_id(str(tmp_path / "cache")) == first
    assert host_id(str(tmp_path / "other")) != first
