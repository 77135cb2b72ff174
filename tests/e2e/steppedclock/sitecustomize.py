"""Loaded at start-up by the worker processes of tests/e2e/test_schedules.py (their
PYTHONPATH), so that a real-time schedule's slots come due when the test says, not when a
real minute has passed.

With SCHEDULER_TEST_CLOCK set (a Redis key), every Scheduler built without a clock of its
own (the one each worker process runs) reads the time from that key, in epoch seconds, as
the test last set it; while the key is unset its time is 0, before every slot. The test
steps it past one slot at a time: no slot comes due on its own, however long a run takes
or wherever in the real minute the test starts. The schedulers of all the processes still
race for the same slot on the same clock; nothing else changes.
"""

from __future__ import annotations

import os

_KEY = os.environ.get("SCHEDULER_TEST_CLOCK")

if _KEY:
    from typing import Any

    from workers import scheduler as _scheduler

    _key = _KEY
    _init = _scheduler.Scheduler.__init__

    def _init_stepped(self: _scheduler.Scheduler, store: Any, enqueue: Any, settings: Any,
                      clock: _scheduler.Clock | None = None) -> None:
        def stepped() -> float:
            return float(store.redis.get(_key) or 0)

        _init(self, store, enqueue, settings, clock if clock is not None else stepped)

    _scheduler.Scheduler.__init__ = _init_stepped  # type: ignore[method-assign]
