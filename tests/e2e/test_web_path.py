"""The web process's per-request path as the Procfile runs it (issue 12): answers written
in one send still arrive whole and in order on a pipelined connection, bodiless ones
(HEAD, 204) included, an event stream's headers arrive before its first event, and a
token revoked through one web process is refused by another that had it cached, within
milliseconds (the token.revoked fan-out), not after the cache's TTL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import honcho.environ
import httpx

from api.auth import CACHE_TTL
from tests.e2e.conftest import HEADER_TIMEOUT, ROOT, ProcfileWeb
from tests.e2e.service import ADMIN_TOKEN, wait_until
from tests.support.ports import free_port
from tests.support.redis_proc import RedisProcess

AUTH = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()


def _sock(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _responses(sock: socket.socket, count: int, heads: frozenset[int] = frozenset()
               ) -> list[tuple[int, dict[str, str], bytes]]:
    """Reads ``count`` HTTP/1.1 responses (content-length framed; those numbered in
    ``heads`` answer a HEAD, so no body follows their headers) off the socket."""
    data = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    requests = iter(range(count))
    while len(out) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        length = int(headers.get("content-length", "0"))
        if next(requests) in heads:
            length = 0
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        out.append((int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return out


def test_pipelined_answers_arrive_whole_and_in_order(procfile_web: ProcfileWeb) -> None:
    made = httpx.post(f"{procfile_web.url}/api/v1/tokens/", json={"account": "acme",
                      "scope": "read"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert made.status_code == 201
    sock = _sock(procfile_web.url)
    try:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /api/v1/snapshots/ HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
            b"DELETE /api/v1/tokens/" + str(made.json()["id"]).encode() + b"/ HTTP/1.1\r\n"
            b"Host: x\r\n" + AUTH + b"\r\n"
            b"GET /api/v1/snapshots/12345/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: last-one\r\n"
            + AUTH + b"\r\n"
        )
        got = _responses(sock, 4, heads=frozenset({1}))
    finally:
        sock.close()
    assert [status for status, _, _ in got] == [200, 200, 204, 404]
    assert got[0][2].startswith(b"{") and got[1][2] == b"" and got[2][2] == b""
    assert b"not found" in got[3][2].lower() and got[3][1]["x-request-id"] == "last-one"
    assert len({h["x-request-id"] for _, h, _ in got}) == 4


def test_event_stream_headers_arrive_before_any_event(procfile_web: ProcfileWeb) -> None:
    sock = _sock(procfile_web.url)
    try:
        sock.settimeout(3)
        sock.sendall(b"GET /api/v1/events/ HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200") and b"text/event-stream" in data


def _web(tmp_path: Path, name: str, redis_url: str) -> tuple[str, subprocess.Popen[bytes]]:
    command = honcho.environ.parse_procfile((ROOT / "Procfile").read_text()).processes["web"]
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, SNAPSHOTS_DATA_DIR=str(tmp_path / "data"),
               SNAPSHOTS_ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(port), HOST="127.0.0.1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return f"http://127.0.0.1:{port}", proc


def test_a_revoked_token_is_refused_at_once_by_another_web_process(tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path / "redis").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (a, pa), (b, pb) = _web(tmp_path, "web-a", redis.url), _web(tmp_path, "web-b", redis.url)
        procs += [pa, pb]
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

        def up() -> bool:
            try:
                return all(httpx.get(f"{u}/readyz", timeout=1).status_code == 200
                           for u in (a, b))
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="two web processes")
        made = httpx.post(f"{a}/api/v1/tokens/", json={"account": "acme", "scope": "read"},
                          headers=admin).json()
        mine = {"Authorization": f"Bearer {made['token']}"}
        with httpx.Client(base_url=b, headers=mine, timeout=5) as on_b:
            # B has the token in its cache now (a hit costs no Redis read).
            for _ in range(3):
                assert on_b.get("/api/v1/snapshots/").status_code == 200
            revoked = httpx.delete(f"{a}/api/v1/tokens/{made['id']}/", headers=admin)
            assert revoked.status_code == 204
            started = time.monotonic()
            while (status := on_b.get("/api/v1/snapshots/").status_code) == 200:
                assert time.monotonic() - started < CACHE_TTL
                time.sleep(0.01)
            took = time.monotonic() - started
        assert status == 401
        assert took < 1.0, f"refused only after {took:.2f} s (the cache's TTL, not the fan-out)"
        assert httpx.get(f"{a}/api/v1/snapshots/", headers=mine).status_code == 401
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(30)
        redis.close()


def test_an_idle_connection_after_answers_is_closed_at_the_header_deadline(
        procfile_web: ProcfileWeb) -> None:
    """The deadline timer is lazy (one per connection, re-armed by moving its due time):
    after several answers the next request's deadline still closes an idle connection at
    HEADER_TIMEOUT, well before uvicorn's keep-alive of 5 s."""
    sock = _sock(procfile_web.url)
    try:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _responses(sock, 1)[0][0] == 200
            time.sleep(HEADER_TIMEOUT / 2)  # each answer moves the deadline on
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1) == b""  # closed by the server
        took = time.monotonic() - started
    finally:
        sock.close()
    assert HEADER_TIMEOUT / 2 - 0.2 < took < HEADER_TIMEOUT + 1.0, took
