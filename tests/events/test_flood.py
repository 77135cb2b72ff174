"""A flood of event streams against a real uvicorn process and a real redis-server (issue 9):
one account opening thousands of streams gets 429s past its cap and cannot make another
account's writes fail; the web process keeps a handful of Redis connections whatever the
number of streams; every open stream still gets every event; a revoked token's streams
end within seconds; the slots and the memory come back when the streams close."""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.eventhub import FD_RESERVE
from shared.settings import Settings
from shared.store import Store
from tests.e2e.service import ADMIN_TOKEN, Service
from tests.support.sse_flood import StreamClient, open_many, percentile

PER_ACCOUNT = 1500
PER_PROCESS = 2000
OVER = 300
EVENTS = 30


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _redis_clients(client: redis.Redis) -> list[dict[str, Any]]:
    me = client.client_id()
    return [c for c in client.client_list() if int(c["id"]) != me]


async def _b_traffic(svc: Service, token: str, server_ids: list[int]) -> list[int]:
    """B's creates and GETs while A floods; returns every status code B got."""
    codes: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{svc.url}/api/v1", headers=headers,
                                 timeout=20) as c:
        # One create per server (a second one would meet the first still in progress).
        creates = [c.post("/snapshots/", json={"server_id": s, "name": "n"}) for s in server_ids]
        gets = [c.get("/snapshots/") for _ in range(2 * len(server_ids))]
        codes += [r.status_code for r in await asyncio.gather(*creates, *gets)]
    return codes


