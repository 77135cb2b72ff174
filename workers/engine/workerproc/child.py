"""The child side of a worker process: its two sockets, and dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from functools import cache

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def sockets() -> tuple[socket.socket, socket.socket]:
    """The request and result sockets the parent passed (see process.WorkerProcess)."""
    return socket.socket(fileno=int(sys.argv[-2])), socket.socket(fileno=int(sys.argv[-1]))


@cache
def prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once (before a fork: a child forked from a process with
    other threads looks up no symbol, which takes the loader's lock)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux


def die_with(parent: int) -> None:
    """SIGKILL this process when the thread that started it dies (PR_SET_PDEATHSIG);
    exits at once if `parent` is no longer its parent (it died before prctl took effect)."""
    call = prctl()
    if call is not None:
        call(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # not Linux: the closed request socket still ends the worker
    if os.getppid() != parent:
        os._exit(1)


def die_with_parent() -> None:
    """die_with() for a process started by exec: its parent is the one it has now,
    unless that already died (then it was reparented to init)."""
    parent = os.getppid()
    if parent == 1:
        os._exit(1)
    die_with(parent)


def name_process(name: str) -> None:
    """The name ps and top show for this process (PR_SET_NAME, up to 15 bytes)."""
    call = prctl()
    if call is not None:
        call(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def release_inherited(keep: set[int]) -> None:
    """Points every descriptor a forked child inherited (its parent's Redis and broker
    sockets, a repository lock another thread held at the fork: a flock lives while any
    copy of its descriptor does) at /dev/null, but the standard ones, the logging streams
    and `keep`. Replaced, not closed: an inherited object that closes its descriptor later
    closes the /dev/null copy, never a file of this child that took the same number."""
    for stream in (sys.stdout, sys.stderr, *(getattr(h, "stream", None) for h in
                                             logging.getLogger().handlers)):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            keep.add(stream.fileno())  # type: ignore[union-attr]
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    keep.add(null)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):  # the listing's own descriptor, gone
                    os.dup2(null, fd, inheritable=False)
    except FileNotFoundError:
        pass  # no /proc: nothing to point elsewhere
    finally:
        os.close(null)
