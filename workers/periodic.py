"""A Dramatiq middleware that runs a task every few seconds in a thread of each worker.

The reaper and the scheduler use it: every worker process runs them, so neither needs a
process of its own nor anyone to start it; each of their passes is safe to run on several
workers at once (their changes are compare-and-set Lua scripts).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import dramatiq
import redis

log = logging.getLogger(__name__)


class Ticker(Protocol):
    def tick(self) -> object: ...


class Periodic(dramatiq.Middleware):
    """Calls ``make().tick()`` every ``interval`` seconds in a daemon thread ``name``."""

    def __init__(self, name: str, make: Callable[[], Ticker], interval: float) -> None:
        self.name = name
        self.make = make
        self.interval = interval
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        threading.Thread(target=self._loop, name=self.name, daemon=True).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def _loop(self) -> None:
        task: Ticker | None = None
        while not self._stop.wait(self.interval):
            try:
                task = task or self.make()
                task.tick()
            except redis.RedisError as exc:
                # Redis is away (restarting): the next pass tries again.
                log.warning("%s pass skipped: %s", self.name, exc)
            except Exception:
                with contextlib.suppress(Exception):
                    log.exception("%s pass failed", self.name)


# One type per task: Dramatiq warns about two middlewares of the same type on a broker.


class ReaperThread(Periodic):
    """The reaper's thread (workers/reaper.py)."""


class SchedulerThread(Periodic):
    """The scheduler's thread (workers/scheduler.py)."""
