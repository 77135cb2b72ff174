"""GET /api/v1/hosts/ (admin) and the operation's host, against a real Redis."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from api.app import create_app
from shared.hosts import WORKERS_KEY, Heartbeat
from shared.settings import Settings
from shared.store import Store
from tests.conftest import ADMIN_TOKEN
from tests.support.api import ApiHelper
from tests.support.seaweed import ACCESS_KEY, REGION, S3_BUCKET, SECRET_KEY, SeaweedProcess

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _hosts(client: TestClient, api: ApiHelper) -> dict[str, dict[str, object]]:
    r = client.get("/api/v1/hosts", headers=api.admin)
    assert r.status_code == 200, r.text
    hosts = r.json()["hosts"]
    assert [h["name"] for h in hosts] == sorted(h["name"] for h in hosts)
    return {h.pop("name"): h for h in hosts}


def test_hosts_show_servers_workers_and_queued_work(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    assert _hosts(client, api) == {}
    a = api.server("acme", host="hv-a")
    b = api.server("acme", host="hv-b")
    api.server("globex", host="hv-b")
    Heartbeat(redis_client, "hv-a", "p1").beat()
    Heartbeat(redis_client, "hv-a", "p2").beat()
    # A worker started with a misspelt SNAPSHOTS_HOST: it shows, with no servers.
    Heartbeat(redis_client, "hv-bb", "p3").beat()
    # A host whose only worker died a minute ago: seen, but no live worker.
    redis_client.zadd(WORKERS_KEY, {"hv-b/p4": int(time.time() * 1000) - 60_000})

    h = api.headers("acme")
    snap_b = api.snapshot(h, b["id"])
    api.snapshot(h, a["id"])
    hosts = _hosts(client, api)
    assert set(hosts) == {"hv-a", "hv-b", "hv-bb"}
    assert TIME.match(str(hosts["hv-a"].pop("last_seen")))
    assert TIME.match(str(hosts["hv-b"].pop("last_seen")))
    assert hosts == {
        "hv-a": {"workers": 2, "servers": 1, "queued": 1},
        "hv-b": {"workers": 0, "servers": 2, "queued": 1},
        "hv-bb": {"workers": 1, "last_seen": hosts["hv-bb"]["last_seen"], "servers": 0,
                  "queued": 0},
    }
    # The operation names its host, for its owner too.
    op = client.get(f"/api/v1/operations/{snap_b['operation_id']}/", headers=h).json()
    assert op["status"] == "queued" and op["host"] == "hv-b"
    listed = client.get("/api/v1/operations/", headers=h).json()["operations"]
    assert {o["host"] for o in listed} == {"hv-a", "hv-b"}

    # A clean shutdown of hv-bb's worker: the host has no server, so it is gone at once.
    Heartbeat(redis_client, "hv-bb", "p3").leave()
    assert "hv-bb" not in _hosts(client, api)


def test_a_server_without_a_host_is_on_the_default_host(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis
) -> None:
    server = api.server("acme")
    snap = api.snapshot(api.headers("acme"), server["id"])
    assert _hosts(client, api) == {
        "default": {"workers": 0, "last_seen": None, "servers": 1, "queued": 1}}
    # An operation made before hosts existed has no host field: the default host's. A
    # server id left in the index without its record is not counted.
    redis_client.hdel(f"operation:{snap['operation_id']}", "host")
    redis_client.zadd("idx:servers:all", {"999": 999})
    assert _hosts(client, api) == {
        "default": {"workers": 0, "last_seen": None, "servers": 1, "queued": 1}}
    op = client.get(f"/api/v1/operations/{snap['operation_id']}/", headers=api.admin).json()
    assert op["host"] == "default"


def test_hosts_is_admin_only(client: TestClient, api: ApiHelper) -> None:
    r = client.get("/api/v1/hosts/", headers=api.headers("acme", "write"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_where_a_delete_runs_depends_on_the_repository(
    storage: str, settings: Settings, seaweed: SeaweedProcess, redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """file://: the repository is a directory of the server's host, so the delete is that
    host's (queue host.hv-b). s3://: it is shared, so any host's worker deletes (queue
    anyhost; "host": null; counted for no host), also a deleted server's snapshots."""
    if storage == "s3":
        settings = replace(settings, storage_url=f"s3://{S3_BUCKET}/hosts-delete",
                           aws_endpoint_url=seaweed.endpoint, aws_access_key_id=ACCESS_KEY,
                           aws_secret_access_key=SECRET_KEY, aws_region=REGION)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = ApiHelper(client, ADMIN_TOKEN, tmp_path / "servers")
        h = api.headers("acme")
        server = api.server("acme", host="hv-b")
        first = api.snapshot(h, server["id"])
        second = api.snapshot(h, api.server("acme", host="hv-b")["id"])
        # Its capture done (a server with an operation under way cannot be deleted).
        assert Store(redis_client, settings).complete_create(second["operation_id"], 1.0, [])
        assert client.delete(f"/api/v1/snapshots/{first['id']}/", headers=h).status_code == 204
        assert client.delete(f"/api/v1/servers/{second['server']['id']}/",
                             headers=api.admin).status_code == 204
        ops = client.get("/api/v1/operations/", headers=h).json()["operations"]
        deletes = [o for o in ops if o["type"] == "snapshot.delete"]
        assert {o["snapshot_id"] for o in deletes} == {first["id"], second["id"]}
        hosts = _hosts(client, api)
    anyhost = redis_client.llen("snapshots-dramatiq:anyhost")
    on_b = redis_client.llen("snapshots-dramatiq:host.hv-b")
    if storage == "file":
        assert {o["host"] for o in deletes} == {"hv-b"}
        assert (anyhost, on_b) == (0, 4)  # two captures, two deletes
        assert hosts["hv-b"]["queued"] == 2
    else:
        assert {o["host"] for o in deletes} == {None}
        assert (anyhost, on_b) == (2, 2)
        assert set(hosts) == {"hv-b"} and hosts["hv-b"]["queued"] == 0
