"""Handing freed heap memory back to the system after a burst of connections closed.

Thousands of streams leave thousands of small allocations (transports, protocol objects,
coroutine frames) spread over the C heap; once they are freed, glibc keeps most of those
pages, because a few live objects pin each region, and trims only the top of the heap.
``malloc_trim(0)`` releases every wholly free page inside the heap too (madvise), which is
what makes a web process's RSS come back down after a flood of event streams
(README "The event stream" has the figures). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _libc = None


def trim() -> None:
    if _libc is not None:
        _libc.malloc_trim(0)
