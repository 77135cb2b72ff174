"""A worker's engine runs each capture and restore in a child forked for it
(workers/engine/forked.py): the same results, errors and progress as in-process, nothing
done by the parent itself, and a child that dies is a transient error (retried)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.engine.conftest import build_full_tree, dir_state, make_meta
from tests.engine.treecmp import describe
from workers.engine import SnapshotNotFound, TransientEngineError, tuning
from workers.engine.capture import readerpool
from workers.engine.forked import ForkingEngine
from workers.engine.restore import writerpool
from workers.engine.workerproc import process


def _children() -> list[int]:
    """This process's children that are forks of it (same command line), but the zygote
    of its s3:// engines' workers (tests/conftest.py)."""
    with open("/proc/self/cmdline", "rb") as f:
        me = f.read()
    out = []
    for task in os.listdir("/proc/self/task"):
        try:  # a thread that ended since the listing has no entry (seen under load)
            with open(f"/proc/self/task/{task}/children") as f:
                pids = list(map(int, f.read().split()))
        except FileNotFoundError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as c, \
                        open(f"/proc/{pid}/comm") as name:
                    if c.read() == me and name.read().strip() != "snapshot-zygote":
                        out.append(pid)
            except FileNotFoundError:
                pass
    return out


def test_capture_and_restore_run_in_a_child_with_the_same_results(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    seen: list[tuple[int, int]] = []
    pids: set[int] = set()
    puts = engine.backend.puts  # the repository's config, made when the engine opened it

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        pids.update(_children())

    result = engine.capture(make_meta(1), dir_state(src), progress=progress)
    assert result.snapshot_id == 1 and result.files > 5
    assert seen and seen[-1][0] == seen[-1][1] > 0  # relayed up to the end
    assert pids and os.getpid() not in pids  # reported while a child ran
    assert engine.backend.puts == puts  # this process stored nothing itself
    assert engine.last_bytes_read > 6 << 20  # the child's count, handed back
    assert engine.get_snapshot(1) is not None
    assert engine.capture(make_meta(1), dir_state(src)) == result  # committed: the same

    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    assert describe(dst) == describe(src)
    # A live restore swaps a new tree in and leaves the old one to the janitor, in the
    # background: the child hands it over before it ends, this process removes it.
    (dst / "etc" / "hostname").write_text("changed\n")
    engine.restore(1, dir_state(dst), live=True)
    assert describe(dst) == describe(src)
    deadline = time.monotonic() + 30
    while [p for p in tmp_path.iterdir() if ".restore-" in p.name]:
        assert time.monotonic() < deadline, "the old tree was never removed"
        time.sleep(0.05)
    with pytest.raises(SnapshotNotFound, match="snapshot 7 not found"):  # its own type
        engine.restore(7, dir_state(tmp_path / "none"))
    assert not _children()  # every child waited for


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(") ", 1)[1].split()[1])


