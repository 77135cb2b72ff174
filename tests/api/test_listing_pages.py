"""Whole pages of the snapshot list kept by listing version (api/views.py RowViews): a page
is answered as kept, with no per-record read in Redis, until something the listing shows
changes; every transition moves the version of its account's listings (and the
all-accounts one) and no other; a change made outside the scripts shows within PAGE_TTL.
Real Redis; the views' clock is the test's."""

from __future__ import annotations

from typing import Any

import msgspec
import redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

from api.views import PAGE_TTL, RowViews, snapshot_view
from shared import keys
from shared.scripts import PageIndex
from shared.store import Store
from tests.support.api import ApiHelper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _views(app: Starlette) -> RowViews:
    views: RowViews = app.state.services.snapshot_views
    return views


def _hgets(redis_client: redis.Redis, during: Any) -> tuple[Any, int]:
    """What ``during()`` answers and how many HGETs Redis ran meanwhile (scripts' too)."""
    redis_client.config_resetstat()
    answer = during()
    stats: dict[str, Any] = redis_client.info("commandstats")
    return answer, int(stats.get("cmdstat_hget", {}).get("calls", 0))


def _version(redis_client: redis.Redis, account: str | None) -> str | None:
    value = redis_client.get(keys.snapshot_listing_version(account))
    return None if value is None else str(value)


def test_a_kept_page_is_answered_until_the_listing_changes(
    app: Starlette, client: TestClient, api: ApiHelper, store: Store,
    redis_client: redis.Redis,
) -> None:
    clock = Clock()
    _views(app).clock = clock
    server = api.server("acme")
    headers = api.headers("acme", "read")
    snaps = [api.snapshot(api.headers("acme"), api.server("acme")["id"], name=f"s{i}")
             for i in range(3)]

    def listed() -> dict[int, dict[str, Any]]:
        r = client.get("/api/v1/snapshots/", headers=headers)
        assert r.status_code == 200, r.text
        return {s["id"]: s for s in r.json()["snapshots"]}

    first, reads = _hgets(redis_client, listed)
    assert set(first) == {s["id"] for s in snaps} and reads >= 3
    # Answered as kept: not one record read in Redis.
    again, reads = _hgets(redis_client, listed)
    assert again == first and reads == 0

    # A kept page with a next link answers the same bytes, the link included.
    paged = [client.get("/api/v1/snapshots/?limit=2", headers=headers) for _ in range(2)]
    assert paged[0].content == paged[1].content
    nxt = paged[0].json()["links"]["next"]
    assert nxt and "limit=2" in nxt and "cursor=" in nxt
    rest = client.get(nxt, headers=headers).json()
    assert [s["id"] for s in rest["snapshots"]] == [snaps[0]["id"]]

    # A transition shows in the very next list, without the clock moving.
    store.begin_operation(snaps[0]["operation_id"])
    store.report_progress(snaps[0]["operation_id"], 42)
    assert listed()[snaps[0]["id"]]["progress"] == 42
    made = api.snapshot(api.headers("acme"), server["id"], name="new")
    assert made["id"] in listed()
    assert client.delete(f"/api/v1/snapshots/{made['id']}/",
                         headers=api.headers("acme")).status_code == 204
    assert made["id"] not in listed()

    # Another account's change leaves this listing's kept page as it is.
    other = api.snapshot(api.headers("globex"), api.server("globex")["id"], name="theirs")
    store.begin_operation(other["operation_id"])
    store.report_progress(other["operation_id"], 7)
    kept, reads = _hgets(redis_client, listed)
    assert reads == 0 and other["id"] not in kept

    # A write as a process of a version before listing versions makes it (the hash and
    # its rev, no listing version): it shows once the kept page is PAGE_TTL old.
    redis_client.hset(f"snapshot:{snaps[1]['id']}", "name", "written-elsewhere")
    redis_client.hincrby(f"snapshot:{snaps[1]['id']}", "rev", 1)
    assert listed()[snaps[1]["id"]]["name"] == "s1"
    clock.now += PAGE_TTL
    assert listed()[snaps[1]["id"]]["name"] == "written-elsewhere"

    # The version key lost (an evicted or flushed key): read afresh, never the kept page.
    listed()
    for account in ("acme", None):
        redis_client.delete(keys.snapshot_listing_version(account))
    redis_client.hset(f"snapshot:{snaps[2]['id']}", "name", "after-the-loss")
    redis_client.hincrby(f"snapshot:{snaps[2]['id']}", "rev", 1)
    assert listed()[snaps[2]["id"]]["name"] == "after-the-loss"


