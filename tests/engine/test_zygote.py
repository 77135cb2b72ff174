"""Reader and writer processes forked by the zygote (workers/engine/workerproc/zygote.py):
they start as forks of it, behave as spawned ones (limits, death with their parent, exit
status) and are spawned again when there is no zygote to fork them."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.engine import Engine
from workers.engine.capture import readerpool
from workers.engine.engine import WORKER_MODULES
from workers.engine.restore import writerpool
from workers.engine.workerproc import frames, process, zygote

from .conftest import dir_state, make_meta
from .treecmp import describe

ROOT = Path(__file__).resolve().parents[2]


def _limit(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/limits") as f:
        return next(line for line in f if line.startswith(name)).split()[3]


def test_the_zygote_imports_what_the_pools_run() -> None:
    assert readerpool._MODULE in WORKER_MODULES and writerpool._MODULE in WORKER_MODULES


def test_workers_are_forks_of_the_zygote_with_the_engines_limits_and_status() -> None:
    assert zygote.start(WORKER_MODULES)  # tests/conftest.py started it before any request
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # forked by hand: it waits for its setup frame until we send one (process.WorkerProcess
    # sends it at once, and the bad one below ended it, at load sometimes before its
    # /proc/PID/limits was read)
    req, req_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    res, res_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 7, hard))
    try:
        proc = zygote.fork(writerpool._MODULE, (req_child.fileno(), res_child.fileno()))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        req_child.close()
        res_child.close()
    assert isinstance(proc, zygote.ForkedProcess)
    with open(f"/proc/{proc.pid}/stat") as f:
        assert int(f.read().rsplit(") ", 1)[1].split()[1]) == zygote._zygote.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + 5  # the worker sets it as it starts
    while _limit(proc.pid, "Max open files") != str(soft - 7) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _limit(proc.pid, "Max open files") == str(soft - 7)
    frames.send(res, b"not a setup")
    assert proc.wait(timeout=10) == 1  # a bad setup: its traceback, exit status 1 (as python -c)
    req.close()
    res.close()


def test_a_worker_killed_has_its_signal_as_status_and_none_when_there_is_no_zygote(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (w,) = process.start_workers(readerpool._MODULE, b"", 1)
    w.proc.kill()
    assert w.proc.wait(timeout=5) == -signal.SIGKILL
    w.close(kill=True)
    monkeypatch.setattr(zygote, "_zygote", None)
    (spawned,) = process.start_workers(readerpool._MODULE, b"", 1)
    assert isinstance(spawned.proc, subprocess.Popen)
    spawned.close(kill=True)


def test_an_s3_restore_with_forked_writers_and_after_the_zygote_died(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.engine import tuning

    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(30):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(3000 + i))
    engine.capture(make_meta(1), dir_state(src))
    engine.restore(1, dir_state(tmp_path / "a"))
    assert describe(tmp_path / "a") == describe(src)
    # a zygote that died is retired at the next request, and the writers spawned instead
    dead = zygote._Zygote(WORKER_MODULES)
    os.kill(dead.pid, signal.SIGKILL)
    monkeypatch.setattr(zygote, "_zygote", dead)
    engine.restore(1, dir_state(tmp_path / "b"))
    assert describe(tmp_path / "b") == describe(src) and not dead.usable()


_ORPHANS = """
import os, socket, sys, time
from workers.engine.engine import WORKER_MODULES
from workers.engine.restore import writerpool
from workers.engine.workerproc import zygote
assert zygote.start(WORKER_MODULES)
# forked without a setup frame sent (process.start_workers sends one at once: an empty one
# ended them, sometimes before the test looked), so they wait for it as long as we live
pairs = [(socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET),
          socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)) for _ in range(2)]
