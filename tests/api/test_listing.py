"""Listings: newest first, filters, cursor pagination with total, trailing slashes."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from shared.settings import Settings, SettingsError
from shared.store import Store
from tests.support.api import ApiHelper


def make_snapshots(api: ApiHelper, store: Store, server_id: int, n: int) -> list[int]:
    headers = api.headers("acme")
    ids = []
    for i in range(n):
        snap = api.snapshot(headers, server_id, name=f"s{i}")
        store.begin_operation(snap["operation_id"])
        if i % 2:
            store.fail_operation(snap["operation_id"], "x", "y")  # failed do not count
        else:
            store.complete_create(snap["operation_id"], 1.0, [])
        ids.append(snap["id"])
    return ids


def test_pagination_with_cursor_and_total(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    ids = make_snapshots(api, store, server["id"], 9)
    headers = api.headers("acme", "read")
    seen: list[int] = []
    url: str | None = "/api/v1/snapshots/?limit=4"
    pages = 0
    while url:
        r = client.get(url, headers=headers)
        assert r.status_code == 200
        body = r.json()
        assert body["meta"]["total"] == 9
        seen += [s["id"] for s in body["snapshots"]]
        url = body["links"]["next"]
        if url:
            # A path on this service (no SNAPSHOTS_PUBLIC_URL here), keeping the limit.
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc and parts.path == "/api/v1/snapshots/"
            assert "limit=4" in parts.query
        pages += 1
    assert pages == 3
    assert seen == sorted(ids, reverse=True)


def test_filters(client: TestClient, api: ApiHelper, store: Store) -> None:
    one = api.server("acme")
    two = api.server("acme")
    make_snapshots(api, store, one["id"], 3)
    make_snapshots(api, store, two["id"], 2)
    h = api.headers("acme")
    by_server = client.get(f"/api/v1/snapshots/?server_id={two['id']}", headers=h).json()
    assert by_server["meta"]["total"] == 2
    assert {s["server"]["id"] for s in by_server["snapshots"]} == {two["id"]}
    failed = client.get("/api/v1/snapshots/?status=failed", headers=h).json()
    assert failed["meta"]["total"] == 2
    assert {s["status"] for s in failed["snapshots"]} == {"failed"}
    both = client.get(
        f"/api/v1/snapshots/?server_id={one['id']}&status=available&limit=1", headers=h
    ).json()
    assert both["meta"]["total"] == 2 and len(both["snapshots"]) == 1
    nxt = both["links"]["next"]
    assert nxt and f"server_id={one['id']}" in nxt and "status=available" in nxt
    ops = client.get(f"/api/v1/operations/?server_id={one['id']}&status=failed", headers=h).json()
    assert ops["meta"]["total"] == 1 and ops["operations"][0]["status"] == "failed"
    ops = client.get("/api/v1/operations/", headers=h).json()
    assert ops["meta"]["total"] == 5
    assert [o["id"] for o in ops["operations"]] == sorted(
        (o["id"] for o in ops["operations"]), reverse=True
    )
    assert ops["links"]["next"] is None


def test_another_accounts_server_filter_counts_nothing(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    # A page that showed none of another account's operations (a cursor past them, or a
    # status of which it had none on the page) still answered their count in meta.total:
    # account B learnt which server ids were A's and how many operations of each status
    # they had, at every moment. Now it is the answer of a server that does not exist.
    theirs = api.server("acme")
    make_snapshots(api, store, theirs["id"], 3)  # 3 operations: 2 succeeded, 1 failed
    mine = api.server("other")
    h = api.headers("other")
    nothing = {"operations": [], "meta": {"total": 0}, "links": {"next": None}}
    for query in ("", "&cursor=1", "&status=succeeded&cursor=1", "&status=failed&cursor=1",
                  "&status=succeeded", "&limit=1&cursor=2"):
        for server_id in (theirs["id"], 999_999):
            r = client.get(f"/api/v1/operations/?server_id={server_id}{query}", headers=h)
            assert r.status_code == 200 and r.json() == nothing, (server_id, query, r.text)
    # The account's own server, and an admin on any server, see theirs as before.
    api.snapshot(h, mine["id"])
    own = client.get(f"/api/v1/operations/?server_id={mine['id']}&cursor=1", headers=h).json()
    assert own["meta"]["total"] == 1 and own["operations"] == []
    admin = client.get(f"/api/v1/operations/?server_id={theirs['id']}&cursor=1",
                       headers=api.admin).json()
    assert admin["meta"]["total"] == 3


def test_empty_list_envelope(client: TestClient, api: ApiHelper) -> None:
    r = client.get("/api/v1/snapshots/", headers=api.headers("nobody"))
    assert r.json() == {"snapshots": [], "meta": {"total": 0}, "links": {"next": None}}


def test_paths_with_and_without_trailing_slash(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    h = api.headers("acme")
    for path in ["/api/v1/snapshots", "/api/v1/operations", "/api/v1/servers",
                 f"/api/v1/servers/{server['id']}", "/healthz", "/readyz",
                 "/api/v1/openapi.json"]:
        a = client.get(path, headers=h, follow_redirects=False)
        b = client.get(path + "/", headers=h, follow_redirects=False)
        assert a.status_code == b.status_code == 200, path
        assert a.content == b.content, path
    created = client.post(
        "/api/v1/snapshots", json={"server_id": server["id"], "name": "x"}, headers=h,
        follow_redirects=False,
    )
    assert created.status_code == 201
    sid = created.json()["id"]
    store.begin_operation(created.json()["operation_id"])
    store.complete_create(created.json()["operation_id"], 1.0, [])
    assert client.get(f"/api/v1/snapshots/{sid}", headers=h).status_code == 200
    r = client.post(f"/api/v1/snapshots/{sid}/restore", headers=h, follow_redirects=False)
    assert r.status_code == 200
    op = r.json()["operation_id"]
    assert client.get(f"/api/v1/operations/{op}", headers=h).status_code == 200
    store.begin_operation(op)
    store.complete_restore(op, "running")
    assert client.delete(f"/api/v1/snapshots/{sid}", headers=h).status_code == 204


def test_listing_survives_a_script_cache_flush(
    client: TestClient, api: ApiHelper, store: Store
) -> None:
    server = api.server("acme")
    make_snapshots(api, store, server["id"], 2)
    h = api.headers("acme")
    assert client.get("/api/v1/snapshots/", headers=h).json()["meta"]["total"] == 2
    store.redis.script_flush()  # as after a Redis restart without persistence of scripts
    assert client.get("/api/v1/snapshots/", headers=h).json()["meta"]["total"] == 2
    assert client.get("/api/v1/snapshots/", headers=h).json()["meta"]["total"] == 2


def test_next_link_never_comes_from_the_host_header(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings
) -> None:
    """A caller-chosen Host never makes it into a link (issue 9): paths by default,
    SNAPSHOTS_PUBLIC_URL when set."""
    server = api.server("acme")
    make_snapshots(api, store, server["id"], 3)
    headers = {**api.headers("acme", "read"), "Host": "evil.example"}
    r = client.get("/api/v1/snapshots/?limit=1", headers=headers)
    nxt = r.json()["links"]["next"]
    assert nxt.startswith("/api/v1/snapshots/?") and "evil" not in nxt
    r = client.get("/api/v1/operations/?limit=1", headers=headers)
    assert r.json()["links"]["next"].startswith("/api/v1/operations/?")

    public = dataclasses.replace(settings, public_url="https://snapshots.example.com")
    with TestClient(create_app(public)) as other:
        r = other.get("/api/v1/snapshots/?limit=1", headers=headers)
    nxt = r.json()["links"]["next"]
    assert nxt.startswith("https://snapshots.example.com/api/v1/snapshots/?limit=1&cursor=")
    assert "evil" not in nxt


def test_public_url_must_be_a_plain_http_url() -> None:
    base = {"SNAPSHOTS_DATA_DIR": "/tmp/x"}
    ok = Settings.from_env({**base, "SNAPSHOTS_PUBLIC_URL": "https://api.example.com/"})
    assert ok.public_url == "https://api.example.com"
    for bad in ("evil.example", "ftp://x.example", "https://x.example/?a=1", "https://"):
        with pytest.raises(SettingsError, match="SNAPSHOTS_PUBLIC_URL"):
            Settings.from_env({**base, "SNAPSHOTS_PUBLIC_URL": bad})
