"""The futures a thread pool loop keeps while it submits one job per file."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")
_KEEP = 1024  # pruned when this many are kept


def prune(futures: list[Future[T]]) -> list[Future[T]]:
    """Those still running, or done with an exception (still to be raised by the caller's
    result() loop): a tree of a million files would otherwise keep a million finished
    futures, ~1 KB each with their locks."""
    if len(futures) < _KEEP:
        return futures
    return [f for f in futures if not f.done() or f.exception() is not None]