async def _close(clients: list[StreamClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def _flood(svc: Service, store: Store, ids: dict[str, Any]) -> dict[str, Any]:
    assert svc.web is not None
    pid, figures = svc.web.pid, {}
    monitor = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    figures["rss_before"] = _rss_mib(pid)
    figures["redis_before"] = len(_redis_clients(monitor))

    # A floods while B works: B gets no 503 (nor anything but 201/200).
    started = time.monotonic()
    a_streams, b_codes = await asyncio.gather(
        open_many("127.0.0.1", svc.port, ids["a_token"], PER_ACCOUNT + OVER),
        _b_traffic(svc, ids["b_token"], ids["b_servers"][:20]),
    )
    figures["open_s"] = time.monotonic() - started
    opened = [s for s in a_streams if s.status == 200]
    refused = [s for s in a_streams if s.status != 200]
    assert len(opened) == PER_ACCOUNT and len(refused) == OVER
    for s in refused:
        assert s.status == 429 and s.error_code == "rate_limited"
        assert int(s.headers["retry-after"]) >= 1
    assert sorted(set(b_codes)) == [200, 201], b_codes

    # B's streams fill the process to its cap; B's writes still go through.
    b_streams = await open_many("127.0.0.1", svc.port, ids["b_token"], 600)
    b_open = [s for s in b_streams if s.status == 200]
    assert len(b_open) == PER_PROCESS - PER_ACCOUNT
    assert {s.status for s in b_streams if s.status != 200} == {429}
    b_codes = await _b_traffic(svc, ids["b_token"], ids["b_servers"][20:])
    assert sorted(set(b_codes)) == [200, 201], b_codes

    clients = _redis_clients(monitor)
    figures["streams_open"] = len(opened) + len(b_open)
    figures["redis_with_streams"] = len(clients)
    figures["rss_with_streams"] = _rss_mib(pid)
    # A handful of connections for the whole process, not one per stream.
    assert len(clients) <= 9, [(c.get("name"), c.get("cmd")) for c in clients]

    # Every open stream gets every event of its account, and none of another's.
    sent: dict[int, float] = {}
    for progress in range(1, EVENTS + 1):
        sent[progress] = time.monotonic()
        store.report_progress(ids["a_operation"], progress)
        await asyncio.sleep(0.02)
    deadline = time.monotonic() + 20
    while any(len(s.arrivals) < EVENTS for s in opened):
        assert time.monotonic() < deadline, "some streams missed events"
        await asyncio.sleep(0.05)
    latencies = [s.arrivals[p] - sent[p] for s in opened for p in range(1, EVENTS + 1)]
    assert all(set(s.arrivals) == set(sent) for s in opened)
    figures["latency_p50_ms"] = percentile(latencies, 0.50) * 1000
    figures["latency_p99_ms"] = percentile(latencies, 0.99) * 1000
    # B's streams saw B's 20 creates (opened before them), never A's progress.
    assert all(len(s.arrivals) == 20 and 1 not in s.arrivals for s in b_open)

    # Revoking A's token ends every one of its streams within seconds.
    with httpx.Client(base_url=f"{svc.url}/api/v1", timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        revoked_at = time.monotonic()
        assert admin.delete(f"/tokens/{ids['a_token_id']}/").status_code == 204
    deadline = time.monotonic() + 10
    while any(s.ended_at is None for s in opened):
        assert time.monotonic() < deadline, "a revoked token's stream kept going"
        await asyncio.sleep(0.05)
    figures["revoke_end_s"] = max(s.ended_at or 0 for s in opened) - revoked_at
    assert figures["revoke_end_s"] < 3

    # The slots come back: a fresh token of A opens its whole share again.
    await _close(a_streams + b_streams)
    again = await open_many("127.0.0.1", svc.port, ids["a2_token"], PER_ACCOUNT)
    assert {s.status for s in again} == {200}
    await _close(again)
    await asyncio.sleep(1.0)
    figures["rss_after"] = _rss_mib(pid)
    figures["redis_after"] = len(_redis_clients(monitor))
    monitor.close()
    # Two floods in, the process is smaller than with the first one open: nothing of a
    # closed stream stays (the freed memory is trimmed back, see api/memory.py).
    assert figures["rss_after"] < figures["rss_with_streams"]
    return figures


def _raise_fd_limit(needed: int) -> None:
    """Thousands of sockets on each side: lift the soft limit (the web process, started
    after this, inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        pytest.skip(f"needs {needed} open files (ulimit -n); the hard limit is {hard}")


def test_stream_flood_is_capped_and_isolated(tmp_path: Path) -> None:
    _raise_fd_limit(3 * (PER_PROCESS + OVER + 600))
    with Service.running(
        tmp_path, workers=0,
        SNAPSHOTS_EVENTS_MAX_PER_ACCOUNT=str(PER_ACCOUNT),
        SNAPSHOTS_EVENTS_MAX_PER_PROCESS=str(PER_PROCESS),
    ) as svc, svc.client() as admin:
        ids: dict[str, Any] = {}
        servers = []
        for account, n in (("acme", 1), ("globex", 40)):
            for i in range(n):
                (tmp_path / f"{account}{i}").mkdir()
                r = admin.post("/servers/", json={
                    "name": f"{account}{i}", "account": account, "power": {"kind": "none"},
                    "state": {"kind": "directory", "path": str(tmp_path / f"{account}{i}")},
                })
                assert r.status_code == 201, r.text
                servers.append((account, r.json()["id"]))
        ids["b_servers"] = [s for a, s in servers if a == "globex"]
        for key, account, scope in (("a", "acme", "read"), ("a2", "acme", "read"),
                                    ("b", "globex", "write")):
            r = admin.post("/tokens/", json={"account": account, "scope": scope})
            ids[f"{key}_token"], ids[f"{key}_token_id"] = r.json()["token"], r.json()["id"]
        # An operation of A's for the delivery check (the admin acts for any account).
        acme_server = next(s for a, s in servers if a == "acme")
        r = admin.post("/snapshots/", json={"server_id": acme_server, "name": "watched"})
        ids["a_operation"] = r.json()["operation_id"]
        client = redis.Redis.from_url(svc.redis.url, decode_responses=True)
        store = Store(client, Settings(data_dir=svc.data_dir, storage_url="file:///x"))
        assert store.begin_operation(ids["a_operation"]) is not None
        figures = asyncio.run(_flood(svc, store, ids))
        client.close()
        print("stream flood:", {k: round(v, 1) for k, v in figures.items()})


def test_the_open_files_limit_caps_streams_before_the_process_runs_out(tmp_path: Path) -> None:
    """A web process started with a small ``ulimit -n`` (700 here) answers 429 past what
    its limit leaves room for, instead of failing to accept connections, and keeps
    serving requests."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (700, hard))
    try:
        svc = Service(tmp_path, SNAPSHOTS_EVENTS_MAX_PER_ACCOUNT="5000").start(workers=0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    room = 700 - FD_RESERVE
    try:
        async def flood() -> list[StreamClient]:
            streams = await open_many("127.0.0.1", svc.port, ADMIN_TOKEN, room + 100)
            async with httpx.AsyncClient(base_url=svc.url, timeout=10) as c:
                assert (await c.get("/healthz")).status_code == 200
            await _close(streams)
            return streams

        streams = asyncio.run(flood())
        assert sum(1 for s in streams if s.status == 200) == room
        assert {s.status for s in streams if s.status != 200} == {429}
        assert "open-files limit" in (tmp_path / "web.log").read_text()
    finally:
        svc.stop()
