"""One Redis reader per web process, fanning the ``events`` stream out to every open stream.

A stream (``GET /api/v1/events/``) never touches Redis while it is live: the process's
one ``EventHub`` runs a single ``XREAD BLOCK`` loop on a connection of its own, decodes
each entry once, and offers the encoded frame to the ``Subscription`` of every stream
that may see it (indexed by account, so an event costs the streams of its own account and
the admins', not every stream). A stream that is idle (its pump parked, nothing queued)
and whose connection takes the bytes at once gets the frame written there and then, in
the reader's own loop step (api/httpguard.py BodyWriter): no task woken, no ASGI send, per
stream and event. The others queue it for their pump. A subscription's queue is
bounded: a client too slow to keep up overflows it, loses the queued frames, and is
resynced from the Redis stream by its last delivered id, so it never holds the others
up and never misses an event. The catch-up reads (a resume with ``Last-Event-ID``, a
resync) are short ``XRANGE`` calls on the hub's second connection. Whatever the number
of streams, the process holds these two connections (named ``CLIENT_NAME``) beside the
request pool.

The hub also enforces the caps on open streams (per account and per process, answering
``429 rate_limited``), and acts on the internal ``token.revoked`` entry: the token leaves
this process's token cache and its streams end, within one XREAD of the revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

from api import memory
from api.auth import Principal, TokenCache
from api.errors import RateLimited, ServiceUnavailable
from shared import events
from shared.settings import Settings

log = logging.getLogger("api.events")

# Client name of the hub's two connections, so tests and operators can count them.
CLIENT_NAME: Final = "snapshots-events"
BATCH: Final = 500  # entries per XREAD / XRANGE
BLOCK_MS: Final = 5000
RETRY_AFTER: Final = 5  # seconds, on a 429 for too many open streams
READY_TIMEOUT: Final = 5.0  # how long a new stream waits for the hub's first position
# When this many streams closed and at most half the peak are left, the freed memory is
# handed back to the system (see api/memory.py).
TRIM_AFTER: Final = 500
# File descriptors kept for everything but streams (requests, Redis, logs, the listener).
FD_RESERVE: Final = 256
# A client that has not taken a write within this many seconds is gone or stuck.
WRITE_TIMEOUT: Final = 30


def _fd_room() -> int:
    """How many streams this process's open-files limit leaves room for: past it, a new
    stream answers 429 rather than the process failing to accept connections (EMFILE)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - FD_RESERVE)


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"<ms>-<seq>"``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One open stream's place in the hub: what it may see, and its bounded queue."""

    __slots__ = ("account", "digest", "direct", "ended", "frames", "keepalive_due", "last_id",
                 "last_key", "last_sent", "limit", "owner", "resync", "server_id", "task",
                 "waiter", "writing_since")

    def __init__(self, who: Principal, server_id: int | None, last_id: str, limit: int) -> None:
        self.owner = who.account
        self.account = who.account_filter  # None: an admin, every account
        self.digest = who.token_digest
        self.server_id = server_id
        self.limit = limit
        # (id_key(entry id), entry id, frame): the key parsed once per event, not per stream.
        self.frames: deque[tuple[tuple[int, int], str, bytes]] = deque()
        # The stream's pump waits on this future when it has nothing to send (a bare
        # future: an asyncio.Event costs a coroutine and a future per wait, per stream).
        self.waiter: asyncio.Future[None] | None = None
        # The last id delivered to the client: resumes and resyncs start after it.
        self.last_id = last_id
        self.last_key = id_key(last_id)
        # Set when the queue cannot be trusted to hold every event after last_id (a resume
        # from an older id, an overflow): catch up from Redis before reading it again.
        self.resync = False
        self.ended: str | None = None
        # Kept by the stream, read by the hub's ticker (keep-alives, stuck writes).
        self.last_sent = time.monotonic()
        self.writing_since: float | None = None
        self.keepalive_due = False
        self.task: asyncio.Task[Any] | None = None
        # Writes a frame to the client at once if its connection takes it (the stream sets
        # it from the server's BodyWriter; None: every frame goes through the queue).
        self.direct: Callable[[bytes], bool] | None = None

    def offer(self, key: tuple[int, int], entry_id: str, frame: bytes, now: float) -> None:
        if self.resync or self.ended is not None:
            return
        waiter = self.waiter
        if self.direct is not None and waiter is not None and not waiter.done() \
                and not self.frames:
            # The pump is parked with nothing queued, so nothing can be sent out of order.
            if key <= self.last_key:
                return  # already sent by a catch-up
            try:
                wrote = self.direct(frame)
            except Exception:
                # Raised out of here it would end the hub's dispatch of this event, whose
                # position is already past it: every later stream would miss it. This
                # stream's frames go through its pump (the ASGI send) from now on.
                log.exception("event stream: direct write failed; queueing its frames")
                self.direct, wrote = None, False
            if wrote:
                self.last_id, self.last_key, self.last_sent = entry_id, key, now
                return
        if len(self.frames) >= self.limit:
            # Too slow: drop the queue and resync from Redis when the client is ready.
            self.frames.clear()
            self.resync = True
        else:
            self.frames.append((key, entry_id, frame))
        self.wake()

    def delivered(self, entry_id: str, key: tuple[int, int] | None = None) -> None:
        self.last_id = entry_id
        self.last_key = id_key(entry_id) if key is None else key

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until offer(), end() or the ticker wakes this stream (call with no await
        between finding nothing to do and this, so no wake-up is missed)."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        self.wake()


