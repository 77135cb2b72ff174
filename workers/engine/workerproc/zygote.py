"""A fork server ("zygote") for the worker processes: a reader or writer is a fork of a warm
process that has imported its modules, not a fresh interpreter.

Why: a worker process started as `python -c` pays an interpreter's start-up and its imports
(msgspec, typing, obstore, zstandard...): ~65 ms of CPU each, two or three per capture or
restore, on a machine whose two cores the operation, its workers and the S3 server share.
A fork of the zygote costs a few ms.

Why a process of its own, forked this early: on s3:// the engine's S3 client (obstore) runs
its requests on a runtime of threads made at its first request; a child forked after that
inherits the runtime without its threads, and its first request (a restore writer's GETs)
waits forever (forked.py says the same of forked operations). The zygote is forked before
that runtime exists (start() is called by the engine before its backend's first request,
and refuses once a runtime thread runs in the process) and never makes a request, so each
of its forks makes a runtime of its own, as a fresh interpreter does. On file:// each
operation runs in a child forked for it (forked.py), which forks a zygote of its own as it
starts, while it is one thread; its readers and writers share the worker's pages.

Why a fork of it behaves as a spawned worker did (every fault semantic kept):
- Death: the zygote dies with the thread that started it (PR_SET_PDEATHSIG: the worker's
  main thread, a bench or CLI process's), and each worker with the zygote, so a killed
  engine leaves no reader or writer running. A worker that dies is seen as before (EOF on
  its sockets: a TransientEngineError); a zygote that dies, hangs (no answer within
  _ANSWER_WITHIN) or cannot fork is retired and workers are spawned as before.
- Inherited state: the zygote points every descriptor it inherited at /dev/null (as a
  forked operation does: no Redis socket or repository lock of the engine lives on in
  it); a worker closes the zygote's own descriptors and keeps its two sockets and the
  standard ones. Signal handlers are Python's defaults again (SIGINT: KeyboardInterrupt);
  the working directory is "/"; the resource limits are the engine's when it asked (a
  worker started under a lowered RLIMIT_NOFILE gets it, as a spawned one would).
- Threads: the zygote is a copy of one thread of the engine. A lock another thread held
  at the fork stays held in the copy: what the zygote and its forks run takes no lock of
  the engine's (the import lock and logging's locks are reset by the fork; prctl is
  looked up before it); the grandchildren are forks of the single-threaded zygote.
- Module state is the engine's when the zygote started (start-up: nothing has changed it
  then; the engine reads no environment). Its imports are those of the worker modules, as
  a spawned worker's are.
- Exit: a worker ends as `python -c` would (SystemExit's code, a traceback and 1 on an
  error, its non-daemon threads joined) without running the engine's atexit handlers.
A worker's handle (ForkedProcess) does what the pools use of subprocess.Popen: pid,
poll(), wait(timeout), kill() (by pidfd: never a reused pid), returncode (the zygote reaps
it and passes its exit status on).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import pickle
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from types import ModuleType

from . import child

_PID = struct.Struct("=q")
_STATUS = struct.Struct("=i")
_ANSWER_WITHIN = 10.0  # s: a zygote that does not answer a fork request by then is retired
# the limits a worker takes from the engine at its start (the rest are the zygote's)
_LIMITS = (resource.RLIMIT_NOFILE, resource.RLIMIT_AS, resource.RLIMIT_DATA,
           resource.RLIMIT_FSIZE, resource.RLIMIT_CORE, resource.RLIMIT_NPROC)
# the name the S3 client's runtime threads have (/proc/PID/task/TID/comm)
_RUNTIME_THREAD = "tokio-rt-worker"


class ForkedProcess:
    """A worker forked by the zygote: what the pools use of subprocess.Popen."""

    def __init__(self, pid: int, pidfd: int, status_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd, self._status = pidfd, status_fd

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # else its pidfd is closed: it is gone
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _collect(self, timeout: float | None) -> int | None:
        """Its exit status once the zygote has reaped it (None before)."""
        if self.returncode is not None:
            return self.returncode
        if not select.select([self._status], [], [], timeout)[0]:
            return None
        data = os.read(self._status, _STATUS.size)
        if len(data) == _STATUS.size:
            self.returncode = _STATUS.unpack(data)[0]
        else:  # the zygote died first: the worker is killed with it (PR_SET_PDEATHSIG)
            if not select.select([self._pidfd], [], [], timeout)[0]:
                return None
            self.returncode = -signal.SIGKILL
        os.close(self._status)
        os.close(self._pidfd)
        return self.returncode


class _Zygote:
    def __init__(self, preload: Sequence[str]) -> None:
        self.owner = os.getpid()
        self.lock = threading.Lock()
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child.prctl()  # looked up here, not in the fork
        self.pid = os.fork()
        if self.pid == 0:  # the zygote: never returns
            code = 0
            try:
                self.sock.close()
                _serve(theirs, self.owner, preload)
            except BaseException:  # its forks fail: the engine spawns them
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.sock.settimeout(_ANSWER_WITHIN)
        # ended and waited for at exit, so this process's children's CPU time (what
        # bench/s3.py reports) counts the zygote's and its workers'
        atexit.register(self.retire, kill=False)

    def usable(self) -> bool:
        return self.pid > 0 and self.owner == os.getpid()

    def fork(self, module: str, fds: tuple[int, int]) -> ForkedProcess | None:
        """A worker running `module`.main() with these two sockets, or None (then spawn it)."""
        if not self.usable():
            # not this process's (a forked operation's child): checked before the lock,
            # which a thread of the parent may have held at the fork, in the child for good
            return None
        limits = [(r, resource.getrlimit(r)) for r in _LIMITS]
        with self.lock:
            if not self.usable():
                return None
            try:
                socket.send_fds(self.sock, [pickle.dumps((module, limits))], list(fds))
                data, got, _flags, _addr = socket.recv_fds(self.sock, _PID.size, 2)
            except OSError:  # gone, or no answer in time (TimeoutError)
                data, got = b"", []
            if len(data) == _PID.size and len(got) == 2:
                return ForkedProcess(_PID.unpack(data)[0], got[0], got[1])
            for fd in got:
                os.close(fd)
            if len(data) != _PID.size:  # dead or stuck: never asked again
                self.retire()
            return None  # it could not fork this one

    def retire(self, *, kill: bool = True) -> None:
        """Ends it (closing its socket ends its loop) and waits for it."""
        if not self.usable():
            return
        self.sock.close()
        deadline = time.monotonic() + (0 if kill else _ANSWER_WITHIN)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                if time.monotonic() >= deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.002)
        self.pid = -1


_zygote: _Zygote | None = None
_start_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # a forked child starts a zygote of its own (forked.py): another thread of the parent
    # may have held this lock at the fork, in the child for good
    global _start_lock
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def start(preload: Sequence[str]) -> bool:
    """This process's zygote, started now with `preload` imported if none runs; False
    when it cannot be: the S3 client's runtime already runs here (its forks would hang),
    or no pidfd (Linux < 5.3)."""
    global _zygote
    with _start_lock:
        if _zygote is not None and _zygote.usable():
            return True
        # one a parent of this process (it was forked) started is its parent's, not ours
        _zygote = None
        if not hasattr(os, "pidfd_open") or _runtime_running():
            return False
        _zygote = _Zygote(preload)
        return True


def fork(module: str, fds: tuple[int, int]) -> ForkedProcess | None:
    """A worker forked by this process's zygote, or None if it has none usable."""
    z = _zygote
    return z.fork(module, fds) if z is not None else None


