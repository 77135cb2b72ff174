"""Webhook deliveries: a dispatcher thread per worker process, and the delivery actor.

The dispatcher reads the ``events`` stream through the consumer group ``webhooks`` (so
several worker processes share the work, and an event is acknowledged only once its
deliveries exist and are queued), makes one delivery per (webhook of the event's account,
event), and sends the ``webhook_deliver`` message. Entries a dead process had read but not
acknowledged are claimed again after a minute. Redelivery can queue a delivery twice;
the actor skips a delivery that is no longer pending, and receivers dedupe by event id.

The actor POSTs the event, records the attempt, and schedules the next attempt itself
with a Dramatiq delay (exponential backoff, ``shared.webhooks.backoff``) rather than by
raising: the schedule is then ours, visible as ``next_attempt_at``, and the attempt count
survives a worker restart.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import dramatiq
import msgspec
import redis

from shared import events
from shared import webhooks as wh
from shared.scripts import as_dict
from shared.settings import Settings

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

BLOCK_MS: Final = 1000
CLAIM_IDLE_MS: Final = 60_000
CLAIM_EVERY: Final = 30.0
TIMEOUT: Final = 10.0

broker = dramatiq.get_broker()  # workers.actors set it before importing this module


def _client(settings: Settings) -> redis.Redis:
    # A blocked XREADGROUP must not hit the socket timeout.
    return redis.Redis.from_url(settings.effective_redis_url, decode_responses=True,
                                socket_timeout=BLOCK_MS / 1000 + 10)


# ------------------------------------------------------------------ dispatch


def ensure_group(r: redis.Redis) -> None:
    try:
        r.xgroup_create(events.STREAM, wh.GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def dispatch(r: redis.Redis, entry_id: str, fields: dict[str, str]) -> int:
    """Creates and queues the deliveries of one stream entry; answers how many."""
    event = events.from_entry(entry_id, fields)
    if event is None or not event.account:
        return 0
    event_ms = int(entry_id.split("-", 1)[0])
    body = events.encode(event).decode()
    queued = 0
    hooks: list[Any] = r.zrange(wh.account_index(event.account), 0, -1)
    for raw_id in hooks:
        webhook_id = int(raw_id)
        created_ms = r.hget(wh.webhook_key(webhook_id), "created_ms")
        if created_ms is None or int(created_ms) > event_ms:
            continue  # deleted, or registered after this event
        key = wh.delivery_key(webhook_id, entry_id)
        if r.hsetnx(key, "status", "pending") or r.hget(key, "status") == "pending":
            with r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"event_type": event.type, "body": body,
                                        "created_at": str(event_ms // 1000)})
                pipe.expire(key, wh.DELIVERY_TTL)
                pipe.zadd(wh.deliveries_index(webhook_id), {entry_id: event_ms})
                pipe.zremrangebyrank(wh.deliveries_index(webhook_id), 0, -wh.MAX_LISTED - 1)
                pipe.execute()
            webhook_deliver.send(webhook_id=webhook_id, event_id=entry_id)
            queued += 1
    return queued


def dispatch_loop(stop: threading.Event, consumer: str) -> None:
    r = _client(Settings.from_env())
    last_claim = 0.0
    while not stop.is_set():
        try:
            ensure_group(r)
            batches: list[Any] = []
            if time.monotonic() - last_claim > CLAIM_EVERY:
                last_claim = time.monotonic()
                claimed = r.xautoclaim(events.STREAM, wh.GROUP, consumer, CLAIM_IDLE_MS,
                                       "0-0", count=100)
                batches.append(claimed[1])
            read: Any = r.xreadgroup(wh.GROUP, consumer, {events.STREAM: ">"},
                                     count=100, block=BLOCK_MS)
            for _stream, entries in read or ():
                batches.append(entries)
            for entries in batches:
                for entry_id, fields in entries:
                    if fields:  # a claimed entry trimmed from the stream has none
                        dispatch(r, entry_id, fields)
                    r.xack(events.STREAM, wh.GROUP, entry_id)
        except redis.RedisError as exc:
            log.warning("webhook dispatcher: redis error, retrying: %s", exc)
            stop.wait(1.0)
        except Exception:
            log.exception("webhook dispatcher: unexpected error")
            stop.wait(1.0)
    r.close()


class WebhookDispatcher(dramatiq.Middleware):
    """Runs ``dispatch_loop`` in a thread for the life of a worker process."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        consumer = f"{socket.gethostname()}-{threading.get_native_id()}-{time.time_ns()}"
        self._thread = threading.Thread(target=dispatch_loop, args=(self._stop, consumer),
                                        name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(BLOCK_MS / 1000 + 2)


# ------------------------------------------------------------------ delivery


def _record(r: redis.Redis, msg: wh.DeliveryMessage, started: float, status_code: int | None,
            error: str | None) -> None:
    attempt = wh.DeliveryAttempt(
        attempt=msg.attempt,
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        status_code=status_code,
        error=error,
        duration_ms=int((time.time() - started) * 1000),
    )
    key = wh.attempts_key(msg.webhook_id, msg.event_id)
    with r.pipeline(transaction=True) as pipe:
        pipe.rpush(key, msgspec.json.encode(attempt))
        pipe.expire(key, wh.DELIVERY_TTL)
        pipe.execute()


def deliver(
    r: redis.Redis, http: httpx.Client, msg: wh.DeliveryMessage, settings: Settings
) -> None:
    key = wh.delivery_key(msg.webhook_id, msg.event_id)
    delivery = as_dict(r.hgetall(key))
    if delivery.get("status") != "pending":
        return  # already delivered or given up (or expired): a duplicate message
    hook = as_dict(r.hgetall(wh.webhook_key(msg.webhook_id)))
    if not hook:
        r.hset(key, mapping={"status": "failed", "next_attempt_at": ""})
        return
    body = delivery.get("body", "{}").encode()
    started = time.time()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "snapshots-webhooks/1",
        wh.SIGNATURE_HEADER: wh.sign(hook["secret"], int(started), body),
        "X-Event-Id": msg.event_id,
        "X-Event-Type": delivery.get("event_type", ""),
        "X-Webhook-Id": str(msg.webhook_id),
    }
    status_code: int | None = None
    error: str | None = None
    try:
        resp = http.post(hook["url"], content=body, headers=headers)
        status_code = resp.status_code
        if not 200 <= status_code < 300:
            error = f"the receiver answered HTTP {status_code}"
    except Exception as exc:  # any failure to deliver is an attempt that failed, retried
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    _record(r, msg, started, status_code, error)
    if error is None:
        r.hset(key, mapping={"status": "delivered", "next_attempt_at": ""})
    elif msg.attempt >= settings.webhook_attempts:
        r.hset(key, mapping={"status": "failed", "next_attempt_at": ""})
    else:
        delay = wh.backoff(msg.attempt, settings.webhook_backoff)
        r.hset(key, "next_attempt_at", str(int(time.time() + delay)))
        webhook_deliver.send_with_options(
            kwargs={"webhook_id": msg.webhook_id, "event_id": msg.event_id,
                    "attempt": msg.attempt + 1},
            delay=int(delay * 1000),
        )


