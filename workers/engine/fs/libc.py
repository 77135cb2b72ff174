"""The libc calls Python's os module lacks (syncfs, renameat2, fallocate, fstatfs),
through ctypes, retried when a signal interrupts them as os functions are (PEP 475).

Python installs its signal handlers without SA_RESTART, so a signal it handles (the
SIGTERM that stops a forked operation, forked.py; a profiler's SIGPROF) arriving during a
blocking call makes it fail with EINTR: os.* retry, a ctypes call does not, and the
caller saw a spurious OSError ("Interrupted system call") where nothing was wrong.
call() retries it; the signal's Python handler runs between the tries, and what it
raises (a shutdown) propagates."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)


def function(name: str) -> Callable[..., int] | None:
    """libc's `name`, or None where this libc has none (renameat2 before glibc 2.28)."""
    fn: Callable[..., int] | None = getattr(_libc, name, None)
    return fn


def call(fn: Callable[..., int], *args: Any) -> int:
    """fn(*args) for a libc function that answers -1 and sets errno when it fails, again
    while it fails with EINTR."""
    while True:
        ret = fn(*args)
        if ret != -1 or ctypes.get_errno() != errno.EINTR:
            return ret


def checked(name: str, *args: Any) -> None:
    """call() of libc's `name`, raising OSError with errno where it fails (ENOSYS where
    this libc has no such function)."""
    fn = function(name)
    if fn is None:
        raise OSError(errno.ENOSYS, f"{name} not available")
    if call(fn, *args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
