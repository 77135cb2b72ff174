"""The snapshot endpoints: exact bodies, listing, restore, delete, and refused transitions."""

from __future__ import annotations

import json
import re
from typing import Any

import redis
from starlette.testclient import TestClient

from shared.schemas import CREATE_MESSAGE, RESTORE_MESSAGE
from shared.store import Store
from tests.support.api import ApiHelper

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def complete(store: Store, op_id: int, size_mb: float = 12.5) -> None:
    """Play the worker's part of a create."""
    assert store.begin_operation(op_id) is not None
    assert store.complete_create(op_id, size_mb, [])


def test_create_answers_exact_201_body_and_location(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    server = api.server("acme", name="web-server-01")
    headers = api.headers("acme")
    body = {
        "server_id": server["id"],
        "name": "before-update-snapshot",
        "description": "Snapshot before system update",
        "stop_server": False,
    }
    r = client.post("/api/v1/snapshots/", json=body, headers=headers)
    assert r.status_code == 201, r.text
    got = r.json()
    assert TIME.match(got.pop("created_at"))
    assert isinstance(got.pop("id"), int)
    op_id = got.pop("operation_id")
    assert isinstance(op_id, int)
    assert got == {
        "server": {"id": server["id"], "name": "web-server-01"},
        "name": "before-update-snapshot",
        "description": "Snapshot before system update",
        "status": "in_progress",
        "size_mb": None,
        "progress": 0,
        "completed_at": None,
        "message": CREATE_MESSAGE,
        "error": None,
        "protected": False,
        "origin": "manual",
    }
    snap_id = r.json()["id"]
    assert r.headers["location"] == f"/api/v1/snapshots/{snap_id}/"
    assert r.headers["content-type"] == "application/json"
    # The worker got exactly one message for the operation.
    msgs = redis_client.hvals("snapshots-dramatiq:host.default.msgs")
    assert len(msgs) == 1 and f'"operation_id":{op_id}' in msgs[0]
    assert '"actor_name":"snapshot_create"' in msgs[0]
    # GET answers the same object.
    again = client.get(f"/api/v1/snapshots/{snap_id}/", headers=headers)
    assert again.status_code == 200 and again.json() == r.json()


def test_description_defaults_to_null(client: TestClient, api: ApiHelper) -> None:
    server = api.server("acme")
    snap = api.snapshot(api.headers("acme"), server["id"], name="x")
    assert snap["description"] is None


def test_unknown_server_is_404(client: TestClient, api: ApiHelper) -> None:
    r = client.post(
        "/api/v1/snapshots/", json={"server_id": 999, "name": "x"}, headers=api.headers("acme")
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_available_snapshot_view(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    complete(store, snap["operation_id"], 123.456)
    got = client.get(f"/api/v1/snapshots/{snap['id']}", headers=headers).json()
    assert got["status"] == "available"
    assert got["size_mb"] == 123.46
    assert got["progress"] == 100
    assert TIME.match(got["completed_at"])
    op = client.get(f"/api/v1/operations/{snap['operation_id']}/", headers=headers).json()
    assert op["status"] == "succeeded" and op["type"] == "snapshot.create"


def test_failed_snapshot_shows_error(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    store.begin_operation(snap["operation_id"])
    assert store.fail_operation(snap["operation_id"], "capture_failed", "disk went away")
    got = client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).json()
    assert got["status"] == "failed"
    assert got["error"] == {"code": "capture_failed", "message": "disk went away"}
    assert got["size_mb"] is None


def test_one_active_operation_per_server(client: TestClient, api: ApiHelper) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    api.snapshot(headers, server["id"])
    r = client.post(
        "/api/v1/snapshots/", json={"server_id": server["id"], "name": "b"}, headers=headers
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "server_invalid_state"


def test_snapshot_limit_reached_and_failed_do_not_count(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    # A failed one does not count toward the limit.
    failed = api.snapshot(headers, server["id"], name="f")
    store.begin_operation(failed["operation_id"])
    store.fail_operation(failed["operation_id"], "x", "y")
    for i in range(5):
        snap = api.snapshot(headers, server["id"], name=f"s{i}")
        complete(store, snap["operation_id"])
    r = client.post(
        "/api/v1/snapshots/", json={"server_id": server["id"], "name": "six"}, headers=headers
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "snapshot_limit_reached"
    # Deleting one frees a place at once.
    victim = client.get("/api/v1/snapshots/?status=available&limit=1", headers=headers).json()
    sid = victim["snapshots"][0]["id"]
    assert client.delete(f"/api/v1/snapshots/{sid}/", headers=headers).status_code == 204
    api.snapshot(headers, server["id"], name="six")


def test_restore_answers_exact_200_body(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    server = api.server("acme", name="web-server-01")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"], name="pre-migration-snapshot")
    complete(store, snap["operation_id"])
    r = client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=headers)
    assert r.status_code == 200, r.text
    got = r.json()
    op_id = got["operation_id"]
    assert got == {
        "status": "success",
        "message": RESTORE_MESSAGE,
        "snapshot": {
            "id": snap["id"],
            "name": "pre-migration-snapshot",
            "created_at": snap["created_at"],
        },
        "server": {"id": server["id"], "name": "web-server-01", "status": "restoring"},
        "operation_id": op_id,
    }
    assert list(got) == ["status", "message", "snapshot", "server", "operation_id"]
    srv = client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()
    assert srv["status"] == "restoring"
    op = store.get_operation(op_id)
    assert op is not None and op.type == "snapshot.restore" and op.start_after is None
    # While restoring: no create, no second restore, no delete of the source.
    r2 = client.post(
        "/api/v1/snapshots/", json={"server_id": server["id"], "name": "x"}, headers=headers
    )
    assert r2.json()["error"]["code"] == "server_invalid_state"
    r3 = client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=headers)
    assert r3.status_code == 400 and r3.json()["error"]["code"] == "server_invalid_state"
    r4 = client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers)
    assert r4.status_code == 400 and r4.json()["error"]["code"] == "snapshot_in_use"
    # The worker finishes: server back to a power state, delete allowed.
    store.begin_operation(op_id)
    assert store.complete_restore(op_id, "running")
    srv = client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()
    assert srv["status"] == "running"
    assert client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 204


def test_restore_start_after_is_recorded(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    complete(store, snap["operation_id"])
    r = client.post(
        f"/api/v1/snapshots/{snap['id']}/restore/", json={"start_after": True}, headers=headers
    )
    assert r.status_code == 200
    op = store.get_operation(r.json()["operation_id"])
    assert op is not None and op.start_after is True


def test_failed_restore_puts_prior_status_back(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    complete(store, snap["operation_id"])
    store.set_server_power(server["id"], "stopped")
    op_id = client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=headers).json()[
        "operation_id"
    ]
    store.set_server_power(server["id"], "running")  # never overrides restoring
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()["status"] == (
        "restoring"
    )
    store.begin_operation(op_id)
    assert store.fail_operation(op_id, "restore_failed", "boom")
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()["status"] == (
        "stopped"
    )
    op = client.get(f"/api/v1/operations/{op_id}/", headers=headers).json()
    assert op["status"] == "failed"
    assert op["error"] == {"code": "restore_failed", "message": "boom"}


def test_restore_of_unavailable_snapshot(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    r = client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "snapshot_not_available"
    store.begin_operation(snap["operation_id"])
    store.fail_operation(snap["operation_id"], "x", "y")
    r = client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=headers)
    assert r.json()["error"]["code"] == "snapshot_not_available"


def test_delete_in_progress_cancels_creation(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    r = client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers)
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 404
    listing = client.get("/api/v1/snapshots/", headers=headers).json()
    assert listing["snapshots"] == [] and listing["meta"]["total"] == 0
    assert store.is_cancelled(snap["operation_id"])
    assert store.begin_operation(snap["operation_id"]) is None
    assert not store.complete_create(snap["operation_id"], 1.0, [])
    # The server is free again, and a delete operation was queued for the worker.
    api.snapshot(headers, server["id"], name="again")
    ops = client.get("/api/v1/operations/?status=queued", headers=headers).json()["operations"]
    assert any(o["type"] == "snapshot.delete" and o["snapshot_id"] == snap["id"] for o in ops)
    msgs = redis_client.hvals("snapshots-dramatiq:host.default.msgs")
    assert any('"actor_name":"snapshot_delete"' in m for m in msgs)
    # Deleting twice: it is gone.
    assert client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 404


def test_delete_operation_completes(client: TestClient, api: ApiHelper, store: Store) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    complete(store, snap["operation_id"])
    client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers)
    op = client.get("/api/v1/operations/?limit=1", headers=headers).json()["operations"][0]
    assert op["type"] == "snapshot.delete"
    assert store.begin_operation(op["id"]) is not None
    assert store.complete_delete(op["id"])
    assert store.get_snapshot(snap["id"]) is None
    got = client.get(f"/api/v1/operations/{op['id']}/", headers=headers).json()
    assert got["status"] == "succeeded" and TIME.match(got["finished_at"])


def test_progress_is_monotonic_and_visible(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    snap = api.snapshot(headers, server["id"])
    op_id = snap["operation_id"]
    store.begin_operation(op_id)
    store.report_progress(op_id, 40)
    store.report_progress(op_id, 10)
    got = client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).json()
    assert got["progress"] == 40
    op = client.get(f"/api/v1/operations/{op_id}/", headers=headers).json()
    assert op["progress"] == 40 and op["status"] == "running" and TIME.match(op["started_at"])
    events: Any = redis_client.xrange("events")
    types = [fields["type"] for _, fields in events]
    assert types.count("snapshot.progress") == 1
    assert "snapshot.created" in types


def test_names_with_quotes_backslashes_and_emoji_round_trip(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    server = api.server("acme", name='srv "quoted" \\ 🚀')
    headers = api.headers("acme")
    name = 'snap "x" \\n \\ / 🚀 ünï'
    snap = api.snapshot(headers, server["id"], name=name, description="multi\nline\t✓")
    got = client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).json()
    assert got["name"] == name and got["description"] == "multi\nline\t✓"
    assert got["server"]["name"] == 'srv "quoted" \\ 🚀'
    events: Any = redis_client.xrange("events")
    created = [f for _, f in events if f["type"] == "snapshot.created"]
    assert json.loads(created[-1]["data"]) == {"name": name, "origin": "manual"}
