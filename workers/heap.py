"""Memory an operation freed, given back to the system once the worker process is idle.

A capture or restore of a million files frees hundreds of MB of small objects when it
ends, but the C allocator keeps what it freed mapped until told otherwise, so the next
operation of the same worker process starts from the last one's peak (bench/scale.py saw
an incremental's peak include the full capture's heap before it). glibc's malloc_trim
hands back every free page; elsewhere (no glibc) this only collects garbage.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None
try:
    _trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):  # not glibc
    _trim = None


def release() -> None:
    gc.collect()
    if _trim is not None:
        _trim(0)
