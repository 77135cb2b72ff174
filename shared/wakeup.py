"""Wake-ups: an idle worker starts a new message milliseconds after it was enqueued, and
asks Redis less often than Dramatiq's own polling did.

Dramatiq's Redis consumer, finding its queue empty, sleeps with a growing back-off (up to
the worker timeout, 1 s) before it fetches again, so an idle worker started a new operation
0.2-0.8 s after its POST. Here every enqueue also pushes a token on the wake-up list of the
queue it went to (``<namespace>:<queue>.wake``: per host queue, so only that host's workers
wake), and an idle consumer with room for a message blocks on that list (BLPOP, up to the
worker timeout, so shutdown and delayed messages are still seen each second) instead of
sleeping. One token wakes one consumer; a consumer that wakes and finds the message gone
(another got it) has only made one extra fetch.

Messages that arrive without a token (Dramatiq's maintenance putting a dead worker's
unacked messages back, an enqueue from an older process) are still fetched: an idle
consumer also fetches every ``FALLBACK_FETCH_ROUNDS`` timeouts. A consumer whose prefetch is
full does not take tokens (they are for idle ones): it polls with Dramatiq's back-off as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

log = logging.getLogger(__name__)

# Tokens kept per queue: enough for a burst to wake every consumer of a host; older ones
# would only cause empty fetches.
WAKE_LIST_MAX: Final = 32
# An idle consumer fetches at least every this many worker timeouts without a token.
FALLBACK_FETCH_ROUNDS: Final = 5


def wake_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:{queue_name}.wake"


class WakingRedisBroker(RedisBroker):
    """Dramatiq's RedisBroker whose enqueue wakes an idle consumer of the queue."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        sent = super().enqueue(message, delay=delay)
        key = wake_key(self.namespace, sent.queue_name)
        # The message is stored; a lost token only delays it to the fallback fetch.
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.rpush(key, 1)
            pipe.ltrim(key, -WAKE_LIST_MAX, -1)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("wake-up for queue %s not sent: %s", sent.queue_name, exc)
        return sent


class _WakingConsumer(_RedisConsumer):
    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self._wake_key = wake_key(broker.namespace, queue_name)
        # Fetch on the next round: at start, after a token, after a message.
        self._fetch_due = True
        self._idle_rounds = 0

    def __next__(self) -> Any:
        try:
            if not self.message_cache:
                room = self.prefetch - self.outstanding_message_count
                if room <= 0:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    time.sleep(backoff_ms / 1000)
                    return None
                if self._fetch_due or self._idle_rounds >= FALLBACK_FETCH_ROUNDS:
                    self._idle_rounds = 0
                    self.message_cache = self.broker.do_fetch(self.queue_name, room)
                if not self.message_cache:
                    woken = self.broker.client.blpop([self._wake_key], self.timeout / 1000)
                    self._fetch_due = woken is not None
                    self._idle_rounds += 0 if woken else 1
                    return None
            data = self.message_cache.pop(0)
            self.misses = 0
            self._fetch_due = True
            message = Message.decode(data)
            self.queued_message_ids.add(message.message_id)
            return MessageProxy(message)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

