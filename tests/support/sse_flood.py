"""Many real event-stream clients at once, on raw asyncio sockets (an httpx client per
stream would cost the test more than the server): each opens ``GET /api/v1/events/``,
and, when it gets a 200, records when each event arrived and when the stream ended.
Used by tests/events/test_flood.py and bench/events.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamClient:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # an error answer's body
    # data["data"]["progress"] (or the event id) -> monotonic arrival time
    arrivals: dict[Any, float] = field(default_factory=dict)
    comments: int = 0
    ended_at: float | None = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None

    @property
    def error_code(self) -> str:
        code: str = json.loads(self.body)["error"]["code"]
        return code

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await self.writer.wait_closed()


def _key(data: dict[str, Any]) -> Any:
    inner = data.get("data") or {}
    return inner["progress"] if "progress" in inner else data["id"]


async def _pump(client: StreamClient, reader: asyncio.StreamReader) -> None:
    # Chunked transfer: size lines and chunk bodies interleave with the SSE lines; only
    # the "data:" and ":" lines matter here, and each SSE line arrives whole in one chunk.
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                client.arrivals[_key(json.loads(line[6:]))] = time.monotonic()
            elif line.startswith(b":"):
                client.comments += 1
            elif line == b"0\r\n":  # the last chunk: the server ended the stream
                break
    except (OSError, asyncio.IncompleteReadError):
        pass
    client.ended_at = time.monotonic()


async def open_stream(
    host: str, port: int, token: str, path: str = "/api/v1/events/", timeout: float = 30.0
) -> StreamClient:
    client = StreamClient()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    client.writer = writer
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    client.status = int(status_line.split()[1])
    while (line := await asyncio.wait_for(reader.readline(), timeout)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        client.headers[name.strip().lower()] = value.strip()
    if client.status == 200:
        client.task = asyncio.get_running_loop().create_task(_pump(client, reader))
    else:
        length = int(client.headers.get("content-length", "0"))
        client.body = await asyncio.wait_for(reader.readexactly(length), timeout)
        writer.close()
        client.writer = None
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
