"""A worker process of the engine (capture or restore), talked to over two sockets.

The child runs `code` with the fds of a SOCK_SEQPACKET request socket (messages that may
carry fds) and a SOCK_STREAM result socket (length-prefixed frames) as its last two
arguments (child.py is the child's side); the first frame on the result socket is the
setup the parent sends (frames.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

from .frames import FrameBuffer, send

# the directory holding the `workers` package (workers/engine/workerproc/process.py)
_PKG_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[os.pardir] * 3))


class WorkerProcess:
    def __init__(self, code: str, setup: bytes) -> None:
        self.req, req_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.res, res_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(req_child.fileno()), str(res_child.fileno())],
                pass_fds=(req_child.fileno(), res_child.fileno()), env=env,
                stdin=subprocess.DEVNULL, cwd="/")
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


def start_workers(code: str, setup: bytes, n: int) -> list[WorkerProcess]:
    """n worker processes, or none: those already started are killed if one fails."""
    workers: list[WorkerProcess] = []
    try:
        for _ in range(n):
            workers.append(WorkerProcess(code, setup))
    except BaseException:
        for w in workers:
            w.close(kill=True)
        raise
    return workers
