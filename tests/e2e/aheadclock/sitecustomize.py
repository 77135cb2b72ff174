"""Loaded at start-up by the worker processes of tests/e2e/test_schedules.py (their
PYTHONPATH), so that a real-time schedule's slot comes due without a real minute's wait.

With SCHEDULER_TEST_AHEAD set (seconds), every Scheduler built without a clock of its own
(the one each worker process runs) reads Redis's clock (Store.now, as in production) plus
that many seconds: the minute has passed for the schedulers, and nothing else changes.
The schedulers of all the processes still race for the same slot on the same clock.
"""

from __future__ import annotations

import os

_AHEAD = os.environ.get("SCHEDULER_TEST_AHEAD")

if _AHEAD:
    from typing import Any

    from workers import scheduler as _scheduler

    _ahead = float(_AHEAD)
    _init = _scheduler.Scheduler.__init__

    def _init_ahead(self: _scheduler.Scheduler, store: Any, enqueue: Any, settings: Any,
                    clock: _scheduler.Clock | None = None) -> None:
        _init(self, store, enqueue, settings,
              clock if clock is not None else (lambda: store.now() + _ahead))

    _scheduler.Scheduler.__init__ = _init_ahead  # type: ignore[method-assign]
