"""Event streams under the Procfile's HTTP protocol, where the hub writes each frame to an
idle stream's connection itself (api/httpguard.py BodyWriter) and queues it for the
stream's pump otherwise: a burst arrives whole and in order, and a client that stops
reading (its connection paused, its queue overflowing) still gets every event once, in
order, when it reads again."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from api.httpguard import BodyWriter
from tests.events.conftest import Live
from tests.events.sse import read

EVENTS = "/events/"


def _progress(pipe: redis.client.Pipeline, n: int, pad: str = "") -> None:
    pipe.xadd("events", {"type": "snapshot.progress", "account": "acme", "server_id": "1",
                         "snapshot_id": "1", "operation_id": "1", "at": "1700000000",
                         "data": f'{{"progress": {n}, "pad": "{pad}"}}'})


def test_a_burst_arrives_whole_and_in_order(
    guarded: Live, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = BodyWriter.__call__
    wrote: list[int] = []

    def counted(self: BodyWriter, body: bytes) -> bool:
        took = direct(self, body)
        wrote.append(int(took))
        return took

    # Counted, so that a server on which the direct path silently stopped (an exception
    # caught by the hub, an attribute of uvicorn's renamed) is seen here, not only in CPU.
    monkeypatch.setattr(BodyWriter, "__call__", counted)
    with guarded.client() as c, c.stream("GET", EVENTS) as resp:
        read(resp, lambda g: bool(g.comments))  # connected, the pump parked
        with redis_client.pipeline(transaction=True) as pipe:  # one XREAD gets all 40
            for n in range(1, 41):
                _progress(pipe, n)
            pipe.execute()
        got = read(resp, lambda g: len(g.frames) >= 40)
        # ... and the next one, after the burst, too.
        with redis_client.pipeline(transaction=True) as pipe:
            _progress(pipe, 41)
            pipe.execute()
        got.frames += read(resp, lambda g: len(g.frames) >= 1).frames
    assert [f.data["data"]["progress"] for f in got.frames] == list(range(1, 42))
    # the pump was parked when the burst came: at least its first frame went out directly
    assert sum(wrote) >= 1, wrote


def test_a_direct_write_that_fails_costs_no_stream_an_event(
    guarded: Live, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub is past an event once it offers it: a stream's direct write raising must not
    end the offer to the streams after it (nor lose the event for its own stream)."""
    def broken(self: BodyWriter, body: bytes) -> bool:
        raise RuntimeError("a connection in a state the writer did not foresee")

    with guarded.client() as c, c.stream("GET", EVENTS) as one, \
            c.stream("GET", EVENTS) as two:
        for resp in (one, two):
            read(resp, lambda g: bool(g.comments))  # connected, the pump parked
        monkeypatch.setattr(BodyWriter, "__call__", broken)
        for n in range(1, 6):
            with redis_client.pipeline(transaction=True) as pipe:
                _progress(pipe, n)
                pipe.execute()
        for resp in (one, two):
            got = read(resp, lambda g: len(g.frames) >= 5)
            assert [f.data["data"]["progress"] for f in got.frames] == [1, 2, 3, 4, 5]


def _progress_values(lines: list[bytes]) -> list[int]:
    values = []
    for line in lines:
        if line.startswith(b"data: "):
            marker = line.index(b'"progress":') + len(b'"progress":')
            values.append(int(line[marker:line.index(b",", marker)]))
    return values


def test_a_client_that_stops_reading_gets_every_event_once_in_order(
    guarded: Live, redis_client: redis.Redis
) -> None:
    host, port = guarded.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up soon
    sock.connect((host, int(port)))
    sock.settimeout(10)
    token = guarded.admin["Authorization"]
    sock.sendall(f"GET /api/v1{EVENTS} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    head = b""
    while b"retry:" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    # Far more than the socket buffers hold while nobody reads: the server's connection
    # pauses, the stream's queue (5 here) overflows, and it must resync from Redis.
    total, pad = 10_000, "x" * 1000
    for start in range(1, total + 1, 500):
        with redis_client.pipeline(transaction=False) as pipe:
            for n in range(start, min(total, start + 499) + 1):
                _progress(pipe, n, pad)
            pipe.execute()
        time.sleep(0.05)
    got: list[int] = []
    partial = head
    deadline = time.monotonic() + 60
    while len(got) < total and time.monotonic() < deadline:
        *lines, partial = (partial + sock.recv(1 << 20)).split(b"\n")
        got += _progress_values(lines)
    sock.close()
    assert got == list(range(1, total + 1))