def test_the_childs_reader_and_writer_processes_are_forks_of_its_own_zygote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not fresh interpreters: forks of a zygote the operation's child forked at its start
    (sharing the worker's interpreter and modules), each gone with the operation."""
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    seen = tmp_path / "workers"
    started = process.WorkerProcess.__init__

    def record(self: process.WorkerProcess, module: str, setup: bytes) -> None:
        started(self, module, setup)  # in the operation's child: a copy of this patch
        with open(seen, "a") as f:
            f.write(f"{module} {type(self.proc).__name__} {os.getpid()} "
                    f"{_ppid(_ppid(self.proc.pid))}\n")

    monkeypatch.setattr(process.WorkerProcess, "__init__", record)
    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    engine.capture(make_meta(1), dir_state(src))
    engine.restore(1, dir_state(tmp_path / "dst"))
    assert describe(tmp_path / "dst") == describe(src)
    lines = [line.split() for line in seen.read_text().splitlines()]
    assert {m for m, *_ in lines} == {readerpool._MODULE, writerpool._MODULE}
    for _module, kind, op_child, grandparent in lines:
        assert kind == "ForkedProcess"  # not subprocess.Popen (python -c)
        assert int(op_child) != os.getpid() and grandparent == op_child  # child -> zygote
    assert not _children()


def test_a_child_that_dies_is_a_transient_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")

    def kill_it(_done: int, _total: int) -> None:
        for pid in _children():
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(TransientEngineError, match=r"process died \(killed by SIGKILL\)"):
        engine.capture(make_meta(1), dir_state(src), progress=kill_it)
    assert engine.get_snapshot(1) is None
    assert not _children()
    assert engine.capture(make_meta(1), dir_state(src)).snapshot_id == 1  # a retry resumes


def test_a_child_forked_while_the_janitor_holds_its_lock_still_ends(tmp_path: Path) -> None:
    """The worker's janitor thread (removing an old tree in the background) may hold its
    lock at the moment an operation forks; the child, which has no such thread, must not
    wait for that lock when it hands its leftovers back (it hung there, so the operation
    never ended)."""
    import threading

    from workers.engine.fs.removal import janitor

    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    held, forked = threading.Event(), threading.Event()

    def hold() -> None:
        with janitor._lock:
            held.set()
            forked.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(engine.capture(make_meta(1), dir_state(src),
                                          progress=lambda d, t: forked.set()))
        except Exception as e:  # the assertion below names it
            outcome.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(20)
    forked.set()
    hung = runner.is_alive()
    if hung:
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
        runner.join(10)
    holder.join(5)
    assert not hung, "the forked child waited for the parent's janitor lock"
    assert outcome and not isinstance(outcome[0], Exception), outcome


def test_a_stop_asked_as_the_child_ends_still_gives_its_result() -> None:
    """A stop asked for just as the child ends (a delete during a capture's commit): the
    child exits with the request unread, and the kernel then resets the parent's end of the
    socket instead of closing it. The result read before is still the outcome (the reset
    raised ConnectionResetError: a committed capture failed, retried, its snapshot left
    in the repository with no record)."""
    import pickle
    import select
    import socket

    from workers.engine import forked
    from workers.engine.workerproc.frames import pack

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the child's side by hand: the result, then an end with the stop unread
        try:
            ours.close()
            theirs.sendall(pack(pickle.dumps(("ok", "committed", []))))
            select.select([theirs], [], [], 10)
        finally:
            os._exit(0)
    theirs.close()
    try:
        assert forked._relay(ours, pid, None, lambda: True, []) == "committed"
    finally:
        ours.close()
        forked._reap(pid)


def test_a_child_that_does_not_stop_when_asked_is_ended(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """A capture asked to stop (deleted, or ended by the reaper) whose child does not (stuck
    where it never polls: a lock another thread held at the fork) is ended after
    tuning.FORKED_STOP_GRACE, and the capture is Cancelled, as in-process. The parent
    waited for it for good before: the worker's thread, and the repository's lock the
    child held, never came back."""
    import threading

    from workers.engine import Cancelled, tuning
    from workers.engine.capture.archiver import Archiver

    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    monkeypatch.setattr(tuning, "FORKED_STOP_GRACE", 0.5)
    monkeypatch.setattr(Archiver, "run", lambda self: time.sleep(60))  # never polls
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(engine.capture(make_meta(1), dir_state(src), should_stop=lambda: True))
        except Exception as e:  # the assertions below name it
            outcome.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(15)
    hung = runner.is_alive()
    if hung:
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
        runner.join(10)
    assert not hung, "the parent waited for a child that did not stop"
    assert outcome and isinstance(outcome[0], Cancelled), outcome
    assert not _children()


def test_a_child_ended_after_its_commit_gives_the_committed_result(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A child asked to stop after it committed, and stuck before it said so, is ended as
    any child that does not stop; the capture then answers the committed snapshot (the
    job deletes it when its snapshot was deleted meanwhile), not Cancelled, which left a
    committed snapshot nobody deleted."""
    from workers.engine import tuning
    from workers.engine.fs.removal import janitor

    src = tmp_path / "src"
    build_full_tree(src)
    engine = ForkingEngine(f"file://{tmp_path / 'repo'}")
    monkeypatch.setattr(tuning, "FORKED_STOP_GRACE", 0.5)
    # the child's last step before it hands back its result: stuck there
    monkeypatch.setattr(janitor, "pending", lambda: time.sleep(60))
    manifest = tmp_path / "repo" / "snapshots" / "1"
    result = engine.capture(make_meta(1), dir_state(src), should_stop=manifest.exists)
    assert result.snapshot_id == 1 and result.files > 5
    assert not _children()
