"""Pausing Python's cyclic garbage collector while the engine builds a big tree.

A manifest of a million entries is a few million objects (entries, their lists and
tuples). While they are made, the collector runs again and again over everything alive:
decoding 300,000 entries took 1.05 s with it, 0.43 s without (one process, msgspec,
Python 3.11). Nothing made there is cyclic garbage, so nothing is left for it to find.
The pause is process-wide and nested calls (two jobs of one worker) count: the collector
comes back when the last one ends, and only if it was running before the first.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


def _after_fork_in_child() -> None:
    """A forked child (forked.py) has only the thread that forked: the pauses of the others
    are not its own, and the lock one of them may have held at the fork is a new one."""
    global _lock, _depth
    _lock = threading.Lock()
    if _depth and _was_enabled:
        gc.enable()
    _depth = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
