"""Servers (admin create/delete, everyone reads their own) and tokens."""

from __future__ import annotations

import re

import redis
from starlette.testclient import TestClient

from shared.store import Store
from tests.support.api import ApiHelper

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_create_server_answers_admin_view(client: TestClient, api: ApiHelper) -> None:
    body = {
        "name": "web-server-01",
        "account": "acme",
        "state": {"kind": "directory", "path": "/srv/web-server-01"},
        "power": {"kind": "command", "stop": "systemctl stop x", "start": "systemctl start x",
                  "status": "systemctl is-active x"},
        "host": "default",
    }
    r = client.post("/api/v1/servers/", json=body, headers=api.admin)
    assert r.status_code == 201, r.text
    got = r.json()
    assert TIME.match(got.pop("created_at"))
    sid = got.pop("id")
    assert got == {"name": "web-server-01", "status": "running", "schedule": None,
                   "hooks": None, **{k: body[k] for k in ("account", "state", "power", "host")}}
    assert r.headers["location"] == f"/api/v1/servers/{sid}/"
    mine = client.get(f"/api/v1/servers/{sid}/", headers=api.headers("acme", "read")).json()
    assert set(mine) == {"id", "name", "status", "created_at", "schedule"}


def test_power_kinds_and_default_host(client: TestClient, api: ApiHelper) -> None:
    for power in [{"kind": "none"}, {"kind": "systemd", "unit": "game@1.service"}]:
        body = {"name": "s", "account": "acme", "state": {"kind": "image", "path": "/dev/vdb"},
                "power": power}
        r = client.post("/api/v1/servers/", json=body, headers=api.admin)
        assert r.status_code == 201, r.text
        assert r.json()["power"] == power and r.json()["host"] == "default"


def test_delete_server(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    snap = api.snapshot(h, server["id"])
    path = f"/api/v1/servers/{server['id']}/"
    # Refused while its snapshot is being created.
    r = client.delete(path, headers=api.admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "server_invalid_state"
    store.begin_operation(snap["operation_id"])
    store.complete_create(snap["operation_id"], 1.0, [])
    assert client.delete(path, headers=api.admin).status_code == 204
    assert client.get(path, headers=h).status_code == 404
    assert client.get(path, headers=api.admin).status_code == 404
    assert client.get("/api/v1/snapshots/", headers=h).json()["meta"]["total"] == 0
    ops = client.get("/api/v1/operations/?status=queued", headers=h).json()["operations"]
    assert [(o["type"], o["snapshot_id"]) for o in ops] == [("snapshot.delete", snap["id"])]
    msgs = redis_client.hvals("snapshots-dramatiq:host.default.msgs")
    assert sum('"actor_name":"snapshot_delete"' in m for m in msgs) == 1
    assert client.delete(path, headers=api.admin).status_code == 404


def test_delete_server_refused_while_restoring(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    snap = api.snapshot(h, server["id"])
    store.begin_operation(snap["operation_id"])
    store.complete_create(snap["operation_id"], 1.0, [])
    assert client.post(f"/api/v1/snapshots/{snap['id']}/restore/", headers=h).status_code == 200
    r = client.delete(f"/api/v1/servers/{server['id']}/", headers=api.admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "server_invalid_state"


def test_token_scopes_roundtrip(client: TestClient, api: ApiHelper) -> None:
    for scope in ("read", "write", "admin"):
        r = client.post("/api/v1/tokens/", json={"account": "acme", "scope": scope},
                        headers=api.admin)
        assert r.status_code == 201
        assert r.headers["location"] == f"/api/v1/tokens/{r.json()['id']}/"
        assert TIME.match(r.json()["created_at"])
    assert client.delete("/api/v1/tokens/999/", headers=api.admin).status_code == 404


def test_tokens_list_newest_first_without_values_and_forgets_revoked(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    made = [client.post("/api/v1/tokens/", json={"account": acc, "scope": "read"},
                        headers=api.admin).json() for acc in ("acme", "globex", "acme")]
    # A token made before listings existed (no index entry) is listed too.
    sha = redis_client.get(f"token_id:{made[0]['id']}")
    assert isinstance(sha, str)
    redis_client.zrem("idx:tokens:all", sha)
    redis_client.delete("idx:tokens:built")
    r = client.get("/api/v1/tokens/", headers=api.admin)
    assert r.status_code == 200
    body = r.json()
    assert [t["id"] for t in body["tokens"]] == [m["id"] for m in reversed(made)]
    assert body["meta"]["total"] == 3
    assert all(set(t) == {"id", "account", "scope", "created_at"} for t in body["tokens"])
    assert not any(m["token"] in r.text for m in made)  # never a value
    only = client.get("/api/v1/tokens/?account=acme&limit=1", headers=api.admin).json()
    assert [t["id"] for t in only["tokens"]] == [made[2]["id"]]
    assert "account=acme" in only["links"]["next"]
    rest = client.get(only["links"]["next"], headers=api.admin).json()
    assert [t["id"] for t in rest["tokens"]] == [made[0]["id"]]

    assert client.delete(f"/api/v1/tokens/{made[1]['id']}/", headers=api.admin).status_code == 204
    ids = [t["id"] for t in client.get("/api/v1/tokens/", headers=api.admin).json()["tokens"]]
    assert ids == [made[2]["id"], made[0]["id"]]
    reader = {"Authorization": f"Bearer {made[2]['token']}"}
    assert client.get("/api/v1/tokens/", headers=reader).status_code == 403


def test_host_names_are_checked(client: TestClient, api: ApiHelper) -> None:
    # A host name is a queue's name: one spelling per host, nothing Dramatiq reads as a
    # suffix, so a bad one is refused at once rather than queueing where no worker listens.
    for host in ["HV-01", "hv 01", "-hv", "", "a" * 256, "hv/01"]:
        body = {"name": "s", "account": "acme", "state": {"kind": "image", "path": "/d"},
                "host": host}
        r = client.post("/api/v1/servers/", json=body, headers=api.admin)
        assert r.status_code == 400, (host, r.text)
        assert "host" in r.json()["error"]["message"]
    body["host"] = "hv-01.fra1_b"
    assert client.post("/api/v1/servers/", json=body, headers=api.admin).status_code == 201


def test_delete_server_refused_while_a_cancelled_job_still_owes_it_its_start(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    # A stop_server capture's snapshot deleted under it: its job is about to start the
    # server again (power_hold). Deleted meanwhile, the server's record was gone when the
    # job came to start it: the start was refused ("held by another operation"), and the
    # machine stayed stopped.
    server = api.server("acme")
    h = api.headers("acme")
    snap = api.snapshot(h, server["id"], stop_server=True)
    store.begin_operation(snap["operation_id"])
    store.note_server_stopped(snap["operation_id"], 60)
    assert client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=h).status_code == 204
    path = f"/api/v1/servers/{server['id']}/"
    r = client.delete(path, headers=api.admin)
    assert r.status_code == 400 and r.json()["error"]["code"] == "server_invalid_state", r.text
    assert "handed back" in r.json()["error"]["message"]
    store.set_server_power(server["id"], "running", held_by=snap["operation_id"])  # started
    assert client.delete(path, headers=api.admin).status_code == 204
