"""Waiting out a Redis outage in place: what a worker does once its job's work is done.

A capture or restore that finished while Redis restarts must still commit: handing the
job back to Dramatiq cannot work (its broker is that same Redis, so the retry cannot even
be enqueued) and would redo minutes of work. So the worker's state transitions, and the
reads they need, are retried here with back-off while Redis is unreachable, loading its
data or read-only (a failover), for ``Settings.redis_outage_wait`` seconds; only then does
the error propagate (the lease and the reaper take over from there).

A retried transition may have applied before the connection dropped: each Lua script is
a compare-and-set on the operation's status, so the second run refuses; the caller asks
`Attempt.retried` to tell that refusal from a real one (see Store._transition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")

# Redis is away or not serving writes yet; anything else (a script error, a wrong type)
# is a bug that waiting will not fix.
_OUTAGE_ERRORS = (
    redis.exceptions.ConnectionError,  # refused, reset, and BusyLoadingError (LOADING)
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica that is not yet promoted
)
_OUTAGE_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
# The web process's pools retry once, at once, on these (redis-py's retry_on_error): a
# pooled connection to a Redis that restarted is dead, and the command never reached the
# new server. Only once and at once, so a command the old server applied just before it
# died is not sent to a new one (a create would apply twice): that case answers 503.
STALE_CONNECTION = (redis.exceptions.ConnectionError,)
FIRST_DELAY = 0.05
MAX_DELAY = 1.0


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is (for now) unable to serve, rather than refusing."""
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(
        _OUTAGE_REPLIES)


@dataclass
class Attempt:
    """What one patient call went through: ``retried`` when an earlier try failed (the
    command may have reached Redis and applied before its answer was lost)."""

    retried: bool = False


class Patience:
    """Retries a Redis call with back-off (50 ms doubling to 1 s) for up to ``wait``
    seconds of outage; ``wait`` 0 means one try."""

    def __init__(self, wait: float, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self._sleep = sleep
        self._clock = clock

    def call(self, what: str, fn: Callable[[], T], attempt: Attempt | None = None) -> T:
        attempt = attempt if attempt is not None else Attempt()
        started = self._clock()
        delay = FIRST_DELAY
        while True:
            try:
                value = fn()
            except redis.exceptions.RedisError as exc:
                waited = self._clock() - started
                if not is_outage(exc) or waited + delay > self.wait:
                    if attempt.retried:
                        log.error("Redis still unavailable after %.1f s: %s not done (%s)",
                                  waited, what, exc)
                    raise
                if not attempt.retried:
                    log.warning("Redis unavailable (%s): retrying %s for up to %.0f s",
                                exc, what, self.wait)
                attempt.retried = True
                self._sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            if attempt.retried:
                log.info("Redis is back after %.1f s: %s done", self._clock() - started, what)
            return value
