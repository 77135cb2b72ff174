"""A worker process of the engine (capture or restore), talked to over two sockets.

The child runs `module`.main() with the fds of a SOCK_SEQPACKET request socket (messages
that may carry fds) and a SOCK_STREAM result socket (length-prefixed frames) as its last
two arguments (child.py is the child's side); the first frame on the result socket is the
setup the parent sends (frames.py). It is a fork of this process's zygote when it has one
(zygote.py: a few ms instead of an interpreter's start-up), else a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from typing import Protocol

from . import zygote
from .frames import FrameBuffer, send

# the directory holding the `workers` package (workers/engine/workerproc/process.py)
_PKG_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))


class Child(Protocol):
    """What the pools use of a worker's process: subprocess.Popen or zygote.ForkedProcess."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class WorkerProcess:
    def __init__(self, module: str, setup: bytes) -> None:
        self.req, req_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.res, res_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            forked = zygote.fork(module, (req_child.fileno(), res_child.fileno()))
            if forked is None:
                # The zygote may have forked one with these sockets and lost its answer (its
                # descriptors dropped at our limit): spawned on new ones, so that one reads
                # EOF and ends instead of sharing the spawned worker's frames.
                for sock in (self.req, self.res, req_child, res_child):
                    sock.close()
                self.req, req_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                self.res, res_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self.proc: Child = forked or _spawn(module, req_child, res_child)
        finally:
            req_child.close()
            res_child.close()
        self.inflight = 0  # requests sent, not answered yet
        self.frames = FrameBuffer()  # result bytes received, not yet a whole frame
        send(self.res, setup)

    def close(self, *, kill: bool) -> None:
        with contextlib.suppress(OSError):
            self.req.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.res.close()


def _spawn(module: str, req: socket.socket, res: socket.socket) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-c", f"from {module} import main; main()", str(req.fileno()),
         str(res.fileno())], pass_fds=(req.fileno(), res.fileno()), env=env,
        stdin=subprocess.DEVNULL, cwd="/")


def start_workers(module: str, setup: bytes, n: int) -> list[WorkerProcess]:
    """n worker processes running `module`.main(), or none: those already started are
    killed if one fails."""
    workers: list[WorkerProcess] = []
    try:
        for _ in range(n):
            workers.append(WorkerProcess(module, setup))
    except BaseException:
        for w in workers:
            w.close(kill=True)
        raise
    return workers