def _runtime_running() -> bool:
    try:
        tasks = os.listdir("/proc/self/task")
    except FileNotFoundError:
        return True  # cannot tell: do not fork
    for tid in tasks:
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() == _RUNTIME_THREAD:
                return True
    return False


# --- the zygote ----------------------------------------------------------------------

def _serve(sock: socket.socket, parent: int, preload: Sequence[str]) -> None:
    child.die_with(parent)
    child.name_process("snapshot-zygote")
    # the engine's handlers mean nothing here: an interrupt is the engine's to handle (the
    # zygote dies with it), SIGTERM ends it
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child.release_inherited({sock.fileno()})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # as a spawned worker's stdin
    os.close(null)
    sock.settimeout(None)
    modules = {name: importlib.import_module(name) for name in preload}
    gc.freeze()  # what is imported now is never scanned (nor its pages copied) by a worker
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status pipe's write end)
    while True:
        ready, _w, _x = select.select([sock.fileno(), *children], [], [])
        for fd in ready:
            if fd == sock.fileno():
                msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 2)
                if not msg:
                    return  # the engine closed it: its process is ending
                _fork_one(sock, msg, fds, modules, children)
            else:
                pid, status_w = children.pop(fd)
                _pid, status = os.waitpid(pid, 0)
                os.write(status_w, _STATUS.pack(os.waitstatus_to_exitcode(status)))
                os.close(status_w)
                os.close(fd)


def _fork_one(sock: socket.socket, msg: bytes, fds: list[int], modules: dict[str, ModuleType],
              children: dict[int, tuple[int, int]]) -> None:
    status: tuple[int, ...] = ()  # the status pipe, once made
    try:
        name, limits = pickle.loads(msg)
        if name not in modules:
            modules[name] = importlib.import_module(name)
        status = os.pipe()
        status_r, status_w = status
        zygote = os.getpid()
        pid = os.fork()
    except Exception:  # told as "no worker": the engine spawns it
        traceback.print_exc()
        # the status pipe too: a zygote whose forks kept failing (EAGAIN: the host's
        # process limit) kept two descriptors per request until it hit its own limit
        for fd in (*fds, *status):
            os.close(fd)
        sock.sendall(_PID.pack(-1))
        return
    if pid == 0:  # the worker: never returns
        code = 1
        try:
            os.close(status_r)
            os.close(status_w)
            for pidfd, (_pid, w) in children.items():
                os.close(pidfd)
                os.close(w)
            sock.close()
            code = _run(modules[name], fds, zygote, limits)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    socket.send_fds(sock, [_PID.pack(pid)], [pidfd, status_r])
    os.close(status_r)
    children[pidfd] = (pid, status_w)


def _run(module: ModuleType, fds: list[int], zygote: int,
         limits: list[tuple[int, tuple[int, int]]]) -> int:
    """The worker: `module`.main() as `python -c` runs it; returns its exit code."""
    child.die_with(zygote)
    child.name_process(module.__name__.rsplit(".", 1)[-1])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    for limit, value in limits:
        with contextlib.suppress(ValueError, OSError):  # raising a hard limit: not allowed
            resource.setrlimit(limit, value)
    os.chdir("/")
    sys.argv = ["-c", *map(str, fds)]  # child.sockets() takes them from there
    code = 0
    try:
        module.main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # as the interpreter reports an uncaught one
        traceback.print_exc()
        code = 1
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code