_state: dict[str, Any] = {}
_state_lock = threading.Lock()


def _resources() -> tuple[redis.Redis, httpx.Client, Settings]:
    # Worker threads share one Redis client and one HTTP connection pool (both thread-safe).
    with _state_lock:
        if "r" not in _state:
            _state["settings"] = settings = Settings.from_env()
            _state["r"] = _client(settings)
            # Imported at the first delivery, not with the worker: httpx brings rich,
            # pygments and click (its command line), ~8 MiB in every worker process and so
            # in each capture's and restore's forked process, used by none of them.
            import httpx

            # Redirects are not followed: a webhook URL that moved must be re-registered.
            _state["http"] = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
        return _state["r"], _state["http"], _state["settings"]


@dramatiq.actor(actor_name=wh.ACTOR, queue_name=wh.QUEUE, max_retries=0,
                time_limit=int((TIMEOUT + 20) * 1000))
def webhook_deliver(**kwargs: object) -> None:
    try:
        msg = msgspec.convert(kwargs, wh.DeliveryMessage)
    except msgspec.ValidationError as exc:
        log.error("dropping a malformed webhook message %r: %s", kwargs, exc)
        return
    r, http, settings = _resources()
    deliver(r, http, msg, settings)


broker.add_middleware(WebhookDispatcher())
