"""The one place that configures Dramatiq's Redis broker, for the API and the workers."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Final

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from shared.messages import ACTOR_NAMES, QUEUE_NAME, OperationMessage
from shared.settings import Settings

NAMESPACE: Final = "snapshots-dramatiq"
# The sorted set of worker heartbeats (member = broker id, score = ms); operations name
# the broker id of the worker that holds them, so liveness means the same thing for the
# broker's requeue and for our operation leases.
HEARTBEATS_KEY: Final = f"{NAMESPACE}:__heartbeats__"
# The liveness tuning (how long without a heartbeat a worker counts as dead, how often
# maintenance requeues a dead worker's messages) is Settings.heartbeat_timeout and
# Settings.maintenance_chance; their defaults keep a dead worker's job waiting well
# under a minute.
# Dead-lettered messages are kept a day for inspection, not Dramatiq's week.
DEAD_MESSAGE_TTL_MS: Final = 24 * 3600 * 1000
HEARTBEAT_INTERVAL_S: Final = 5.0
# Worker processes' heartbeats, member "<host>/<broker id>" (GET /metrics counts the
# fresh ones per host); entries a day old are dropped.
WORKERS_KEY: Final = "workers:heartbeats"
WORKERS_KEPT_MS: Final = 24 * 3600 * 1000
# Until hosts exist (SPEC section 5), every worker is on this one.
DEFAULT_HOST: Final = "default"
# Redis connections of an enqueue-only broker (the web process).
ENQUEUE_CONNECTIONS: Final = 2


class BrokerHeartbeat(dramatiq.Middleware):
    """Keeps a busy worker's heartbeat fresh.

    Dramatiq's Redis consumer only heartbeats when it fetches; once a worker holds as many
    messages as it may prefetch (every thread on an hours-long capture), it stops fetching,
    and after ``heartbeat_timeout`` another worker's maintenance would requeue its live
    jobs. This thread writes the heartbeat directly, so only a dead process looks dead.
    """

    def __init__(self, interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.interval = interval
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        threading.Thread(
            target=self._run, args=(broker,), name="broker-heartbeat", daemon=True
        ).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def _run(self, broker: RedisBroker) -> None:
        key = f"{broker.namespace}:__heartbeats__"
        # The broker's own set also holds every process that only enqueues (the web's
        # dispatch records a heartbeat too); WORKERS_KEY holds worker processes only.
        member = f"{DEFAULT_HOST}/{broker.broker_id}"
        while True:
            # Redis may be away; the consumers reconnect, and we simply try next round.
            with contextlib.suppress(redis.RedisError):
                now_ms = int(time.time() * 1000)
                pipe = broker.client.pipeline(transaction=False)
                pipe.zadd(key, {broker.broker_id: now_ms})
                pipe.zadd(WORKERS_KEY, {member: now_ms})
                pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms - WORKERS_KEPT_MS)
                pipe.execute()
            if self._stop.wait(self.interval):
                break
        with contextlib.suppress(redis.RedisError):
            broker.client.zrem(WORKERS_KEY, member)  # a clean stop is not a dead worker


def make_broker(settings: Settings, *, worker: bool = False) -> RedisBroker:
    """A RedisBroker with our namespace and liveness tuning; ``worker`` adds the heartbeat."""
    timeout_ms = int(settings.heartbeat_timeout * 1000)
    # The web process only enqueues, from worker threads: a small blocking pool bounds its
    # connections (a burst waits its turn); a worker keeps Dramatiq's own pool.
    client = None if worker else redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.effective_redis_url, max_connections=ENQUEUE_CONNECTIONS, timeout=5
        )
    )
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        url=None if client is not None else settings.effective_redis_url,
        namespace=NAMESPACE,
        heartbeat_timeout=timeout_ms,
        maintenance_chance=min(settings.maintenance_chance, 1_000_000),
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
    )
    if worker:
        # Three beats per timeout, so one late beat never makes a live worker look dead.
        broker.add_middleware(BrokerHeartbeat(min(HEARTBEAT_INTERVAL_S, timeout_ms / 3000)))
    broker.declare_queue(QUEUE_NAME)
    return broker


def operation_message(op_type: str, operation_id: int) -> dramatiq.Message[Any]:
    """The Dramatiq message for an operation, built without the actor function."""
    try:
        actor_name = ACTOR_NAMES[op_type]
    except KeyError:
        raise ValueError(f"unknown operation type {op_type!r}") from None
    kwargs = msgspec.to_builtins(OperationMessage(operation_id=operation_id))
    return dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=actor_name,
        args=(),
        kwargs=kwargs,
        options={},
    )


def enqueue_operation(broker: RedisBroker, op_type: str, operation_id: int) -> None:
    """Send the message for an operation (blocking; the API calls it in a thread)."""
    broker.enqueue(operation_message(op_type, operation_id))
