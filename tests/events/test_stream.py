"""The SSE event stream against a live uvicorn: the public event types of every transition,
ids from the Redis stream and resuming with Last-Event-ID, keep-alives, account isolation,
the server filter, and that streams share one Redis reader per process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import redis
from starlette.testclient import TestClient

from api.eventhub import CLIENT_NAME
from shared.schemas import SnapshotCreate
from shared.store import Store
from tests.events.conftest import Live
from tests.events.sse import has, read

EVENTS = "/events/"


def _server(live: Live, tmp_path: Path, account: str, name: str = "web") -> dict[str, Any]:
    path = tmp_path / f"{account}-{name}"
    path.mkdir(parents=True, exist_ok=True)
    with live.client() as admin:
        r = admin.post("/servers/", json={
            "name": name, "account": account,
            "state": {"kind": "directory", "path": str(path)}, "power": {"kind": "none"},
        })
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _token(live: Live, account: str, scope: str = "write") -> str:
    return _token_and_id(live, account, scope)[0]


def _token_and_id(live: Live, account: str, scope: str) -> tuple[str, int]:
    with live.client() as admin:
        r = admin.post("/tokens/", json={"account": account, "scope": scope})
    assert r.status_code == 201, r.text
    return r.json()["token"], r.json()["id"]


def _snapshot(client: httpx.Client, server_id: int) -> dict[str, Any]:
    r = client.post("/snapshots/", json={"server_id": server_id, "name": "s"})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_transition_is_an_event(live: Live, store: Store, tmp_path: Path) -> None:
    server = _server(live, tmp_path, "acme")
    token = _token(live, "acme")
    with live.client(token) as c, c.stream("GET", EVENTS) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-request-id"]
        snap = _snapshot(c, server["id"])
        op = snap["operation_id"]
        store.begin_operation(op)
        store.report_progress(op, 40)
        store.complete_create(op, 1.5, [])
        got = read(resp, has("snapshot.available"))
        assert got.types == ["snapshot.created", "snapshot.progress", "snapshot.available"]
        created, progress, available = got.frames
        assert created.data["snapshot_id"] == snap["id"] and created.data["operation_id"] == op
        assert created.data["server_id"] == server["id"] and created.data["account"] == "acme"
        assert created.data["created_at"].endswith("Z")
        assert progress.data["data"] == {"progress": 40}
        assert available.data["data"]["size_mb"] == 1.5
        # Ids are the Redis stream's, increasing, and the same in the id: line and the body.
        assert all(f.id == f.data["id"] for f in got.frames)
        ids = [tuple(map(int, f.id.split("-"))) for f in got.frames]
        assert ids == sorted(ids)

        r = c.post(f"/snapshots/{snap['id']}/restore/")
        assert r.status_code == 200, r.text
        rop = r.json()["operation_id"]
        store.begin_operation(rop)
        store.report_progress(rop, 70)
        store.complete_restore(rop, "running")
        got = read(resp, has("restore.succeeded"))
        assert got.types == ["restore.started", "restore.progress", "restore.succeeded"]
        assert {f.data["operation_id"] for f in got.frames} == {rop}

        r = c.post(f"/snapshots/{snap['id']}/restore/")
        rop = r.json()["operation_id"]
        store.begin_operation(rop)
        store.fail_operation(rop, "restore_failed", "disk full")
        failed = _snapshot(c, server["id"])
        store.begin_operation(failed["operation_id"])
        store.fail_operation(failed["operation_id"], "capture_failed", "unreadable")
        assert c.delete(f"/snapshots/{snap['id']}/").status_code == 204
        got = read(resp, has("snapshot.deleted"))
        # Internal entries (operation.started, server.power, ...) never leave the service.
        assert got.types == ["restore.started", "restore.failed", "snapshot.created",
                             "snapshot.failed", "snapshot.deleted"]
        assert got.frames[1].data["data"] == {"code": "restore_failed", "message": "disk full"}


def test_accounts_see_only_their_own_and_admin_sees_all(
    live: Live, store: Store, tmp_path: Path
) -> None:
    a, b = _server(live, tmp_path, "acme"), _server(live, tmp_path, "globex")
    ta, tb = _token(live, "acme", "read"), _token(live, "globex")
    with live.client(ta) as ca, live.client(tb) as cb, live.client() as admin, \
            ca.stream("GET", EVENTS) as ra, admin.stream("GET", EVENTS) as rx:
        store.create_snapshot(
            account="acme", body=SnapshotCreate(server_id=a["id"], name="acme-snap")
        )
        _snapshot(cb, b["id"])
        got_admin = read(rx, lambda g: len(g.frames) >= 2)
        assert sorted(f.data["account"] for f in got_admin.frames) == ["acme", "globex"]
        # acme sees its one event and, while globex's passes by, only keep-alives.
        got_a = read(ra, lambda g: len(g.frames) >= 1 and len(g.comments) >= 2)
        assert [f.data["account"] for f in got_a.frames] == ["acme"]
        assert "keep-alive" in got_a.comments


def test_server_filter(live: Live, store: Store, tmp_path: Path) -> None:
    one, two = _server(live, tmp_path, "acme", "one"), _server(live, tmp_path, "acme", "two")
    token = _token(live, "acme")
    with live.client(token) as c, c.stream(
        "GET", EVENTS, params={"server_id": two["id"]}
    ) as resp:
        _snapshot(c, one["id"])
        _snapshot(c, two["id"])
        got = read(resp, has("snapshot.created"))
        assert [f.data["server_id"] for f in got.frames] == [two["id"]]
    with live.client(token) as c:
        r = c.get(EVENTS, params={"server_id": "abc"})
        assert r.status_code == 400
        assert "server_id" in r.json()["error"]["message"]


def test_last_event_id_resumes_after_that_event(live: Live, tmp_path: Path) -> None:
    server = _server(live, tmp_path, "acme")
    token = _token(live, "acme")
    with live.client(token) as c:
        with c.stream("GET", EVENTS) as resp:
            first = _snapshot(c, server["id"])
            got = read(resp, has("snapshot.created"))
        resume_from = got.frames[0].id
        # Missed while disconnected: a delete and a new snapshot.
        assert c.delete(f"/snapshots/{first['id']}/").status_code == 204
        second = _snapshot(c, server["id"])
        for headers, params in (({"Last-Event-ID": resume_from}, {}),
                                ({}, {"last_event_id": resume_from})):
            with c.stream("GET", EVENTS, headers=headers, params=params) as resp:
                got = read(resp, lambda g: len(g.frames) >= 2)
            assert got.types == ["snapshot.deleted", "snapshot.created"]
            assert got.frames[1].data["snapshot_id"] == second["id"]
        # Past Redis's 64-bit parts: the seq one made the resync's XRANGE fail (a 200 that
        # ended at once, the client back with the same id for ever), the ms one a stream
        # that waited for an id no event reaches.
        for bad in ("not-an-id", "1-18446744073709551616", "18446744073709551616-0"):
            r = c.get(EVENTS, headers={"Last-Event-ID": bad})
            assert r.status_code == 400, bad
            assert "Last-Event-ID" in r.json()["error"]["message"]


def test_auth_is_required(live: Live) -> None:
    r = httpx.get(f"{live.url}/api/v1/events/")
    assert r.status_code == 401


def _hub_connections(redis_client: redis.Redis) -> int:
    clients: list[dict[str, Any]] = redis_client.client_list()
    return sum(1 for c in clients if c.get("name") == CLIENT_NAME)


def test_streams_share_the_process_reader(live: Live, redis_client: redis.Redis) -> None:
    """Open streams hold no Redis connection of their own: the hub's reader (and its
    catch-up connection) serve them all, and a disconnect leaves the hub at once."""
    with live.client() as c:
        streams = [c.stream("GET", EVENTS) for _ in range(5)]
        responses = [s.__enter__() for s in streams]
        for resp in responses:
            read(resp, lambda g: bool(g.comments))  # connected and pumping
        assert 1 <= _hub_connections(redis_client) <= 2
        for s in streams:
            s.__exit__(None, None, None)
    assert _hub_connections(redis_client) <= 2


def test_a_stream_that_falls_behind_is_resynced_without_a_gap(
    live: Live, redis_client: redis.Redis
) -> None:
    """More events in one read than a stream may queue (events_queue is 5 here): its
    queue is dropped and it catches up from the Redis stream, every event once, in order."""
    with live.client() as c, c.stream("GET", EVENTS) as resp:
        read(resp, lambda g: bool(g.comments))
        with redis_client.pipeline(transaction=True) as pipe:  # one XREAD gets all 40
            for n in range(1, 41):
                pipe.xadd("events", {"type": "snapshot.progress", "account": "acme",
                                     "server_id": "1", "snapshot_id": "1", "operation_id": "1",
                                     "at": "1700000000", "data": f'{{"progress": {n}}}'})
            pipe.execute()
        got = read(resp, lambda g: len(g.frames) >= 40)
    assert [f.data["data"]["progress"] for f in got.frames] == list(range(1, 41))


def test_revoking_a_token_ends_its_streams(live: Live, client: TestClient) -> None:
    """Revoked through another web process (``client`` is a second app with its own token
    cache): this one's streams of the token end and its cache forgets it, within seconds."""
    token, token_id = _token_and_id(live, "acme", "read")
    with live.client(token) as c, c.stream("GET", EVENTS) as resp:
        read(resp, lambda g: bool(g.comments))
        assert c.get("/snapshots/").status_code == 200  # cached in the process now
        r = client.delete(f"/api/v1/tokens/{token_id}/", headers=live.admin)
        assert r.status_code == 204
        started = time.monotonic()
        got = read(resp, lambda g: "token revoked" in g.comments, timeout=5)
        assert "token revoked" in got.comments and time.monotonic() - started < 3
        # The stream is over (the server ended the response), and the token is refused.
        rest = read(resp, lambda g: False, timeout=5)  # returns only if the stream ended
        assert rest.frames == []
        assert c.get("/snapshots/").status_code == 401
