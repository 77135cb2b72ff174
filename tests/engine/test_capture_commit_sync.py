"""An incremental capture on file:// whose reader processes find its files' data in the
parent snapshot commits with fsyncs of what it wrote, not a sync of the whole filesystem:
the parent's objects are durable (its commit made them so), even when a reader's result
is taken in while the walk goes on, before the walk has passed every parent entry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.capture.archiver import Archiver
from workers.engine.repository.repository import SYNCED_KEY

from .conftest import dir_state, make_meta


def test_rereading_the_parents_data_during_the_walk_needs_no_full_sync(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 1)  # reader processes
    src = tmp_path / "srv"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(3):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(3000 + 40_000 * (i == 2)))
    engine.capture(make_meta(1), dir_state(src))
    assert not engine.backend.exists(SYNCED_KEY)  # a few objects written: fsyncs only
    later = time.time() + 5
    for f in src.rglob("f*"):
        os.utime(f, (later, later))  # new mtime and ctime, same bytes: all read again

    orig = Archiver._walked

    def walked(self: Archiver, *args: object) -> None:
        """Each directory's results taken in before the walk goes on (as a slow walk
        would): most of them before it has passed the parent's last entries."""
        orig(self, *args)  # type: ignore[arg-type]
        pool, feed = self._pool, self._feed
        deadline = time.monotonic() + 30
        while (pool is not None and feed is not None and time.monotonic() < deadline
               and any(w.inflight for w in pool.workers)):
            pool._receive(0.05)
            pool._send(feed)

    monkeypatch.setattr(Archiver, "_walked", walked)
    res = engine.capture(make_meta(2), dir_state(src))
    assert res.files == 12 and not res.warnings
    assert not engine.backend.exists(SYNCED_KEY), "a full filesystem sync for the parent's data"
