"""The one place that configures Dramatiq's Redis broker, for the API and the workers.

Operations go to the queue of their host (`shared.hosts.queue_name`); a worker declares,
and so consumes, only its own host's queue (plus the host-free ones: its actors' webhooks
and, on s3://, ANY_HOST_QUEUE's deletes).
"""

from __future__ import annotations

import contextlib
import threading
from importlib import resources
from typing import Any, Final

import dramatiq
import msgspec
import redis
from dramatiq.brokers.redis import RedisBroker

from shared.hosts import ANY_HOST_QUEUE, Heartbeat, queue_name
from shared.messages import ACTOR_NAMES, OperationMessage
from shared.outage import STALE_CONNECTION
from shared.settings import Settings
from shared.wakeup import WakingRedisBroker

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
# Redis connections of an enqueue-only broker (the web process).
ENQUEUE_CONNECTIONS: Final = 2

# Dramatiq's dispatch script (every enqueue, fetch and ack, and the maintenance that puts
# back the unacked messages of workers whose heartbeat is older than the timeout) takes
# "now" from its caller, and writes the caller's heartbeat at it: with hosts' clocks apart
# by more than the timeout, a web process or reaper ahead (an enqueue may run maintenance)
# put a live worker's running job back on its queue (a duplicate, refused busy, which took
# the job's own message with it: a later crash of that worker waited for the reaper), and a
# worker behind had its running jobs put back by everyone else. Here it reads Redis's
# clock, which every host shares (the leases read it too: _lib.lua owner_alive).
_CALLER_CLOCK: Final = "local timestamp = ARGV[2]\n"
_REDIS_CLOCK: Final = (
    'local redis_now = redis.call("time")\n'
    "local timestamp = tonumber(redis_now[1]) * 1000 + math.floor(tonumber(redis_now[2]) / 1000)\n"
)
# The busy worker's own beat (BrokerHeartbeat), at Redis's clock as well.
_BEAT: Final = """local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
"""


def _dispatch_on_redis_clock() -> str:
    source = (resources.files("dramatiq.brokers") / "redis" / "dispatch.lua").read_text()
    if source.count(_CALLER_CLOCK) != 1:
        raise RuntimeError("dramatiq's dispatch.lua changed: its clock line is not found")
    return source.replace(_CALLER_CLOCK, _REDIS_CLOCK)


class BrokerHeartbeat(dramatiq.Middleware):
    """Keeps a busy worker's heartbeat fresh.

    Dramatiq's Redis consumer only heartbeats when it fetches; once a worker holds as many
    messages as it may prefetch (every thread on an hours-long capture), it stops fetching,
    and after ``heartbeat_timeout`` another worker's maintenance would requeue its live
    jobs. This thread writes the heartbeat directly, so only a dead process looks dead.
    It also writes the process's presence on its host (`shared.hosts.Heartbeat`), at once
    on boot, so ``GET /hosts/`` counts a worker from its first second.
    """

    def __init__(self, host: str, interval: float = HEARTBEAT_INTERVAL_S) -> None:
        self.host = host
        self.interval = interval
        self._stop = threading.Event()
        self._presence: Heartbeat | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        self._presence = Heartbeat(broker.client, self.host, broker.broker_id)
        # Before the first claim: the leases count this beat (Redis's clock) as alive too.
        with contextlib.suppress(redis.RedisError):
            self._presence.beat()
        threading.Thread(
            target=self._run, args=(broker, self._presence), name="broker-heartbeat",
            daemon=True,
        ).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._presence is not None:
            with contextlib.suppress(redis.RedisError):
                self._presence.leave()

    def _run(self, broker: RedisBroker, presence: Heartbeat) -> None:
        key = f"{broker.namespace}:__heartbeats__"
        beat = broker.client.register_script(_BEAT)
        while True:
            # Redis may be away; the consumers reconnect, and we simply try next round.
            with contextlib.suppress(redis.RedisError):
                presence.beat()
                beat(keys=[key], args=[broker.broker_id])
            if self._stop.wait(self.interval):
                return


def make_broker(settings: Settings, *, worker: bool = False) -> RedisBroker:
    """A RedisBroker with our namespace and liveness tuning; ``worker`` adds the heartbeat
    and declares the queue of the worker's host (``SNAPSHOTS_HOST``), the only operation
    queue it consumes."""
    timeout_ms = int(settings.heartbeat_timeout * 1000)
    # The web process only enqueues, from worker threads: a small blocking pool bounds its
    # connections (a burst waits its turn); a worker keeps Dramatiq's own pool.
    client = None if worker else redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.effective_redis_url, max_connections=ENQUEUE_CONNECTIONS, timeout=5,
            retry_on_error=list(STALE_CONNECTION),  # see shared.outage
        )
    )
    # Its enqueue wakes an idle consumer of the queue at once (shared/wakeup.py).
    broker = WakingRedisBroker(  # type: ignore[no-untyped-call]
        client=client,
        url=None if client is not None else settings.effective_redis_url,
        namespace=NAMESPACE,
        heartbeat_timeout=timeout_ms,
        maintenance_chance=min(settings.maintenance_chance, 1_000_000),
        dead_message_ttl=DEAD_MESSAGE_TTL_MS,
    )
    broker.scripts["dispatch"] = broker.client.register_script(_dispatch_on_redis_clock())
    if worker:
        # Three beats per timeout, so one late beat never makes a live worker look dead.
        interval = min(HEARTBEAT_INTERVAL_S, timeout_ms / 3000)
        broker.add_middleware(BrokerHeartbeat(settings.worker_host, interval))
        broker.declare_queue(queue_name(settings.worker_host))
        if settings.deletes_anywhere:
            # Any host's deletes (s3://): a dead host does not hold its snapshots' up.
            broker.declare_queue(ANY_HOST_QUEUE)
    return broker


def operation_message(op_type: str, operation_id: int, host: str) -> dramatiq.Message[Any]:
    """The Dramatiq message for an operation on ``host``, built without the actor function."""
    try:
        actor_name = ACTOR_NAMES[op_type]
    except KeyError:
        raise ValueError(f"unknown operation type {op_type!r}") from None
    kwargs = msgspec.to_builtins(OperationMessage(operation_id=operation_id))
    return dramatiq.Message(
        queue_name=queue_name(host),
        actor_name=actor_name,
        args=(),
        kwargs=kwargs,
        options={},
    )


def enqueue_operation(broker: RedisBroker, op_type: str, operation_id: int, host: str) -> None:
    """Sends an operation's message to the queue of its host: the only way any part of the
    service (the API, the reaper's resends, a worker forwarding a stray message) sends one.

    ``host`` is the operation's own (``OperationRecord.host``, which the script that made
    it answers too): its server's host, for a restore into another server the target's.
    Blocking; the API calls it in a thread. Dramatiq's retries re-enqueue a message on the
    queue it came from, so they stay on the host as well.
    """
    broker.enqueue(operation_message(op_type, operation_id, host))
