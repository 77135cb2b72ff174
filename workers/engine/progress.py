"""Throttled progress reporting and cooperative cancellation shared by capture/restore."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from . import tuning
from .model import Cancelled, ProgressFn


class Progress:
    def __init__(self, fn: ProgressFn | None, should_stop: Callable[[], bool] | None = None,
                 total: int = 0) -> None:
        self.fn = fn
        self.should_stop = should_stop
        self.total = total
        self.sized = True  # False while the total is being found: every report says 0
        self.done = 0
        self.stopped = False
        self._last = 0.0
        self._asked = 0.0  # when stop_asked() last called should_stop
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        """Count n bytes done; calls the callback (and should_stop) at most every
        tuning.PROGRESS_INTERVAL."""
        now = time.monotonic()
        with self._lock:
            self.done += n
            if now - self._last < tuning.PROGRESS_INTERVAL:
                return
            self._last = now
            done, total = (self.done, max(self.total, self.done)) if self.sized else (0, 0)
        if self.fn is not None:
            self.fn(done, total)
        if self.should_stop is not None and self.should_stop():
            self.stopped = True

    def check(self) -> None:
        """Raise Cancelled once should_stop() said so (polled on the throttled path)."""
        if self.stopped:
            raise Cancelled("stopped on request")

    def poll(self) -> None:
        self.add(0)
        self.check()

    def stop_asked(self) -> None:
        """Cancelled once should_stop() says so (asked at most every
        tuning.PROGRESS_INTERVAL), with no report: for a restore's passes over its tree,
        before anything is done (its first report comes once the current tree was checked)."""
        now = time.monotonic()
        if self.should_stop is not None and now - self._asked >= tuning.PROGRESS_INTERVAL:
            self._asked = now
            if self.should_stop():
                self.stopped = True
        self.check()

    def finish(self) -> None:
        if self.fn is not None:
            self.fn(max(self.total, self.done), max(self.total, self.done))
