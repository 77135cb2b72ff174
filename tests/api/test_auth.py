"""Authentication, scopes and tenant isolation."""

from __future__ import annotations

import hashlib

import pytest
import redis
from starlette.testclient import TestClient

from shared.store import Store
from tests.conftest import ADMIN_TOKEN
from tests.support.api import ApiHelper, bearer


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer snp_unknown-token-value",
        "Bearer " + "x" * 300,
        "Bearer bad token with spaces",
        "bearer\tsnp_x",
    ],
)
def test_missing_malformed_or_unknown_token_is_401(client: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = client.get("/api/v1/snapshots/", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["x-request-id"]


def test_every_api_route_needs_a_token(client: TestClient) -> None:
    for method, path in [
        ("GET", "/api/v1/snapshots/1/"),
        ("POST", "/api/v1/snapshots/"),
        ("POST", "/api/v1/snapshots/1/restore/"),
        ("DELETE", "/api/v1/snapshots/1/"),
        ("GET", "/api/v1/operations/"),
        ("GET", "/api/v1/operations/1/"),
        ("GET", "/api/v1/servers/"),
        ("POST", "/api/v1/servers/"),
        ("DELETE", "/api/v1/servers/1/"),
        ("POST", "/api/v1/tokens/"),
        ("DELETE", "/api/v1/tokens/1/"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 401, (method, path)


def test_env_admin_token_is_admin(client: TestClient) -> None:
    assert client.get("/api/v1/servers/", headers=bearer(ADMIN_TOKEN)).status_code == 200


def test_tokens_are_stored_hashed_and_shown_once(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    r = client.post(
        "/api/v1/tokens/", json={"account": "acme", "scope": "read"}, headers=api.admin
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "account", "scope", "token", "created_at"}
    assert body["account"] == "acme" and body["scope"] == "read"
    token = body["token"]
    assert token.startswith("snp_") and len(token) > 40
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert redis_client.exists(f"token:{digest}")
    for key in redis_client.scan_iter("*"):
        if redis_client.type(key) == "hash":
            assert token not in redis_client.hvals(key)
        elif redis_client.type(key) == "string":
            assert redis_client.get(key) != token


def test_revoked_token_is_refused(client: TestClient, api: ApiHelper) -> None:
    r = client.post(
        "/api/v1/tokens/", json={"account": "acme", "scope": "write"}, headers=api.admin
    )
    token, token_id = r.json()["token"], r.json()["id"]
    assert client.get("/api/v1/snapshots/", headers=bearer(token)).status_code == 200
    assert client.delete(f"/api/v1/tokens/{token_id}/", headers=api.admin).status_code == 204
    assert client.get("/api/v1/snapshots/", headers=bearer(token)).status_code == 401
    assert client.delete(f"/api/v1/tokens/{token_id}/", headers=api.admin).status_code == 404


def test_read_scope_is_get_only(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    writer = api.headers("acme", "write")
    reader = api.headers("acme", "read")
    snap = api.snapshot(writer, server["id"])
    assert client.get("/api/v1/snapshots/", headers=reader).status_code == 200
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=reader).status_code == 200
    assert client.get("/api/v1/operations/", headers=reader).status_code == 200
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=reader).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/snapshots/", {"server_id": server["id"], "name": "x"}),
        ("POST", f"/api/v1/snapshots/{snap['id']}/restore/", None),
        ("DELETE", f"/api/v1/snapshots/{snap['id']}/", None),
    ]:
        r = client.request(method, path, json=body, headers=reader)
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "forbidden"
    # Nothing changed.
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=reader).status_code == 200


def test_write_scope_cannot_admin(client: TestClient, api: ApiHelper) -> None:
    server = api.server("acme")
    writer = api.headers("acme", "write")
    for method, path, body in [
        ("POST", "/api/v1/servers/", {"name": "x", "account": "acme",
                                      "state": {"kind": "image", "path": "/x"}}),
        ("DELETE", f"/api/v1/servers/{server['id']}/", None),
        ("POST", "/api/v1/tokens/", {"account": "acme", "scope": "admin"}),
        ("DELETE", "/api/v1/tokens/1/", None),
    ]:
        r = client.request(method, path, json=body, headers=writer)
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "forbidden"


def test_made_admin_token_sees_all_accounts(client: TestClient, api: ApiHelper) -> None:
    a = api.server("acme")
    b = api.server("globex")
    admin = api.headers("ops", "admin")
    servers = client.get("/api/v1/servers/", headers=admin).json()["servers"]
    assert {s["id"] for s in servers} == {a["id"], b["id"]}
    assert all("account" in s and "state" in s for s in servers)


def test_tenant_isolation(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    a = api.headers("acme")
    b = api.headers("globex")
    b_server = api.server("globex")
    snap = api.snapshot(a, server["id"])
    op_id = snap["operation_id"]
    missing = 10_000
    # B gets exactly what it gets for ids that do not exist.
    for path in [
        f"/api/v1/servers/{server['id']}/",
        f"/api/v1/snapshots/{snap['id']}/",
        f"/api/v1/operations/{op_id}/",
    ]:
        theirs = client.get(path, headers=b)
        nothing = client.get(path.replace(str(path.split("/")[-2]), str(missing)), headers=b)
        assert theirs.status_code == nothing.status_code == 404
        assert theirs.json()["error"]["code"] == "not_found"
    r = client.post("/api/v1/snapshots/", json={"server_id": server["id"], "name": "x"}, headers=b)
    assert r.status_code == 404
    assert client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=b).status_code == 404
    assert client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=b).status_code == 404
    # Lists never show A's objects, even when filtering by A's server.
    assert client.get("/api/v1/snapshots/", headers=b).json()["meta"]["total"] == 0
    listing = client.get(f"/api/v1/snapshots/?server_id={server['id']}", headers=b).json()
    assert listing["snapshots"] == [] and listing["meta"]["total"] == 0
    ops = client.get(f"/api/v1/operations/?server_id={server['id']}", headers=b).json()
    assert ops["operations"] == [] and ops["meta"]["total"] == 0
    assert client.get("/api/v1/operations/", headers=b).json()["operations"] == []
    servers = client.get("/api/v1/servers/", headers=b).json()["servers"]
    assert [s["id"] for s in servers] == [b_server["id"]]
    # The account view has no admin fields.
    assert set(servers[0]) == {"id", "name", "status", "created_at", "schedule"}
    # A still sees its snapshot, untouched.
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=a).json()["status"] == (
        "in_progress"
    )
