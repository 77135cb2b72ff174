"""Many real event-stream clients at once, on raw asyncio sockets (an httpx client per
stream would cost the test more than the server): each opens ``GET /api/v1/events/``,
and, when it gets a 200, records when each event arrived and when the stream ended.
Used by tests/events/test_flood.py and bench/events.py."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

_decode = msgspec.json.Decoder().decode


@dataclass
class StreamClient:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # an error answer's body
    # data["data"]["progress"] (or the event id) -> monotonic arrival time
    arrivals: dict[Any, float] = field(default_factory=dict)
    comments: int = 0
    ended_at: float | None = None
    transport: asyncio.BaseTransport | None = None

    @property
    def error_code(self) -> str:
        code: str = json.loads(self.body)["error"]["code"]
        return code

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
            await asyncio.sleep(0)  # let the transport's close run


def _key(data: dict[str, Any]) -> Any:
    inner = data.get("data") or {}
    return inner["progress"] if "progress" in inner else data["id"]


class _StreamProtocol(asyncio.Protocol):
    """The response head, then the stream's lines, parsed in ``data_received``.

    A protocol rather than ``StreamReader.readline``: a thousand streams receiving every
    event cost the client process more CPU than the web process serving them (a coroutine
    step per line), and a client that falls behind adds its own backlog to the delivery
    latency it measures. Every line of one read gets the read's arrival time.
    """

    def __init__(self, client: StreamClient, head: asyncio.Future[None]) -> None:
        self.client = client
        self.head = head
        self.buf = b""
        self.body_left: int | None = None  # an error answer's body still to come
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head.done() and self.body_left is None:
            self._lines(data)
            return
        self.buf += data
        if self.body_left is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head(self.buf[:end].decode("latin-1"))
            rest, self.buf = self.buf[end + 4:], b""
            if self.client.status == 200:
                self.head.set_result(None)
                self._lines(rest)
                return
            self.body_left = int(self.client.headers.get("content-length", "0"))
            self.buf = rest
        if len(self.buf) >= self.body_left:
            self.client.body = self.buf[: self.body_left]
            if not self.head.done():
                self.head.set_result(None)
            if self.transport is not None:
                self.transport.close()

    def _head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        self.client.status = int(status_line.split()[1])
        for line in lines:
            name, _, value = line.partition(":")
            self.client.headers[name.strip().lower()] = value.strip()

    def _lines(self, data: bytes) -> None:
        # Chunked transfer: size lines and chunk ends interleave with the SSE lines; only
        # the "data:" and ":" lines matter here.
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        now = time.monotonic()
        client = self.client
        for line in lines:
            if line.startswith(b"data: "):
                client.arrivals[_key(_decode(line[6:]))] = now
            elif line.startswith(b":"):
                client.comments += 1
            elif line == b"0\r" and client.ended_at is None:  # the last chunk
                client.ended_at = now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionError("closed before the response head"))
        if self.client.ended_at is None:
            self.client.ended_at = time.monotonic()


async def open_stream(
    host: str, port: int, token: str, path: str = "/api/v1/events/", timeout: float = 30.0
) -> StreamClient:
    client = StreamClient()
    loop = asyncio.get_running_loop()
    head: asyncio.Future[None] = loop.create_future()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: _StreamProtocol(client, head), host, port), timeout
    )
    client.transport = transport
    transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await asyncio.wait_for(head, timeout)
    if client.status != 200:
        transport.close()
        client.transport = None
    return client


async def open_many(
    host: str, port: int, token: str, n: int, concurrency: int = 200, **kw: Any
) -> list[StreamClient]:
    """``n`` streams, at most ``concurrency`` connecting at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> StreamClient:
        async with gate:
            return await open_stream(host, port, token, **kw)

    return list(await asyncio.gather(*(one() for _ in range(n))))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
