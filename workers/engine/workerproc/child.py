"""The child side of a worker process: its two sockets, and dying with its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1


def sockets() -> tuple[socket.socket, socket.socket]:
    """The request and result sockets the parent passed (see process.WorkerProcess)."""
    return socket.socket(fileno=int(sys.argv[-2])), socket.socket(fileno=int(sys.argv[-1]))


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the closed request socket still ends the worker
    if os.getppid() == 1:
        os._exit(1)  # the parent died before prctl took effect