class EventHub:
    def __init__(self, settings: Settings, tokens: TokenCache) -> None:
        self.url = settings.effective_redis_url
        self.keepalive = settings.events_keepalive
        self.tokens = tokens
        self.max_per_account = settings.events_max_per_account
        self.max_per_process = min(settings.events_max_per_process, _fd_room())
        if self.max_per_process < settings.events_max_per_process:
            log.warning("the open-files limit (ulimit -n) leaves room for %d event streams, "
                        "fewer than SNAPSHOTS_EVENTS_MAX_PER_PROCESS (%d): raise it",
                        self.max_per_process, settings.events_max_per_process)
        self.queue_frames = settings.events_queue
        # The id of the last entry the reader has handed out; None until first known.
        self.position: str | None = None
        self._by_account: dict[str | None, set[Subscription]] = {}
        self._by_digest: dict[str, set[Subscription]] = {}
        self._per_owner: dict[str, int] = {}
        self.open = 0
        self._peak = 0  # most streams open since the last memory trim
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._reader: aioredis.Redis | None = None
        self._ranges: aioredis.Redis | None = None

    # ------------------------------------------------------------ streams

    async def subscribe(
        self, who: Principal, server_id: int | None, resume_after: str | None
    ) -> Subscription:
        """Registers a stream (or answers 429); it gets every event after ``resume_after``,
        or, without one, every event after this moment."""
        self._ensure_running()
        if self.position is None:
            try:
                await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT)
            except TimeoutError:
                raise ServiceUnavailable("The event stream cannot reach Redis.") from None
        # The caps are checked with no await before the stream is added, so that a burst
        # of concurrent opens cannot pass them together.
        if self.open >= self.max_per_process:
            raise RateLimited(
                f"This web process already serves its maximum of {self.max_per_process} event "
                "streams (SNAPSHOTS_EVENTS_MAX_PER_PROCESS, or what its open-files limit "
                "allows); retry later.",
                retry_after=RETRY_AFTER,
            )
        if self._per_owner.get(who.account, 0) >= self.max_per_account:
            raise RateLimited(
                f"This account already has {self.max_per_account} open event streams on this "
                "web process (SNAPSHOTS_EVENTS_MAX_PER_ACCOUNT); close one or retry later.",
                retry_after=RETRY_AFTER,
            )
        position = self.position
        assert position is not None
        sub = Subscription(who, server_id, resume_after or position, self.queue_frames)
        if resume_after is not None and id_key(resume_after) < id_key(position):
            sub.resync = True
        self._add(sub)
        return sub

    def _add(self, sub: Subscription) -> None:
        self.open += 1
        self._peak = max(self._peak, self.open)
        self._per_owner[sub.owner] = self._per_owner.get(sub.owner, 0) + 1
        self._by_account.setdefault(sub.account, set()).add(sub)
        if sub.digest is not None:
            self._by_digest.setdefault(sub.digest, set()).add(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        group = self._by_account.get(sub.account)
        if group is None or sub not in group:
            return
        group.discard(sub)
        if not group:
            del self._by_account[sub.account]
        if sub.digest is not None:
            same = self._by_digest.get(sub.digest, set())
            same.discard(sub)
            if not same:
                self._by_digest.pop(sub.digest, None)
        self.open -= 1
        left = self._per_owner.get(sub.owner, 1) - 1
        if left:
            self._per_owner[sub.owner] = left
        else:
            self._per_owner.pop(sub.owner, None)
        if self._peak - self.open >= TRIM_AFTER and self.open <= self._peak // 2:
            self._peak = self.open
            asyncio.get_running_loop().call_later(1.0, memory.trim)

    def start_resync(self, sub: Subscription) -> str:
        """For a stream about to catch up from Redis: up to which id, and a clean queue.

        No await between reading the position and clearing the queue, so the entries
        after the position arrive in the queue and the ones up to it come from Redis.
        """
        assert self.position is not None
        sub.frames.clear()
        sub.resync = False
        return self.position

    async def read_range(self, after: str, upto: str) -> list[tuple[str, dict[str, str]]]:
        """At most BATCH entries after ``after`` up to ``upto`` (inclusive)."""
        if self._ranges is None:
            self._ranges = self._connect(socket_timeout=10)
        answer: Any = await self._ranges.xrange(
            events.STREAM, min=f"({after}", max=upto, count=BATCH
        )
        return [(str(i), f) for i, f in answer]

    # ------------------------------------------------------------ the reader

    def _connect(self, socket_timeout: float) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            single_connection_client=True,
            client_name=CLIENT_NAME,
            socket_connect_timeout=5,
            socket_timeout=socket_timeout,
        )

    def start(self) -> None:
        self._ensure_running()

    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Everything here belongs to the loop that made it (tests run several loops).
            self._loop, self._task, self._ticker = loop, None, None
            self._ready = asyncio.Event()
            self._reader = self._ranges = None
            self.position = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="event-hub")
        if self._ticker is None or self._ticker.done():
            self._ticker = loop.create_task(self._tick(), name="event-hub-ticker")

    async def _tick(self) -> None:
        """Keep-alives for quiet streams, and the end of streams whose client stopped
        reading: one timer for the process instead of one per stream and wait."""
        period = min(1.0, self.keepalive / 3)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for group in self._by_account.values():
                for sub in group:
                    if sub.writing_since is not None:
                        if now - sub.writing_since > WRITE_TIMEOUT and sub.task is not None:
                            log.warning("event stream ends: its client took no data for %ds",
                                        WRITE_TIMEOUT)
                            sub.end("stuck")
                            sub.task.cancel()
                    elif now - sub.last_sent >= self.keepalive:
                        sub.keepalive_due = True
                        sub.wake()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self._reader is None:
                    self._reader = self._connect(socket_timeout=BLOCK_MS / 1000 + 10)
                if self.position is None:
                    last: Any = await self._reader.xrevrange(events.STREAM, count=1)
                    self.position = str(last[0][0]) if last else "0-0"
                    self._ready.set()
                answer: Any = await self._reader.xread(
                    {events.STREAM: self.position}, count=BATCH, block=BLOCK_MS
                )
                backoff = 0.2
                for _stream, entries in answer or ():
                    for entry_id, fields in entries:
                        self._dispatch(str(entry_id), fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn the cancellation of a blocked read into its own
                    # error; the hub is closing all the same.
                    raise asyncio.CancelledError from exc
                # Streams stay open; the reader resumes from its position when Redis is back.
                if isinstance(exc, redis.exceptions.RedisError | OSError):
                    log.warning("event reader: redis failed (retrying): %s", exc)
                else:
                    log.exception("event reader failed (retrying)")
                await self._close_connections()
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def _dispatch(self, entry_id: str, fields: dict[str, str]) -> None:
        self.position = entry_id
        sha = events.revoked_digest(fields)
        if sha is not None:
            self.tokens.drop(sha)
            for sub in list(self._by_digest.get(sha, ())):
                sub.end("token revoked")
            return
        event = events.from_entry(entry_id, fields)
        if event is None:
            return
        frame: bytes | None = None
        key = id_key(entry_id)
        now = time.monotonic()
        for sub in self._audience(event.account):
            if events.visible(event, sub.account, sub.server_id):
                if frame is None:
                    frame = events.sse_frame(event)
                sub.offer(key, entry_id, frame, now)

    def _audience(self, account: str) -> Iterator[Subscription]:
        yield from self._by_account.get(account, ())
        yield from self._by_account.get(None, ())

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._ranges):
            if conn is not None:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await conn.aclose()
        self._reader = self._ranges = None

    async def close(self) -> None:
        """Ends every stream and the reader (the app's shutdown)."""
        for group in list(self._by_account.values()):
            for sub in list(group):
                sub.end("shutdown")
        tasks = [t for t in (self._task, self._ticker) if t is not None]
        self._task = self._ticker = None
        if self._loop is asyncio.get_running_loop():
            for task in tasks:
                task.cancel()
            # Bounded: a shutdown must not hang on a Redis call that ignores cancellation.
            _, pending = await asyncio.wait(tasks, timeout=2) if tasks else (set(), set())
            for task in pending:
                log.warning("event reader did not stop in time: %r", task)
            await self._close_connections()