def test_every_transition_moves_its_accounts_listing_version(
    client: TestClient, api: ApiHelper, store: Store, redis_client: redis.Redis,
) -> None:
    theirs = api.snapshot(api.headers("globex"), api.server("globex")["id"], name="theirs")
    write = api.headers("acme")
    server = api.server("acme")
    seen: list[tuple[str | None, str | None]] = []

    def moved(what: str) -> None:
        now = (_version(redis_client, "acme"), _version(redis_client, None))
        assert now[0] is not None and now[1] is not None, what
        if seen:
            assert int(now[0]) > int(seen[-1][0] or 0), f"{what}: acme's version did not move"
            assert int(now[1]) > int(seen[-1][1] or 0), f"{what}: the global one did not move"
        seen.append(now)

    snap = api.snapshot(write, server["id"], name="a")
    moved("create")
    store.begin_operation(snap["operation_id"])  # nothing listed changes (the operation's)
    store.report_progress(snap["operation_id"], 10)
    moved("progress")
    assert store.complete_create(snap["operation_id"], 2.0, [])
    moved("complete")
    r = client.patch(f"/api/v1/snapshots/{snap['id']}/", json={"name": "b", "protected": True},
                     headers=write)
    assert r.status_code == 200, r.text
    moved("rename and protect")
    r = client.patch(f"/api/v1/snapshots/{snap['id']}/", json={"description": None,
                                                               "protected": False},
                     headers=write)
    assert r.status_code == 200, r.text
    moved("clear description, unprotect")
    failing = api.snapshot(write, server["id"], name="c")
    moved("second create")
    store.begin_operation(failing["operation_id"])
    store.fail_operation(failing["operation_id"], "capture_failed", "disk on fire")
    moved("fail")
    assert client.delete(f"/api/v1/snapshots/{snap['id']}/", headers=write).status_code == 204
    moved("delete")

    # Another account's transitions move the global version only.
    before = _version(redis_client, "acme")
    store.begin_operation(theirs["operation_id"])
    store.report_progress(theirs["operation_id"], 5)
    assert _version(redis_client, "acme") == before
    assert int(_version(redis_client, None) or 0) > int(seen[-1][1] or 0)
    # A version that was lost starts again above every value it had (Redis's clock, us).
    redis_client.delete(keys.snapshot_listing_version("acme"))
    api.snapshot(write, api.server("acme")["id"], name="d")
    assert int(_version(redis_client, "acme") or 0) > int(before or 0)


def test_kept_pages_are_per_connection_bounded_and_only_with_revs() -> None:
    clock = Clock()
    views = RowViews(lambda row: b"{}", pages=2, clock=clock)
    items = msgspec.Raw(b"[]")

    def index(version: str, revs: list[str]) -> PageIndex:
        return PageIndex(members=[str(i) for i in range(len(revs))], revs=revs, total=1,
                         next_cursor=None, version=version)

    assert views.kept_page(("a",), generation=1) is None
    views.keep_page(("a",), index("7", ["1"]), items, generation=1)
    kept = views.kept_page(("a",), generation=1)
    assert kept is not None and kept.version == "7"
    # A page with a record without a rev, or read at no version, is not kept.
    views.keep_page(("b",), index("7", ["1", ""]), items, generation=1)
    views.keep_page(("c",), index("", ["1"]), items, generation=1)
    assert views.kept_page(("b",), 1) is None and views.kept_page(("c",), 1) is None
    # Bounded: the oldest goes first.
    views.keep_page(("d",), index("8", ["1"]), items, generation=1)
    views.keep_page(("e",), index("9", ["1"]), items, generation=1)
    assert views.kept_page(("a",), 1) is None and views.kept_page(("e",), 1) is not None
    # Expired after PAGE_TTL.
    clock.now += PAGE_TTL
    assert views.kept_page(("e",), 1) is None
    # A new connection to Redis (perhaps a Redis put back from older data) forgets them all.
    views.keep_page(("f",), index("10", ["1"]), items, generation=1)
    assert views.kept_page(("f",), generation=2) is None
    assert views.kept_page(("f",), generation=1) is None


def test_get_one_answers_the_snapshot_as_it_is_now(
    client: TestClient, api: ApiHelper, store: Store,
) -> None:
    """GET one renders through the views shared with the lists, by (id, rev): its bytes
    are those of the record as Redis holds it now, rendered afresh, after every change;
    another account's, a deleted and a missing snapshot answer 404 alike."""
    write = api.headers("acme")
    snap = api.snapshot(write, api.server("acme")["id"], name="a")
    url = f"/api/v1/snapshots/{snap['id']}/"

    def expected() -> bytes:
        rec = store.get_snapshot(snap["id"])
        assert rec is not None
        return msgspec.json.encode(snapshot_view(rec))

    def one() -> bytes:
        r = client.get(url, headers=write)
        assert r.status_code == 200, r.text
        return bytes(r.content)

    assert one() == expected() and one() == expected()  # rendered, then kept
    store.begin_operation(snap["operation_id"])
    store.report_progress(snap["operation_id"], 30)
    assert one() == expected() and b'"progress":30' in one()
    renamed = client.patch(url, json={"name": "b", "protected": True}, headers=write)
    assert renamed.status_code == 200
    assert one() == expected() and b'"name":"b"' in one()
    assert store.complete_create(snap["operation_id"], 1.5, [])
    assert one() == expected() and b'"status":"available"' in one()

    other = client.get(url, headers=api.headers("globex"))
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert client.get(url, headers=api.admin).content == one()  # admins see every account
    missing = client.get("/api/v1/snapshots/99999/", headers=write)
    assert missing.status_code == 404
    assert client.patch(url, json={"protected": False}, headers=write).status_code == 200
    assert client.delete(url, headers=write).status_code == 204
    gone = client.get(url, headers=write)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert gone.json()["error"]["message"] == other.json()["error"]["message"]
