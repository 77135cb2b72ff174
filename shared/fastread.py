"""A minimal pipelined Redis connection for the API's hot reads (HGETALL, PING).

Why: on the GET paths the cost of a request is dominated by redis-py's per-command
machinery (pool checkout, timeouts, parser layers). Here every concurrent request writes
its command on ONE shared connection and waits on a future; replies are parsed by hiredis
and matched in order. Concurrent requests thus pipeline for free. Writes and scripts keep
using redis-py. Any failure drops the connection (failing its waiters with redis-py's
ConnectionError/TimeoutError, which the API maps to 503) and the next call reconnects.

Measured, so it is kept: bench/api.py runs the same API with these reads on redis-py's
asyncio client (hiredis parser, connection pool, one call per read; bench/redispy_app.py)
in the same run, interleaved. 2026-12-01, two runs of 5 rounds of wrk -t2 -c32 -d10s on a
2-core machine shared with other work (load 5-10, so req/s are noisy; CPU per request less
so): GET one snapshot 1.7x the req/s of redis-py (median of the 10 paired rounds, 0.8-2.9x;
faster in 9 of 10) at half the server CPU per request (122-148 vs 258-259 us, uvicorn +
redis-server); GET a page of 10 snapshots (one EVALSHA) 1.4x (1.0-2.0x), 369-414 vs
519-526 us.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, Final, cast

import hiredis
import redis.exceptions
from redis.connection import SSLConnection, parse_url


def pack(args: tuple[str | bytes | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


# Error replies that are not the command's fault, as redis-py names them: a Redis still
# loading its AOF after a restart (LOADING) or a replica (READONLY) is unavailable for a
# moment (503), not a bug (500).
_REPLY_ERRORS: dict[str, type[redis.exceptions.RedisError]] = {
    "NOSCRIPT": redis.exceptions.NoScriptError,
    "LOADING": redis.exceptions.BusyLoadingError,
    "READONLY": redis.exceptions.ReadOnlyError,
}


def pairs(flat: list[str]) -> dict[str, str]:
    """An HGETALL reply (field, value, field, value, ...) as a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _is_error(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError)


def _error(reply: Any) -> redis.exceptions.RedisError:
    text = str(reply)
    return _REPLY_ERRORS.get(text.split(" ", 1)[0], redis.exceptions.ResponseError)(text)


class _Batch:
    """Several commands sent together, answered together: one future for all the replies
    (an error reply stands in the list as its exception) instead of one per command."""

    __slots__ = ("expect", "fut", "replies")

    def __init__(self, fut: asyncio.Future[list[Any]], expect: int) -> None:
        self.fut = fut
        self.expect = expect
        self.replies: list[Any] = []


class _Shared:
    """One command written for every caller that asked for it in the same loop iteration,
    before the write: each caller has a future of its own (one cancelled leaves the
    others waiting), all answered by the one reply. The write comes after every one of
    them asked, so the reply is what each would have had from a command of its own sent
    then: a write that finished before any of them asked shows in it."""

    __slots__ = ("futs",)

    def __init__(self) -> None:
        self.futs: list[asyncio.Future[Any]] = []

    def answer(self, reply: Any) -> None:
        for fut in self.futs:
            if not fut.done():
                if _is_error(reply):
                    fut.set_exception(_error(reply))
                else:
                    fut.set_result(reply)

    def fail(self, err: Exception) -> None:
        for fut in self.futs:
            if not fut.done():
                fut.set_exception(err)


