"""Slow clients against the web process exactly as the Procfile starts it (issue 9):
headers trickled a byte at a time (slowloris), a connection that sends nothing, a chunked
body that never ends (to a route that reads bodies and to one that does not) and headers
past 64 KiB are all cut off within their deadline, while other clients keep being served;
and open event streams, which never end by themselves, do not hold up a shutdown."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import httpx

from tests.e2e.conftest import BODY_TIMEOUT, HEADER_TIMEOUT, ProcfileWeb
from tests.e2e.service import ADMIN_TOKEN

BODY_GRACE = 2.0  # api/httpguard.py: the protocol closes an unread body this much later


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_after(sock: socket.socket, trickle: bytes, every: float, limit: float) -> tuple[
        float, bytes]:
    """Sends ``trickle`` every ``every`` seconds until the server closes the connection;
    returns how long that took and what the server sent."""
    started = time.monotonic()
    received = b""
    sock.settimeout(every)
    while time.monotonic() - started < limit:
        try:
            data = sock.recv(65536)
            if not data:
                return time.monotonic() - started, received
            received += data
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started, received
        try:
            if trickle:
                sock.sendall(trickle)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started, received
    raise AssertionError(f"the server kept the connection open for {limit} s")


class _Bystander(threading.Thread):
    """Another client, served all along: GETs /healthz every 50 ms on fresh connections."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.times = url, threading.Event(), list[float]()

    def run(self) -> None:
        # One client that keeps no connection alive: each GET opens a fresh one, without
        # the CPU of a new client (its SSL context) each time, which on a busy machine
        # starved this thread into too few GETs while the server answered each at once.
        with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self.stop.is_set():
                started = time.monotonic()
                assert c.get(f"{self.url}/healthz").status_code == 200
                self.times.append(time.monotonic() - started)
                time.sleep(0.05)


def test_slow_clients_are_cut_off_and_others_are_served(procfile_web: ProcfileWeb) -> None:
    web = procfile_web.url
    bystander = _Bystander(web)
    bystander.start()
    try:
        # Slowloris: a header byte every 0.2 s, forever, on 50 connections at once.
        socks = [_connect(web) for _ in range(50)]
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        took, got = _closed_after(socks[0], b"a", 0.2, limit=10)
        assert HEADER_TIMEOUT - 0.1 < took < HEADER_TIMEOUT + 1.5 and got == b""
        for s in socks[1:]:
            assert _closed_after(s, b"a", 0.05, limit=3)[1] == b""
            s.close()
        socks[0].close()

        # A connection that never sends a byte.
        with _connect(web) as s:
            took, got = _closed_after(s, b"", 0.2, limit=10)
            assert took < HEADER_TIMEOUT + 1.5 and got == b""

        # A chunked body that never ends, to a route that reads bodies: 408 at the
        # app's deadline, then the connection is closed.
        with _connect(web) as s:
            s.sendall(b"POST /api/v1/snapshots/ HTTP/1.1\r\nHost: x\r\n"
                      b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            took, got = _closed_after(s, b"1\r\n \r\n", 0.1, limit=10)
            assert got.startswith(b"HTTP/1.1 408 "), got
            assert b'"code":"request_timeout"' in got and b"connection: close" in got.lower()
            assert BODY_TIMEOUT - 0.1 < took < BODY_TIMEOUT + 1.5

        # The same to a route that never reads its body: answered, then closed once the
        # next request's headers are overdue (the body keeps coming instead).
        with _connect(web) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            took, got = _closed_after(s, b"1\r\nx\r\n", 0.1, limit=10)
            assert got.startswith(b"HTTP/1.1 200 ")
            assert took < BODY_TIMEOUT + BODY_GRACE + 1.5

        # Headers past 64 KiB: 431 at once.
        with _connect(web) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            took, got = _closed_after(s, b"X-Big: " + b"a" * 8000 + b"\r\n", 0.01, limit=10)
            assert got.startswith(b"HTTP/1.1 431 ") and took < 2
    finally:
        bystander.stop.set()
        bystander.join(10)
    # The bystander was served throughout, promptly.
    assert len(bystander.times) > 20 and max(bystander.times) < 1.0, bystander.times
    # And a normal request with a body still works on a kept-alive connection.
    with httpx.Client(base_url=f"{web}/api/v1",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
        for _ in range(3):
            r = c.post("/tokens/", json={"account": "acme", "scope": "read"})
            assert r.status_code == 201, r.text


def test_open_event_streams_do_not_hold_a_shutdown(procfile_web: ProcfileWeb) -> None:
    """SIGTERM with event streams open: the web process exits at once (its streams are
    cut; clients resume elsewhere), not after the 25 s graceful-shutdown timeout."""
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=procfile_web.url, headers=headers, timeout=10) as c:
        streams = [c.stream("GET", "/api/v1/events/") for _ in range(3)]
        for s in streams:
            assert s.__enter__().status_code == 200
        assert c.get("/healthz").status_code == 200
        started = time.monotonic()
        procfile_web.proc.send_signal(signal.SIGTERM)
        procfile_web.proc.wait(20)
        took = time.monotonic() - started
        for s in streams:
            with contextlib.suppress(httpx.HTTPError):
                s.__exit__(None, None, None)
    assert procfile_web.proc.returncode in (0, -signal.SIGTERM)
    assert took < 5, f"shutdown took {took:.1f} s"
