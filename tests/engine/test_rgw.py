"""s3:// on Ceph RGW (a real one-node cluster, tests/support/rgw.py), opt-in with
SNAPSHOTS_TEST_RGW=1: the backend's objects, ranges, listing and If-None-Match, and the
fleet's reclaim protocol (lock objects, condemn then sweep) end to end. The roundtrip
tests of test_roundtrip.py run on it too (their "rgw" parameter)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support import rgw
from workers.engine import Engine, SnapshotNotFound
from workers.engine.repository.s3backend import S3Backend

from .conftest import RGW_BUCKET, dir_state, make_meta
from .test_s3_backend import check_objects_ranges_and_listing
from .test_s3_fleet import make_tree
from .treecmp import describe

pytestmark = pytest.mark.skipif(rgw.available() is not None, reason=str(rgw.available()))


def test_objects_ranges_listing_and_if_none_match_on_rgw(rgw_server: rgw.RgwProcess,
                                                         tmp_path: Path) -> None:
    url = f"s3://{RGW_BUCKET}/backend-{os.getpid()}-{time.time_ns()}"
    check_objects_ranges_and_listing(S3Backend.from_url(url, rgw_server.options()))


def test_capture_restore_delete_and_reclaim_on_rgw(rgw_server: rgw.RgwProcess,
                                                   tmp_path: Path) -> None:
    opts = rgw_server.options(cache_dir=str(tmp_path / "cache"), lock_settle=0.05,
                              reclaim_margin=0.001)
    engine = Engine(f"s3://{RGW_BUCKET}/reclaim-{time.time_ns()}", opts)
    src = make_tree(tmp_path / "src", seed=1, files=8, size=300_000)
    engine.capture(make_meta(1), dir_state(src))
    reference = describe(src)
    (src / "f000").write_bytes(os.urandom(2_000_000))  # only in snapshot 2
    engine.capture(make_meta(2), dir_state(src))
    engine.delete(2)
    # Store clocks count whole seconds: an object is older than the margin a second on.
    time.sleep(1.5)
    first = engine.reclaim(wait=True)  # condemns what only snapshot 2 referenced
    assert not first.skipped_locked and first.objects_removed == 0
    time.sleep(1.5)
    second = engine.reclaim(wait=True)  # a margin later, still unreferenced: deleted
    assert second.objects_removed >= 1 and second.bytes_removed >= 2_000_000, second
    with pytest.raises(SnapshotNotFound):
        engine.restore(2, dir_state(tmp_path / "gone"))
    engine.restore(1, dir_state(src))  # what snapshot 1 needs is all still there
    assert describe(src) == reference
