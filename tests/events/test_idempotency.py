"""Idempotency-Key on create and restore: replays, body mismatch, per-account keys, what is
remembered and what is not, and two identical requests at once starting one operation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
import redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api.idempotency import Remembered
from shared.schemas import ServerCreate, ServerState, SnapshotCreate
from shared.scripts import IdemClaim, TransitionRefused
from shared.store import Store
from tests.conftest import ADMIN_TOKEN
from tests.support.api import ApiHelper, bearer


def _post(client: TestClient, path: str, headers: dict[str, str], key: str,
          content: bytes | None = None, body: Any = None) -> httpx.Response:
    h = {**headers, "Idempotency-Key": key, "Content-Type": "application/json"}
    if content is None and body is not None:
        r: httpx.Response = client.post(path, json=body, headers=h)
        return r
    r = client.post(path, content=content, headers=h)
    return r


def test_same_key_same_body_answers_the_first_answer(
    api: ApiHelper, client: TestClient, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    first = _post(client, "/api/v1/snapshots/", h, "k-1",
                  content=b'{"server_id": %d, "name": "a", "stop_server": false}' % server["id"])
    assert first.status_code == 201, first.text
    # Same JSON, other key order and spacing: the same request.
    again = _post(client, "/api/v1/snapshots/", h, "k-1",
                  content=b'{"stop_server":false,"name":"a","server_id":%d}' % server["id"])
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listing = client.get("/api/v1/snapshots/", headers=h).json()
    assert listing["meta"]["total"] == 1
    assert client.get("/api/v1/operations/", headers=h).json()["meta"]["total"] == 1
    ttls = [redis_client.ttl(k) for k in redis_client.scan_iter("idem:*")]
    assert len(ttls) == 1 and 24 * 3600 - 60 < ttls[0] <= 24 * 3600


def test_same_key_other_body_is_refused_naming_the_key(api: ApiHelper, client: TestClient) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    body = {"server_id": server["id"], "name": "a"}
    assert _post(client, "/api/v1/snapshots/", h, "nightly-42", body=body).status_code == 201
    other = _post(client, "/api/v1/snapshots/", h, "nightly-42", body={**body, "name": "b"})
    assert other.status_code == 400
    err = other.json()["error"]
    assert err["code"] == "invalid_request" and "nightly-42" in err["message"]
    # The same key on another endpoint is another request too.
    snap_id = client.get("/api/v1/snapshots/", headers=h).json()["snapshots"][0]["id"]
    r = _post(client, f"/api/v1/snapshots/{snap_id}/restore/", h, "nightly-42", body={})
    assert r.status_code == 400 and "nightly-42" in r.json()["error"]["message"]
    assert client.get("/api/v1/snapshots/", headers=h).json()["meta"]["total"] == 1


def test_keys_are_per_account(api: ApiHelper, client: TestClient) -> None:
    a, b = api.server("acme"), api.server("globex")
    ha, hb = api.headers("acme"), api.headers("globex")
    ra = _post(client, "/api/v1/snapshots/", ha, "same", body={"server_id": a["id"], "name": "x"})
    rb = _post(client, "/api/v1/snapshots/", hb, "same", body={"server_id": b["id"], "name": "x"})
    assert ra.status_code == rb.status_code == 201
    assert ra.json()["id"] != rb.json()["id"]


def test_an_admin_key_is_not_replayed_to_a_tenant_of_its_account(
    api: ApiHelper, client: TestClient
) -> None:
    # An admin token belongs to an account too; its keys must not be that account's
    # tenants' keys, or a tenant sending the admin's key and body gets the admin's answer
    # (here another account's snapshot).
    theirs = api.server("globex")
    admin, tenant = api.headers("acme", "admin"), api.headers("acme")
    body = {"server_id": theirs["id"], "name": "x"}
    first = _post(client, "/api/v1/snapshots/", admin, "shared-key", body=body)
    assert first.status_code == 201, first.text
    replayed = _post(client, "/api/v1/snapshots/", tenant, "shared-key", body=body)
    assert replayed.status_code == 404, replayed.text
    assert "idempotent-replayed" not in replayed.headers
    assert replayed.json()["error"]["code"] == "not_found"
    # Nor the other way: the tenant's remembered refusal is not the admin's answer.
    again = _post(client, "/api/v1/snapshots/", admin, "shared-key", body=body)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


def test_restore_replays_its_operation(api: ApiHelper, client: TestClient, store: Store) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    snap = api.snapshot(h, server["id"])
    store.begin_operation(snap["operation_id"])
    store.complete_create(snap["operation_id"], 1.0, [])
    path = f"/api/v1/snapshots/{snap['id']}/restore/"
    first = _post(client, path, h, "r-1", content=b"")
    assert first.status_code == 200, first.text
    again = _post(client, path, h, "r-1", content=b"")
    assert again.status_code == 200 and again.json() == first.json()
    # Without the key, a second restore is refused: the first one really is the only one.
    assert client.post(path, headers=h).json()["error"]["code"] == "server_invalid_state"
    ops = client.get("/api/v1/operations/", headers=h).json()["operations"]
    assert [o["type"] for o in ops].count("snapshot.restore") == 1


def test_what_is_remembered(api: ApiHelper, client: TestClient) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    # A malformed request is not an answer: the key stays free for the corrected one.
    bad = _post(client, "/api/v1/snapshots/", h, "k", body={"server_id": server["id"]})
    assert bad.status_code == 400
    reader = bearer(api.token("acme", "read"))
    assert _post(client, "/api/v1/snapshots/", reader, "k",
                 body={"server_id": server["id"], "name": "a"}).status_code == 403
    good = _post(client, "/api/v1/snapshots/", h, "k",
                 body={"server_id": server["id"], "name": "a"})
    assert good.status_code == 201, good.text
    # A refusal of the state store is an answer about the world, and replays as such.
    missing = {"server_id": 999_999, "name": "a"}
    first = _post(client, "/api/v1/snapshots/", h, "k2", body=missing)
    assert first.status_code == 404
    again = _post(client, "/api/v1/snapshots/", h, "k2", body=missing)
    assert again.status_code == 404 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("body", [b"[" * 60_000, b'{"a":' * 3_000 + b"1" + b"}" * 3_000])
@pytest.mark.parametrize("path", ["/api/v1/snapshots/", "/api/v1/snapshots/1/restore/"])
def test_deeply_nested_body_with_a_key_is_400_and_frees_the_key(
    api: ApiHelper, client: TestClient, redis_client: redis.Redis, path: str, body: bytes
) -> None:
    # json.loads, fingerprinting the body, raised RecursionError: a 500.
    h = api.headers("acme")
    r = _post(client, path, h, "deep", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert list(redis_client.scan_iter("idem:*")) == []


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_bad_keys(api: ApiHelper, client: TestClient, key: str) -> None:
    server = api.server("acme")
    h = {**api.headers("acme"), "Idempotency-Key": key}
    r = client.post("/api/v1/snapshots/", json={"server_id": server["id"], "name": "a"},
                    headers={k: v.encode() if isinstance(v, str) else v for k, v in h.items()})
    assert r.status_code == 400
    assert "Idempotency-Key" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_identical_requests_at_once_start_one_operation(app: Starlette, store: Store) -> None:
    server_id = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="directory", path="/s"))
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
        r = await ac.post("/api/v1/tokens/", json={"account": "acme", "scope": "write"},
                          headers=bearer(ADMIN_TOKEN))
        h = {**bearer(r.json()["token"]), "Idempotency-Key": "burst"}
        body = {"server_id": server_id, "name": "once"}
        answers = await asyncio.gather(
            *(ac.post("/api/v1/snapshots/", json=body, headers=h) for _ in range(20))
        )
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert store.list_snapshots(account=None, server_id=server_id).total == 1


def test_a_start_under_a_claim_that_lapsed_and_was_taken_starts_nothing(
    api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    # A request stalled past PENDING_TTL before its script, and another request took the
    # key meanwhile: the stalled one's script refuses (it ran: two operations for a key),
    # and the script run under the key's claim records its answer under the key itself.
    server = api.server("acme")
    body = SnapshotCreate(server_id=server["id"], name="a")
    key = "idem:acme:lapsed"
    redis_client.set(key, msgspec.json.encode(
        Remembered(fingerprint="f", state="pending", claim="theirs")))
    mine = IdemClaim(key=key, claim="mine", fingerprint="f", ttl=100)
    with pytest.raises(TransitionRefused) as refused:
        store.create_snapshot(account=None, body=body, idem=mine)
    assert refused.value.code == "request_in_progress"
    assert store.list_snapshots(account=None, server_id=server["id"]).total == 0
    theirs = IdemClaim(key=key, claim="theirs", fingerprint="f", ttl=100)
    snapshot_id, _ = store.create_snapshot(account=None, body=body, idem=theirs)
    held = redis_client.get(key)
    assert isinstance(held, str)
    rec = msgspec.json.decode(held, type=Remembered)
    assert rec.state == "committed" and rec.claim == "theirs"
    assert msgspec.json.decode(rec.answer)["snapshot_id"] == snapshot_id
    assert 0 < redis_client.ttl(key) <= 100