ws = [zygote.fork(writerpool._MODULE, (req[1].fileno(), res[1].fileno())) for req, res in pairs]
print(zygote._zygote.pid, *(w.pid for w in ws), flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_the_zygote_and_its_workers_die_with_the_engines_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _ORPHANS], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3 and not any(_gone(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids)


def test_no_zygote_once_the_s3_clients_runtime_runs() -> None:
    code = ("import obstore; from obstore.store import MemoryStore\n"
            "obstore.put(MemoryStore(), 'k', b'v')\n"
            "from workers.engine.workerproc import zygote\n"
            "print(zygote.start(()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_process_forked_while_a_thread_asks_the_zygote_never_waits_for_its_lock() -> None:
    """A forked operation's child (forked.py) is a copy of one thread: a request another
    thread had under way at the fork left the zygote's lock held in the child for good, and
    the child's first reader or writer waited on it forever. The zygote is not the child's
    (its owner is another pid): it spawns its workers, never touching the lock."""
    assert zygote.start(WORKER_MODULES)
    z = zygote._zygote
    assert z is not None
    with z.lock:  # as held by a thread asking the zygote for a worker at that moment
        pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if zygote.fork(readerpool._MODULE, (0, 1)) is None else 2)
            finally:
                os._exit(3)
    deadline = time.monotonic() + 5
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child waited on the zygote's lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0


_FAILING_FORKS = """
import errno, os, socket, sys
from workers.engine.workerproc import process, zygote
from workers.engine.restore import writerpool
real_fork, owner = os.fork, os.getpid()

def fork():  # the zygote's own forks fail, as at the host's process limit (EAGAIN)
    if os.getpid() != owner and os.getppid() == owner:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    return real_fork()

os.fork = fork
assert zygote.start(["workers.engine.restore.writerproc"])
z = zygote._zygote
def fds():
    return len(os.listdir(f"/proc/{z.pid}/fd"))
def failed_fork():
    a, b = socket.socketpair()
    assert z.fork(writerpool._MODULE, (a.fileno(), b.fileno())) is None  # spawn it instead
    a.close(); b.close()
# counted once it answered a first request: until its loop runs, the zygote is still
# closing what it inherited (seen 6 to 8 descriptors in its first 40 ms at load 5)
failed_fork()
before = fds()
for _ in range(20):
    failed_fork()
print(before, fds(), z.usable())
"""


def test_a_zygote_whose_forks_fail_keeps_no_descriptor_of_them() -> None:
    # Each failed fork left the zygote the status pipe it made for that worker: a zygote
    # at the host's process limit leaked two descriptors per request, until it could no
    # longer even receive one (EMFILE).
    out = subprocess.run([sys.executable, "-c", _FAILING_FORKS], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    before, after, usable = int(out[0]), int(out[1]), out[2]
    assert usable == "True"  # it answered each request: kept, not retired
    assert after == before


_LOST_ANSWER = """
import os, socket, subprocess, time
from workers.engine.workerproc import process, zygote
from workers.engine.restore import writerpool
assert zygote.start(["workers.engine.restore.writerproc"])
z = zygote._zygote
real = socket.recv_fds

def truncated(sock, bufsize, maxfds, flags=0):  # as at EMFILE: the kernel drops the fds
    data, fds, flags, addr = real(sock, bufsize, maxfds, flags)
    for fd in fds:
        os.close(fd)
    return data, [], flags | socket.MSG_CTRUNC, addr

socket.recv_fds = truncated
process.send = lambda sock, frame: None  # no setup: each worker waits for one (or EOF)
w = process.WorkerProcess(writerpool._MODULE, b"")
socket.recv_fds = real
assert isinstance(w.proc, subprocess.Popen)

def sockets(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            out.add(link)
    return out

with open(f"/proc/{z.pid}/task/{z.pid}/children") as f:
    forked = [int(p) for p in f.read().split()]
shared = set().union(*(sockets(p) for p in forked)) & sockets(w.proc.pid) if forked else set()
print(len(forked), len(shared))
w.close(kill=True)
"""


def test_a_worker_whose_fork_answer_was_lost_shares_no_socket_with_the_spawned_one() -> None:
    # The zygote forked a worker, but its answer came without the descriptors (truncated,
    # as when this process is at its descriptor limit): the worker is spawned instead, and
    # the fork that lives on must not hold the spawned one's sockets (two workers reading
    # one share's frames, writing into one result stream).
    out = subprocess.run([sys.executable, "-c", _LOST_ANSWER], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert out[1] == "0", out
