"""Throttled progress reports and cancel checks from the engine's callbacks to the state store.

The engine calls back often and cheaply; every report here is a Redis round trip and an
event, so it is sent at most once per interval and only when the percentage moved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# SPEC promise: progress reaches the API at least every 2 s; the engine calls at least once
# a second, so forwarding at most once a second keeps both the promise and Redis quiet.
REPORT_INTERVAL = 1.0


class ProgressReporter:
    def __init__(self, report: Callable[[int], None], interval: float = REPORT_INTERVAL):
        self._report = report
        self._interval = interval
        self._last_sent = -1
        self._last_time = 0.0
        # The engine may call back from several of its threads at once.
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        percent = 0 if total <= 0 else min(99, done * 100 // total)
        with self._lock:
            now = time.monotonic()
            if percent == self._last_sent or now - self._last_time < self._interval:
                return
            self._last_sent = percent
            self._last_time = now
        self._report(percent)


class CancelCheck:
    """Asks the store whether the operation was cancelled, at most once per interval."""

    def __init__(self, is_cancelled: Callable[[], bool], interval: float = 1.0):
        self._is_cancelled = is_cancelled
        self._interval = interval
        self._last_time = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_time >= self._interval:
            self._last_time = now
            self._cancelled = self._is_cancelled()
        return self._cancelled
