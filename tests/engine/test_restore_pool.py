"""A big restore's writer processes share the work: one that finished its share takes over
the rest of another's (file:// and s3://)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.repository.packformat import Layout
from workers.engine.restore import shares, writerpool
from workers.engine.restore.messages import End, WriterMessage
from workers.engine.workerproc import frames

from .conftest import BOTH_BACKENDS, dir_state, make_meta
from .treecmp import assert_same


@BOTH_BACKENDS
def test_a_writer_done_first_takes_over_half_of_what_another_has_left(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path,
        backend_kind: str) -> None:
    """The cost estimate that splits the files is badly off here (every file but two to
    the first writer): the second finishes at once and takes the second half of the first
    one's rest, and so on while a half is worth it; every file is written once. From
    file:// a rest of 2,000 files is worth it (RESTORE_STEAL_MIN_LOCAL), from S3 not
    (RESTORE_STEAL_MIN, lowered here)."""
    src = tmp_path / "srv"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(200):
            (src / f"d{d}" / f"f{i:03}").write_bytes(b"%d %d " % (d, i) * (1 + i % 50))
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    monkeypatch.setattr(tuning, "RESTORE_PROCESSES", 2)
    if backend_kind != "file":
        monkeypatch.setattr(tuning, "RESTORE_STEAL_MIN", 100)

    def lopsided(self: shares.Files, n: int) -> list[array[int]]:
        return [self.indexes[:-2], self.indexes[-2:]]

    monkeypatch.setattr(shares.Files, "split", lopsided)
    pools: list[writerpool.RestorePool] = []
    start = writerpool.start_pool
    safety: list[threading.Timer] = []

    def kept(*args: object) -> writerpool.RestorePool | None:
        """The pool, its first writer stopped (SIGSTOP) from when it was sent its share
        until the second asked for a cut of it: it has then written next to nothing, on
        any machine."""
        pool = start(*args)  # type: ignore[arg-type]
        assert pool is not None
        pools.append(pool)
        slow = pool.workers[0]
        send = frames.send

        def send_then_stop(sock: socket.socket, data: bytes) -> None:
            send(sock, data)
            if sock is slow.res and not safety:
                os.kill(slow.proc.pid, signal.SIGSTOP)
                safety.append(threading.Timer(30, os.kill, (slow.proc.pid, signal.SIGCONT)))
                safety[0].start()  # never a hung test, should no cut come

        monkeypatch.setattr(frames, "send", send_then_stop)
        steal = pool._steal_for

        def steal_then_resume(thief: int) -> None:
            steal(thief)
            os.kill(slow.proc.pid, signal.SIGCONT)

        pool._steal_for = steal_then_resume  # type: ignore[method-assign]
        return pool

    monkeypatch.setattr(writerpool, "start_pool", kept)
    dst = tmp_path / "out"
    result = engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert len(pools) == 1 and pools[0].steals >= 1, [p.steals for p in pools]
    assert result.files_written == 2000
    # each file's bytes counted once, also by the writer that took over a cut after its own
    # share (it reported its first share's bytes again: 268 of 199 MB on the bench rootfs)
    assert result.bytes_written == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    safety[0].cancel()


def test_with_three_writers_one_left_waiting_during_a_cut_is_given_work_once_it_is_answered(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """Three writers, the first holding every file but two: the second finishes and asks it
    for a cut; the third finishes while that cut is still unanswered (the first is stopped:
    SIGSTOP), so it has nothing to cut. Once the cut is answered (the second writes half of
    the first's rest), the third takes half of what one of them has left: it is not left
    idle until the end (as it was while a worker asked for a cut only at its own End)."""
    src = tmp_path / "srv"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(200):
            (src / f"d{d}" / f"f{i:03}").write_bytes(b"%d %d " % (d, i) * (1 + i % 50))
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    monkeypatch.setattr(tuning, "RESTORE_PROCESSES", 3)
    monkeypatch.setattr(tuning, "RESTORE_STEAL_MIN", 100)

    def lopsided(self: shares.Files, n: int) -> list[array[int]]:
        assert n == 3
        return [self.indexes[:-2], self.indexes[-2:-1], self.indexes[-1:]]

    monkeypatch.setattr(shares.Files, "split", lopsided)
    pools: list[writerpool.RestorePool] = []
    given: list[int] = []  # the writers handed a rest cut from another's share
    start = writerpool.start_pool
    safety: list[threading.Timer] = []

    def kept(*args: object) -> writerpool.RestorePool | None:
        """The first writer stopped from when it was sent its share until the parent has
        taken both other writers' End."""
        pool = start(*args)  # type: ignore[arg-type]
        assert pool is not None
        pools.append(pool)
        slow = pool.workers[0]
        send = frames.send

        def send_then_stop(sock: socket.socket, data: bytes) -> None:
            send(sock, data)
            if sock is slow.res and not safety:
                os.kill(slow.proc.pid, signal.SIGSTOP)
                safety.append(threading.Timer(30, os.kill, (slow.proc.pid, signal.SIGCONT)))
                safety[0].start()  # never a hung test

        monkeypatch.setattr(frames, "send", send_then_stop)
        handle, give = pool._handle, pool._give
        ends = [0]

        def handle_then_resume(i: int, msg: WriterMessage, progress: Callable[[int], None],
                               done: writerpool.Done) -> None:
            handle(i, msg, progress, done)
            if isinstance(msg, End) and i != 0:
                ends[0] += 1
                if ends[0] == 2:
                    os.kill(slow.proc.pid, signal.SIGCONT)

        def recorded(i: int, share: array[int], layouts: list[tuple[bytes, Layout]]) -> None:
            given.append(i)
            give(i, share, layouts)

        pool._handle = handle_then_resume  # type: ignore[method-assign]
        pool._give = recorded  # type: ignore[method-assign]
        return pool

    monkeypatch.setattr(writerpool, "start_pool", kept)
    dst = tmp_path / "out"
    result = engine.restore(1, dir_state(dst))
    safety[0].cancel()
    assert_same(src, dst)
    assert len(pools) == 1
    assert 2 in given, given
    assert result.files_written == 2000
    assert result.bytes_written == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())


def test_shares_are_cut_where_a_pack_starts_and_keep_each_packs_few_files_together() -> None:
    """The cost split moves a cut to where a new pack starts when that is close, and a
    share's few files of a pack the other share reads (small files finished out of order
    at a pack's edge, a big file's chunks in the neighbour's pack) go to that share: no
    pack is read by both writers. Far from any pack's start, the cut stays where the cost
    puts it."""
    files = shares.Files()
    a, b, big = b"A" * 32, b"B" * 32, b"C" * 32
    for i in range(1000):
        pack = a if i < 450 else b
        if i == 452:
            pack = a  # finished after the first of pack B: stored in A
        if i in (100, 460):
            pack = big  # a big file's chunks, in the pack of big chunks that A's run fills
        files.add(i, 10, pack)
    first, second = files.split(2)
    assert sorted([*first, *second]) == list(range(1000))
    assert set(first) == set(range(450)) | {452, 460}
    even = shares.Files()
    for i in range(1000):
        even.add(i, 10, a if i < 100 else b)  # the only pack start is far from the middle
    assert [len(s) for s in even.split(2)] == [500, 500]
