"""The snapshot list renders each snapshot once per version (api/views.py RowViews), in a
real web process on a real Redis: every change a transition makes shows in the next list,
each item is byte for byte what GET one answers, records without a rev (written before
revs existed) and a Redis whose data changed under the same ids are listed as they are.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.views import PAGE_TTL
from shared.fastread import CLIENT_NAME as READS_NAME
from shared.scripts import LUA_DIR
from shared.settings import Settings
from shared.store import Store
from tests.e2e.service import Service, wait_until


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service.running(tmp_path_factory.mktemp("listing"), workers=0,
                         SNAPSHOTS_MAX_PER_SERVER="10") as svc:
        yield svc


def _store(svc: Service) -> Store:
    client = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    return Store(client, Settings(data_dir=svc.data_dir, storage_url="file:///unused",
                                  redis_url=svc.redis.url))


def _setup(svc: Service, tmp: Path, n: int) -> tuple[httpx.Client, list[dict[str, Any]]]:
    admin = svc.client()
    token = admin.post("/tokens/", json={"account": "acme", "scope": "write"}).json()["token"]
    user = svc.client(token)
    made = []
    for i in range(n):
        (tmp / f"s{i}").mkdir()
        srv = admin.post("/servers/", json={
            "name": f"srv-{i}", "account": "acme",
            "state": {"kind": "directory", "path": str(tmp / f"s{i}")}}).json()
        snap = user.post("/snapshots/", json={"server_id": srv["id"], "name": f"n{i}"})
        assert snap.status_code == 201, snap.text
        made.append(snap.json())
    return user, made


def _check_list_matches_get_one(user: httpx.Client) -> list[dict[str, Any]]:
    """The list, each of its items checked against GET one."""
    r = user.get("/snapshots/?limit=200")
    assert r.status_code == 200, r.text
    listed: list[dict[str, Any]] = r.json()["snapshots"]
    for item in listed:
        one = user.get(f"/snapshots/{item['id']}/")
        assert one.status_code == 200 and one.json() == item
    return listed


def test_every_transition_shows_in_the_next_list(web: Service, tmp_path: Path) -> None:
    user, made = _setup(web, tmp_path, 6)
    store = _store(web)
    by_id = {s["id"]: s for s in _check_list_matches_get_one(user)}  # every view now cached
    ids = [m["id"] for m in made]
    ops = [m["operation_id"] for m in made]
    assert set(ids) <= set(by_id)
    # One transition of each kind, each on its own snapshot.
    store.begin_operation(ops[0])
    store.report_progress(ops[0], 42)
    store.begin_operation(ops[1])
    assert store.complete_create(ops[1], 3.25, [])
    store.begin_operation(ops[2])
    store.fail_operation(ops[2], "capture_failed", "disk on fire")
    assert user.patch(f"/snapshots/{ids[3]}/", json={
        "name": "renamed", "description": "new words", "protected": True}).status_code == 200
    store.begin_operation(ops[4])
    assert store.complete_create(ops[4], 1.0, [])
    assert user.delete(f"/snapshots/{ids[4]}/").status_code == 204
    listed = {s["id"]: s for s in _check_list_matches_get_one(user)}
    assert listed[ids[0]]["progress"] == 42
    assert listed[ids[1]]["status"] == "available" and listed[ids[1]]["size_mb"] == 3.25
    assert listed[ids[2]]["status"] == "failed"
    assert listed[ids[2]]["error"]["message"] == "disk on fire"
    renamed = listed[ids[3]]
    assert (renamed["name"], renamed["description"], renamed["protected"]) == (
        "renamed", "new words", True)
    assert ids[4] not in listed
    assert listed[ids[5]] == by_id[ids[5]]  # untouched
    # The description cleared (an HDEL) shows too.
    assert user.patch(f"/snapshots/{ids[3]}/", json={"description": None}).status_code == 200
    assert {s["id"]: s for s in _check_list_matches_get_one(user)}[ids[3]]["description"] is None
    # Filters go through the same views.
    avail = user.get("/snapshots/?status=available").json()["snapshots"]
    assert [s["id"] for s in avail] == [ids[1]]
    store.redis.close()


def test_records_without_a_rev_and_data_replaced_under_the_same_ids(
    web: Service, tmp_path: Path
) -> None:
    user, made = _setup(web, tmp_path, 2)
    client = redis.Redis.from_url(web.redis.url, decode_responses=True)
    first = made[0]["id"]
    assert _check_list_matches_get_one(user)  # rendered and kept
    # A snapshot as written before revs existed: listed, and each change still shows; as
    # such a writer bumps no listing version either, within the kept page's PAGE_TTL.
    client.hdel(f"snapshot:{first}", "rev")
    client.hset(f"snapshot:{first}", "name", "written-by-an-older-version")
    time.sleep(PAGE_TTL)
    listed = {s["id"]: s for s in _check_list_matches_get_one(user)}
    assert listed[first]["name"] == "written-by-an-older-version"
    client.hset(f"snapshot:{first}", "name", "again")
    # A page holding a record without a rev is not kept: no wait this time.
    assert {s["id"]: s for s in _check_list_matches_get_one(user)}[first]["name"] == "again"
    # Contents replaced under the same id and rev (a Redis put back from an older copy of
    # its data): once the web process has reconnected, the list shows what is there now.
    second = made[1]["id"]
    rev = client.hget(f"snapshot:{second}", "rev")
    assert rev and _check_list_matches_get_one(user)
    client.hset(f"snapshot:{second}", mapping={"name": "replaced", "rev": rev})
    assert any(c.get("name") == READS_NAME for c in client.client_list())
    client.client_kill_filter(_type="normal", skipme=True)
    wait_until(lambda: user.get("/snapshots/").status_code == 200, what="the web process back")
    listed = {s["id"]: s for s in _check_list_matches_get_one(user)}
    assert listed[second]["name"] == "replaced"
    client.close()


_WRITE = re.compile(r"redis\.call\('(H[A-Z]+)',\s*([^,)]+)")


def test_no_script_writes_a_snapshot_hash_but_through_snap_hset() -> None:
    """The (id, rev) views are only as good as this: every write bumps rev."""
    for path in sorted(LUA_DIR.glob("*.lua")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.name}:{n}: {line.strip()}"
            if "local key = 'snapshot:' .. id" in line:  # the helpers themselves
                continue
            # No snapshot hash's key in a variable (which a raw write could then use) ...
            assert not re.search(r"local \w+ = 'snapshot:' \.\. [\w.]+\s*$", line), where
            # ... nor a raw hash write to one.
            for command, key in _WRITE.findall(line):
                if command not in ("HGET", "HGETALL", "HMGET", "HEXISTS", "HLEN"):
                    assert "snapshot:" not in key, where
