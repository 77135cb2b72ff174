"""PATCH /snapshots/{id}/: rename, describe, protect; a protected snapshot is never deleted."""

from __future__ import annotations

import json

import redis
from starlette.testclient import TestClient

from shared.store import Store
from tests.api.test_snapshots import complete
from tests.support.api import ApiHelper
from tests.support.streams import entries


def _events(r: redis.Redis, etype: str) -> list[dict[str, str]]:
    return [f for _, f in entries(r) if f["type"] == etype]


def test_patch_renames_describes_and_protects(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"], name="nightly", description="old")
    complete(store, snap["operation_id"])
    url = f"/api/v1/snapshots/{snap['id']}/"

    r = client.patch(url, json={"name": "keep-me", "protected": True}, headers=headers)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["name"], got["description"], got["protected"]) == ("keep-me", "old", True)
    assert got["origin"] == "manual" and got["status"] == "available"
    assert client.get(url, headers=headers).json()["protected"] is True

    # description: null clears it; the path without the slash answers the same.
    r = client.patch(url.rstrip("/"), json={"description": None}, headers=headers)
    assert r.status_code == 200 and r.json()["description"] is None
    assert r.json()["name"] == "keep-me"

    updated = _events(redis_client, "snapshot.updated")
    assert [json.loads(e["data"]) for e in updated] == [
        {"name": "keep-me", "protected": True}, {"description": None}
    ]
    assert {e["snapshot_id"] for e in updated} == {str(snap["id"])}


def test_protected_snapshot_is_not_deleted_and_counts_toward_the_limit(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snaps = []
    for i in range(5):
        snaps.append(api.snapshot(headers, server["id"], name=f"s{i}"))
        complete(store, snaps[-1]["operation_id"])
    first = f"/api/v1/snapshots/{snaps[0]['id']}/"
    assert client.patch(first, json={"protected": True}, headers=headers).status_code == 200

    r = client.delete(first, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "snapshot_protected"
    assert client.get(first, headers=headers).json()["status"] == "available"
    # Still counted: the limit is full.
    r = client.post("/api/v1/snapshots/", json={"server_id": server["id"], "name": "x"},
                    headers=headers)
    assert r.json()["error"]["code"] == "snapshot_limit_reached"
    # The server cannot be deleted with it either; nothing changed.
    r = client.delete(f"/api/v1/servers/{server['id']}/", headers=api.admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "snapshot_protected"
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=api.admin).status_code == 200
    listed = client.get(f"/api/v1/snapshots/?server_id={server['id']}", headers=headers).json()
    assert listed["meta"]["total"] == 5

    # Unprotected, it goes.
    assert client.patch(first, json={"protected": False}, headers=headers).status_code == 200
    assert client.delete(first, headers=headers).status_code == 204


def test_patch_errors_change_nothing(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"], name="nightly")
    url = f"/api/v1/snapshots/{snap['id']}/"
    cases = [
        ({}, "body: give at least one of name, description, protected"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"protected": "yes"}, "protected"),
        ({"origin": "schedule"}, "origin"),
        ({"description": "x" * 1001}, "description"),
    ]
    for body, field in cases:
        r = client.patch(url, json=body, headers=headers)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and err["message"].startswith(field), (body, err)
    json_type = {**headers, "content-type": "application/json"}
    r = client.patch(url, content=b"not json", headers=json_type)
    assert r.status_code == 400
    assert client.get(url, headers=headers).json()["name"] == "nightly"

    # Scope and tenancy.
    assert client.patch(url, json={"protected": True},
                        headers=api.headers("acme", "read")).status_code == 403
    other = client.patch(url, json={"protected": True}, headers=api.headers("globex"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert client.patch("/api/v1/snapshots/999/", json={"protected": True},
                        headers=headers).status_code == 404
    assert client.get(url, headers=headers).json()["protected"] is False
