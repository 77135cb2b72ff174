"""A hook's command (workers/hooks.run_command): what an interrupted one leaves."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from dramatiq.middleware import Shutdown

from workers.hooks import run_command


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("while_starting", [False, True])
def test_a_hook_interrupted_by_the_workers_shutdown_leaves_nothing_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, while_starting: bool) -> None:
    """Dramatiq raises Shutdown (or TimeLimitExceeded) into the job's thread while a hook
    runs: the hook's whole process tree ends with it, as on its timeout (left running, a
    pre-capture hook that stops a database could run on while the retry captures).
    while_starting: raised while Popen, after its fork, still reads whether the exec
    worked (held there 0.5 s: the window a loaded machine opens); Popen never returned
    the child, and its tree was left running (still state S 1 s later)."""
    pidfile = tmp_path / "child.pid"
    raised: list[BaseException] = []
    real_read = os.read

    def slow_exec_check(fd: int, n: int) -> bytes:
        if n == 50000 and threading.current_thread() is t:  # subprocess's exec check
            time.sleep(0.5)
        return real_read(fd, n)

    def run() -> None:
        try:
            run_command(f"sleep 30 & echo $! > {pidfile}; wait", {"PATH": os.environ["PATH"]},
                        20.0)
        except BaseException as e:  # what the job's thread sees
            raised.append(e)

    t = threading.Thread(target=run)
    if while_starting:
        monkeypatch.setattr(os, "read", slow_exec_check)
    t.start()
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        assert t.ident is not None
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(Shutdown))
        t.join(5)
        assert not t.is_alive() and raised and isinstance(raised[0], Shutdown)
        deadline = time.monotonic() + 2
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the interrupted hook's child still runs"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
