"""fs/syncpoint.py: the coarse-clock wait of a sync point starts when the operation began
(`since`), so a restore's work before it (reading and decoding its manifest) overlaps the
tick instead of sleeping up to 4 ms after it; the point is still after `since`, and still
after the call when no `since` is given."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workers.engine.fs import fsutil, syncpoint


def _point(tmp_path: Path, since: int | None) -> tuple[syncpoint.SyncPoint, int]:
    """The sync point of tmp_path's filesystem, and time.time_ns() just before the call."""
    fd = os.open(tmp_path, fsutil.DIR_FLAGS)
    try:
        before = time.time_ns()
        return syncpoint.sync_point(fd, since=since), before
    finally:
        os.close(fd)


def test_the_wait_starts_when_the_operation_began(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(secs: float) -> None:
        slept.append(secs)
        real_sleep(secs)

    monkeypatch.setattr(time, "sleep", sleep)  # syncpoint calls time.sleep
    began = time.time_ns()
    real_sleep(0.012)  # the operation's work before its sync point: more than a tick
    point, _ = _point(tmp_path, since=began)
    assert slept == [] and point.at_ns > began  # no wait: the tick passed meanwhile
    point, before = _point(tmp_path, since=None)
    assert point.at_ns > before  # by default from the call: a ctime set before it vouches
