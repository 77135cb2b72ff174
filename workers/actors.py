"""The Dramatiq actors: thin shells that validate their message and hand it to `Jobs`.

Run with `dramatiq workers.actors`. The broker is configured in `shared.broker`, the one
place both the API and the workers import, before any actor is declared.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import dramatiq
import msgspec
import redis

from shared.broker import make_broker
from shared.messages import OperationMessage
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.jobs import Jobs
from workers.power import driver_for

log = logging.getLogger(__name__)

settings = Settings.from_env()
broker = make_broker(settings, worker=True)
dramatiq.set_broker(broker)

# A capture of a large server may take hours: Dramatiq's 10-minute default would kill it.
TIME_LIMIT_MS = 24 * 3600 * 1000
# Attempts count every delivery, SIGKILLed ones included; Dramatiq's retries only count
# raised exceptions, so both stop at the same number.
MAX_ATTEMPTS = 5
_OPTIONS: dict[str, Any] = {
    "queue_name": "snapshots",
    "time_limit": TIME_LIMIT_MS,
    "max_retries": MAX_ATTEMPTS - 1,
    "min_backoff": 2_000,
    "max_backoff": 120_000,
    # SIGTERM interrupts the job so the worker exits within the platform's 30 s; the
    # message is retried elsewhere and the capture resumes from what it already stored.
    "notify_shutdown": True,
}


@cache
def jobs() -> Jobs:
    client = redis.Redis.from_url(settings.effective_redis_url)
    return Jobs(Store(client, settings), Engine(settings.storage_url), driver_for, MAX_ATTEMPTS)


def _operation_id(**kwargs: object) -> int | None:
    try:
        return msgspec.convert(kwargs, OperationMessage).operation_id
    except msgspec.ValidationError as exc:
        log.error("dropping a malformed message %r: %s", kwargs, exc)
        return None


@dramatiq.actor(actor_name="snapshot_create", **_OPTIONS)
def snapshot_create(**kwargs: object) -> None:
    if (op_id := _operation_id(**kwargs)) is not None:
        jobs().run(op_id)


@dramatiq.actor(actor_name="snapshot_restore", **_OPTIONS)
def snapshot_restore(**kwargs: object) -> None:
    if (op_id := _operation_id(**kwargs)) is not None:
        jobs().run(op_id)


@dramatiq.actor(actor_name="snapshot_delete", **_OPTIONS)
def snapshot_delete(**kwargs: object) -> None:
    if (op_id := _operation_id(**kwargs)) is not None:
        jobs().run(op_id)
