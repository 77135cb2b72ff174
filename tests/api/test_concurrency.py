"""The per-server rules hold under concurrent requests (one event loop, real Redis)."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
import redis
from starlette.applications import Starlette

from shared.schemas import ServerCreate, ServerState, SnapshotCreate
from shared.store import Store
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.anyio


async def token(client: httpx.AsyncClient, account: str) -> dict[str, str]:
    r = await client.post(
        "/api/v1/tokens/",
        json={"account": account, "scope": "write"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 201
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def create_many(
    client: httpx.AsyncClient, headers: dict[str, str], server_id: int, n: int
) -> list[httpx.Response]:
    return await asyncio.gather(*[
        client.post("/api/v1/snapshots/", json={"server_id": server_id, "name": f"c{i}"},
                    headers=headers)
        for i in range(n)
    ])


def codes(responses: list[httpx.Response]) -> Counter[object]:
    return Counter(
        r.status_code if r.status_code < 300 else r.json()["error"]["code"] for r in responses
    )


async def test_20_concurrent_creates_accept_exactly_one(
    app: Starlette, store: Store, redis_client: redis.Redis
) -> None:
    server_id = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="directory", path="/s"))
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers = await token(client, "acme")
        responses = await create_many(client, headers, server_id, 20)
    assert codes(responses) == {201: 1, "server_invalid_state": 19}
    assert store.list_snapshots(account=None, server_id=server_id).total == 1
    assert redis_client.hlen("snapshots-dramatiq:host.default.msgs") == 1


async def test_limit_holds_under_concurrency(app: Starlette, store: Store) -> None:
    server_id = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="directory", path="/s"))
    )
    for i in range(4):
        _, op = store.create_snapshot(
            account=None, body=SnapshotCreate(server_id=server_id, name=f"done{i}")
        )
        store.begin_operation(op)
        assert store.complete_create(op, 1.0, [])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers = await token(client, "acme")
        responses = await create_many(client, headers, server_id, 20)
        assert codes(responses) == {201: 1, "server_invalid_state": 19}
        created = next(r.json() for r in responses if r.status_code == 201)
        store.begin_operation(created["operation_id"])
        assert store.complete_create(created["operation_id"], 1.0, [])
        # Now at the limit of 5: every one of 20 concurrent creates is refused.
        responses = await create_many(client, headers, server_id, 20)
        assert codes(responses) == {"snapshot_limit_reached": 20}
    page = store.list_snapshots(account=None, server_id=server_id)
    assert page.total == 5 and {s.status for s in page.items} == {"available"}


async def test_concurrent_restores_and_deletes(app: Starlette, store: Store) -> None:
    server_id = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="directory", path="/s"))
    )
    snap, op = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="base")
    )
    store.begin_operation(op)
    store.complete_create(op, 1.0, [])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers = await token(client, "acme")
        restores = await asyncio.gather(*[
            client.post(f"/api/v1/snapshots/{snap}/restore/", headers=headers) for _ in range(10)
        ])
        assert codes(restores) == {200: 1, "server_invalid_state": 9}
        deletes = await asyncio.gather(*[
            client.delete(f"/api/v1/snapshots/{snap}/", headers=headers) for _ in range(5)
        ])
        assert codes(deletes) == {"snapshot_in_use": 5}
