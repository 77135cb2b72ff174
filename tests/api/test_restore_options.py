"""Restore options at the API: into another server (a clone) and with a safety snapshot.

Every refusal answers its SPEC error and changes nothing (the Redis keys, the event stream
and the id counters stay as they were); the jobs themselves are in tests/e2e.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from shared.scripts import TransitionRefused
from shared.store import Store
from tests.api.test_errors import Unchanged
from tests.api.test_snapshots import complete
from tests.support.api import ApiHelper
from tests.support.streams import of_type


def _available(api: ApiHelper, store: Store, headers: dict[str, str], server_id: int,
               name: str = "snap") -> dict[str, Any]:
    snap = api.snapshot(headers, server_id, name=name)
    complete(store, snap["operation_id"])
    return snap


def _restore(client: TestClient, snap_id: int, headers: dict[str, str], **body: Any) -> Any:
    return client.post(f"/api/v1/snapshots/{snap_id}/restore/", json=body, headers=headers)


def test_clone_into_another_server(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    headers = api.headers("acme")
    source, target = api.server("acme", name="src"), api.server("acme", name="dst")
    snap = _available(api, store, headers, source["id"])
    r = _restore(client, snap["id"], headers, server_id=target["id"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["server"] == {"id": target["id"], "name": "dst", "status": "restoring"}
    assert body["snapshot"]["id"] == snap["id"]
    op = client.get(f"/api/v1/operations/{body['operation_id']}/", headers=headers).json()
    assert (op["server_id"], op["source_server_id"], op["snapshot_id"]) == (
        target["id"], source["id"], snap["id"])
    assert client.get(f"/api/v1/servers/{source['id']}/", headers=headers).json()[
        "status"] == "running"
    # Both servers' events say what happened.
    [started] = of_type(redis_client, "restore.started")
    assert started["server_id"] == str(target["id"])
    assert started["data"]["source_server_id"] == source["id"]
    [clone] = of_type(redis_client, "clone.started")
    assert clone["server_id"] == str(source["id"])
    assert clone["data"] == {"target_server_id": target["id"], "target_server_name": "dst"}
    # Done: the target ends as its power says; the source's events say so too.
    assert store.begin_operation(body["operation_id"]) is not None
    assert store.complete_restore(body["operation_id"], "running")
    [done] = of_type(redis_client, "clone.succeeded")
    assert (done["server_id"], done["data"]) == (str(source["id"]),
                                                 {"target_server_id": target["id"]})
    # Naming the snapshot's own server is a plain restore.
    r = _restore(client, snap["id"], headers, server_id=source["id"])
    assert r.status_code == 200 and r.json()["server"]["id"] == source["id"]
    op = client.get(f"/api/v1/operations/{r.json()['operation_id']}/", headers=headers).json()
    assert op["source_server_id"] is None
    assert len(of_type(redis_client, "clone.started")) == 1


def test_clone_refusals_change_nothing(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    headers = api.headers("acme")
    source = api.server("acme")
    snap = _available(api, store, headers, source["id"])
    theirs = api.server("globex")
    image = api.server("acme", state={"kind": "image", "path": "/srv/disk.img"})
    busy = api.server("acme")
    api.snapshot(headers, busy["id"])  # in progress: the server is busy
    cases: list[tuple[dict[str, Any], dict[str, str], int, str, str]] = [
        ({"server_id": theirs["id"]}, headers, 404, "not_found", "Server"),
        ({"server_id": 99999}, headers, 404, "not_found", "Server"),
        ({"server_id": theirs["id"]}, api.admin, 400, "invalid_request", "server_id: "),
        ({"server_id": image["id"]}, headers, 400, "invalid_request", "server_id: "),
        ({"server_id": busy["id"]}, headers, 400, "server_invalid_state", "Server"),
        ({"server_id": "two"}, headers, 400, "invalid_request", "server_id"),
        ({"server_id": 0}, headers, 400, "invalid_request", "server_id"),
        ({"safety_snapshot": "yes"}, headers, 400, "invalid_request", "safety_snapshot"),
    ]
    for body, who, status, code, starts in cases:
        with Unchanged(redis_client):
            r = _restore(client, snap["id"], who, **body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"].startswith(starts), (body, err)
    assert _restore(client, snap["id"], headers, server_id=image["id"]).json()["error"][
        "message"] == (f"server_id: server {image['id']} holds an image state; snapshot "
                       f"{snap['id']} is of a directory state.")


def test_safety_snapshot_counts_toward_the_limit_checked_at_the_request(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    headers = api.headers("acme")
    server = api.server("acme")
    snaps = [_available(api, store, headers, server["id"], f"s{i}") for i in range(4)]
    r = _restore(client, snaps[0]["id"], headers, safety_snapshot=True)
    assert r.status_code == 200, r.text
    op = client.get(f"/api/v1/operations/{r.json()['operation_id']}/", headers=headers).json()
    safety = client.get(f"/api/v1/snapshots/{op['safety_snapshot_id']}/", headers=headers).json()
    assert (safety["origin"], safety["status"], safety["operation_id"]) == (
        "safety", "in_progress", op["id"])
    assert safety["name"] == f"safety copy before the restore of snapshot {snaps[0]['id']}"
    # It cannot be deleted while its restore captures it; the restore can't be cancelled so.
    d = client.delete(f"/api/v1/snapshots/{safety['id']}/", headers=headers)
    assert d.status_code == 400 and d.json()["error"]["code"] == "snapshot_in_use"

    # The restore fails (say the capture failed): the safety snapshot fails with it.
    assert store.begin_operation(op["id"]) is not None
    assert store.fail_operation(op["id"], "storage_full", "The repository is full.")
    failed = client.get(f"/api/v1/snapshots/{safety['id']}/", headers=headers).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "storage_full"

    # Five now count (the failed one does not): a full limit refuses, nothing starts.
    _available(api, store, headers, server["id"], "s4")
    with Unchanged(redis_client):
        r = _restore(client, snaps[0]["id"], headers, safety_snapshot=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "snapshot_limit_reached"
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()[
        "status"] == "running"
    # Without a safety snapshot the same restore goes.
    assert _restore(client, snaps[0]["id"], headers).status_code == 200


def test_a_snapshot_two_clones_read_stays_in_use_until_both_end(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    headers = api.headers("acme")
    source, b, c = (api.server("acme") for _ in range(3))
    snap = _available(api, store, headers, source["id"])
    op_b = store.start_restore(account="acme", snapshot_id=snap["id"], target_id=b["id"])
    op_c = store.start_restore(account="acme", snapshot_id=snap["id"], target_id=c["id"])
    for op in (op_b, op_c):
        assert store.begin_operation(op) is not None
    assert store.complete_restore(op_b, "running")
    with pytest.raises(TransitionRefused) as refused:
        store.delete_snapshot(account="acme", snapshot_id=snap["id"])
    assert refused.value.code == "snapshot_in_use" and str(op_c) in refused.value.message
    assert store.fail_operation(op_c, "power_failed", "no")
    assert store.delete_snapshot(account="acme", snapshot_id=snap["id"]) > 0


def test_deleting_a_server_whose_snapshot_a_clone_reads_is_refused(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    # The server delete dropped every snapshot of the server without the reader check
    # that DELETE /snapshots/{id}/ makes: the clone's snapshot vanished mid-restore and
    # its storage was queued for reclaim, so the restore's retry had nothing to read.
    headers = api.headers("acme")
    source, target = api.server("acme", name="src"), api.server("acme", name="dst")
    snap = _available(api, store, headers, source["id"])
    r = _restore(client, snap["id"], headers, server_id=target["id"])
    assert r.status_code == 200, r.text
    op = r.json()["operation_id"]
    with Unchanged(redis_client):
        gone = client.delete(f"/api/v1/servers/{source['id']}/", headers=api.admin)
        assert gone.status_code == 400, gone.text
        assert gone.json()["error"]["code"] == "snapshot_in_use"
        assert str(op) in gone.json()["error"]["message"]
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 200
    # Once the clone ended, the server goes with its snapshots.
    assert store.begin_operation(op) is not None
    assert store.complete_restore(op, "running")
    assert client.delete(f"/api/v1/servers/{source['id']}/", headers=api.admin).status_code == 204
    assert client.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 404