Waiter = asyncio.Future[Any] | _Batch | _Shared
# Keys whose GET command is kept packed (listing versions: one per account listed).
PACKED_GETS: Final = 4096
# The connection's name in CLIENT LIST, for operators and tests.
CLIENT_NAME: Final = "snapshots-reads"


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float = 5.0) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiters: deque[Waiter] = deque()
        # Commands not written yet that callers share (GETs): see _Shared.
        self.unsent: dict[bytes, _Shared] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.outbox: list[bytes] = []
        # The loop that makes the connection (its factory runs in it), kept: asyncio's
        # get_running_loop() is a getpid system call each time, and this runs per command.
        self.loop = asyncio.get_running_loop()
        # A reply later than ``timeout`` drops the connection. One watchdog timer for the
        # connection, not one per command: ``marks`` holds, for each write, how many
        # waiters had been queued by then and when; the oldest waiter not yet answered was
        # sent with the first mark past ``answered``.
        self.timeout = timeout
        self.queued = 0
        self.answered = 0
        self.marks: deque[tuple[int, float]] = deque()
        self.watchdog: asyncio.TimerHandle | None = None

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Sends one command; its reply (or error) comes as the future's result."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.send(command, fut)
        return fut

    def call_shared(self, command: bytes) -> asyncio.Future[Any]:
        """``call``, sharing the command with any other caller of it in this iteration."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        shared = self.unsent.get(command)
        if shared is None:
            shared = self.unsent[command] = _Shared()
            self.send(command, shared)
        shared.futs.append(fut)
        return fut

    def send(self, command: bytes, waiter: Waiter) -> None:
        # Commands issued in the same loop iteration go out in one write: a syscall costs
        # far more than building the bytes, and concurrent requests batch up naturally.
        if not self.outbox:
            self.loop.call_soon(self.flush)
        self.outbox.append(command)
        self.waiters.append(waiter)
        self.queued += 1

    def flush(self) -> None:
        data = b"".join(self.outbox)
        self.outbox.clear()
        self.unsent.clear()
        if self.transport is None or self.closed:
            return
        self.transport.write(data)
        now = self.loop.time()
        self.marks.append((self.queued, now))
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(now + self.timeout, self._watch)

    def _watch(self) -> None:
        self.watchdog = None
        marks = self.marks
        while marks and marks[0][0] <= self.answered:
            marks.popleft()
        if self.closed or not marks:
            return
        due = marks[0][1] + self.timeout
        if due <= self.loop.time():
            self.expire()
        else:
            self.watchdog = self.loop.call_at(due, self._watch)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack the same.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiters:  # pragma: no cover - a reply nobody asked for
                self.abort(redis.exceptions.ConnectionError("unexpected reply from Redis"))
                return
            waiter = self.waiters[0]
            if isinstance(waiter, _Shared):
                self.waiters.popleft()
                self.answered += 1
                waiter.answer(reply)
                continue
            if isinstance(waiter, _Batch):
                waiter.replies.append(_error(reply) if _is_error(reply) else reply)
                if len(waiter.replies) < waiter.expect:
                    continue
                self.waiters.popleft()
                self.answered += 1
                if not waiter.fut.done():
                    waiter.fut.set_result(waiter.replies)
                continue
            self.waiters.popleft()
            self.answered += 1
            if waiter.done():
                continue
            if _is_error(reply):
                waiter.set_exception(_error(reply))
            else:
                waiter.set_result(reply)
        marks = self.marks
        while marks and marks[0][0] <= self.answered:
            marks.popleft()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(redis.exceptions.ConnectionError(f"Redis connection lost: {exc}"))

    def fail_all(self, err: Exception) -> None:
        self.closed = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.unsent.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if isinstance(waiter, _Shared):
                waiter.fail(err)
                continue
            fut = waiter.fut if isinstance(waiter, _Batch) else waiter
            if not fut.done():
                fut.set_exception(err)

    def expire(self) -> None:
        self.abort(redis.exceptions.TimeoutError("Redis did not answer in time"))

    def abort(self, err: Exception) -> None:
        self.fail_all(err)
        if self.transport is not None:
            self.transport.abort()


class FastReads:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._packed_gets: dict[str, bytes] = {}
        # Counts the connections made: what was read on an earlier one may be stale now
        # (a Redis restarted, perhaps from older data). See api/views.py RowViews.
        self.generation = 0

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        o = self.options

        def factory() -> _Protocol:
            return _Protocol(self.timeout)

        if "path" in o:
            connect = loop.create_unix_connection(factory, o["path"])
        else:
            secure = o.get("connection_class") is SSLConnection
            tls = ssl.create_default_context() if secure else None
            connect = loop.create_connection(
                factory, o.get("host", "localhost"), o.get("port", 6379), ssl=tls
            )
        try:
            _, proto = await asyncio.wait_for(connect, self.timeout)
        except (TimeoutError, OSError) as exc:
            raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from None
        try:
            if o.get("password"):
                auth = (o["username"], o["password"]) if o.get("username") else (o["password"],)
                await proto.call(pack(("AUTH", *auth)))
            if o.get("db"):
                await proto.call(pack(("SELECT", o["db"])))
            await proto.call(pack(("CLIENT", "SETNAME", CLIENT_NAME)))
        except redis.exceptions.ResponseError as exc:
            # A refused AUTH/SELECT is a configuration problem: the service is unavailable.
            proto.abort(redis.exceptions.ConnectionError("Redis connection set-up failed"))
            raise redis.exceptions.AuthenticationError(str(exc)) from None
        except BaseException:
            proto.abort(redis.exceptions.ConnectionError("Redis connection set-up failed"))
            raise
        self._proto = proto
        self.generation += 1
        return proto

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A connection belongs to the loop that made it (tests run several loops).
            self._loop, self._proto, self._lock = loop, None, asyncio.Lock()
        proto = self._proto
        if proto is None or proto.closed:
            async with self._lock:
                proto = self._proto
                if proto is None or proto.closed:
                    proto = await self._connect()
        return proto

    def _ready(self) -> _Protocol | None:
        """The connection, when it is up and this loop's (else ``_connection`` makes one)."""
        proto = self._proto
        if proto is None or proto.closed or self._loop is not asyncio.get_running_loop():
            return None
        return proto

    def command(self, *args: str | bytes | int) -> Awaitable[Any]:
        """The command's reply, to await. A plain call answering the reply's future itself
        when connected, not a coroutine around it: a request makes one or two of these,
        and each coroutine layer is measurable on the hot path."""
        proto = self._ready()
        if proto is None:
            return self._connected_call(pack(args))
        return proto.call(pack(args))

    def get(self, key: str) -> Awaitable[str | None]:
        """``GET key`` (a listing's version, on every list): its packed bytes made once,
        and one command for all the callers of one loop iteration (_Shared)."""
        command = self._packed_gets.get(key)
        if command is None:
            if len(self._packed_gets) >= PACKED_GETS:
                self._packed_gets.clear()
            command = self._packed_gets[key] = pack(("GET", key))
        proto = self._ready()
        if proto is None:
            return self._connected_call(command)
        reply: Awaitable[str | None] = proto.call_shared(command)
        return reply

    async def _connected_call(self, command: bytes) -> Any:
        proto = await self._connection()
        return await proto.call(command)


    async def batch(self, commands: Sequence[tuple[str | bytes | int, ...]]) -> list[Any]:
        """Several commands in one write, their replies in one list, in order (one future
        for all, not one each). An error reply raises once every reply is in, so the
        connection stays in step. Not atomic: other clients' commands may run between."""
        if not commands:
            return []
        proto = self._ready() or await self._connection()
        fut: asyncio.Future[list[Any]] = proto.loop.create_future()
        proto.send(b"".join(pack(c) for c in commands), _Batch(fut, len(commands)))
        replies: list[Any] = await fut
        for reply in replies:
            if isinstance(reply, redis.exceptions.RedisError):
                raise reply
        return replies

    async def hgetall(self, key: str) -> dict[str, str]:
        return pairs(await self.command("HGETALL", key))

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
