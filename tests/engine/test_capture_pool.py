"""Capture worker processes start during the walk once the capture is known to be big, and
never outlive a capture whose walk fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workers.engine import Engine, TransientEngineError, tuning
from workers.engine.capture import readerpool
from workers.engine.capture.walk import Walker
from workers.engine.fs import fsutil
from workers.engine.workerproc.process import Child

from .conftest import dir_state, make_meta


def _tree(root: Path) -> None:
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            (root / d / f"f{i}").write_bytes(os.urandom(50_000))


def _record_pools(
        monkeypatch: pytest.MonkeyPatch,
        procs: list[Child] | None = None) -> list[readerpool.WorkerPool]:
    pools: list[readerpool.WorkerPool] = []
    orig = readerpool.WorkerPool.__init__

    def init(self: readerpool.WorkerPool, *a: object, **kw: object) -> None:
        orig(self, *a, **kw)  # type: ignore[arg-type]
        pools.append(self)
        if procs is not None:
            procs.extend(w.proc for w in self.workers)

    monkeypatch.setattr(readerpool.WorkerPool, "__init__", init)
    return pools


def test_pool_starts_while_walking_and_capture_is_complete(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 120_000)  # crossed in directory b
    pools = _record_pools(monkeypatch)
    walked: list[bytes] = []
    orig_walk = Walker.walk

    def walk(self: Walker, fd: int, rel: bytes) -> None:
        walked.append(rel)
        if rel == b"c":
            assert len(pools) == 1  # started before the walk reached the last directory
        orig_walk(self, fd, rel)

    monkeypatch.setattr(Walker, "walk", walk)
    src = tmp_path / "srv"
    _tree(src)
    res = engine.capture(make_meta(1), dir_state(src))
    assert b"c" in walked and len(pools) == 1 and res.files == 9 and not res.warnings
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    for d in ("a", "b", "c"):
        for i in range(3):
            assert (dst / d / f"f{i}").read_bytes() == (src / d / f"f{i}").read_bytes()


def test_pool_started_by_the_walk_is_killed_when_the_walk_fails(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 1)
    procs: list[Child] = []
    pools = _record_pools(monkeypatch, procs)
    orig = fsutil.read_xattrs

    def failing(target: int | bytes) -> list[tuple[str, bytes]]:
        if isinstance(target, int) and pools:  # the next directory's, once readers run
            raise OSError(5, "I/O error")
        return orig(target)

    monkeypatch.setattr(fsutil, "read_xattrs", failing)
    src = tmp_path / "srv"
    _tree(src)
    with pytest.raises(OSError):
        engine.capture(make_meta(1), dir_state(src))
    assert len(pools) == 1 and not pools[0].workers  # closed
    assert all(p.poll() is not None for p in procs)  # and its processes are gone
    assert engine.get_snapshot(1) is None


def test_reader_processes_killed_before_a_request_is_a_transient_error(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    # A SIGTERM to the worker's process group kills the readers first: sending a file to a
    # dead reader (EPIPE/ECONNRESET) must be the same retried error as reading its EOF, not
    # a bare OSError (an unexpected traceback, or internal_error on the last attempt).
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 1)
    procs: list[Child] = []
    pools = _record_pools(monkeypatch, procs)
    orig_run = readerpool.WorkerPool.run

    def run(self: readerpool.WorkerPool, *a: object, **kw: object) -> None:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        orig_run(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(readerpool.WorkerPool, "run", run)
    src = tmp_path / "srv"
    _tree(src)
    with pytest.raises(TransientEngineError, match="a capture worker process died"):
        engine.capture(make_meta(1), dir_state(src))
    assert len(pools) == 1 and procs and all(p.returncode is not None for p in procs)
