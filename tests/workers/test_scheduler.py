"""The scheduler with a settable clock against the real Redis: claims, refusals, make-ups.

The capture itself is played by the store calls a worker makes (begin, complete or fail);
tests/e2e/test_schedules.py runs the same scheduler with real worker processes.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from starlette.testclient import TestClient

from shared.settings import Settings
from shared.store import Store
from tests.support.api import ApiHelper
from tests.support.streams import of_type
from workers.scheduler import RunResult, Scheduler

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=BERLIN).timestamp()


def _scheduler(store: Store, settings: Settings, clock: Clock) -> tuple[Scheduler, list[Any]]:
    sent: list[Any] = []
    return Scheduler(store, lambda t, i: sent.append((t, i)), settings, clock), sent


def _op(run: RunResult) -> int:
    assert run.operation_id is not None
    return run.operation_id


def _schedule(client: TestClient, api: ApiHelper, headers: dict[str, str], **body: Any) -> int:
    server = api.server("acme")
    payload = {"cron": "0 3 * * *", "timezone": "Europe/Berlin",
               "retention": {"last": 2}, **body}
    r = client.put(f"/api/v1/servers/{server['id']}/schedule/", json=payload, headers=headers)
    assert r.status_code == 200, r.text
    return int(server["id"])




def test_missed_slots_are_made_up_by_one_run(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings,
    redis_client: redis.Redis,
) -> None:
    headers = api.headers("acme")
    server_id = _schedule(client, api, headers)
    clock = Clock(berlin(2027, 3, 20, 12))  # long after the first slot: days were missed
    sched, sent = _scheduler(store, settings, clock)
    runs = sched.tick()
    assert [r.run for r in runs] == [True]
    assert sent == [("snapshot.create", runs[0].operation_id)]
    assert sched.tick() == []  # nothing more due: the next slot is tomorrow's
    got = client.get(f"/api/v1/servers/{server_id}/schedule/", headers=headers).json()
    assert got["next_run_at"] == "2027-03-21T02:00:00Z"  # 03:00 CET
    snap = client.get(f"/api/v1/snapshots/{runs[0].snapshot_id}/", headers=headers).json()
    assert snap["origin"] == "schedule" and snap["status"] == "in_progress"
    assert snap["name"] == "scheduled 2027-03-20 12:00 Europe/Berlin"
    assert len(of_type(redis_client, "schedule.run")) == 1


def test_a_slot_is_claimed_once_among_racing_schedulers(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings,
    redis_client: redis.Redis,
) -> None:
    headers = api.headers("acme")
    ids = [_schedule(client, api, headers) for _ in range(4)]
    clock = Clock(berlin(2027, 3, 20, 12))
    results: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def race() -> None:
        own = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
        sched, _ = _scheduler(Store(own, settings), settings, clock)
        barrier.wait()
        got = sched.tick()
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.server_id for r in results) == sorted(ids)
    assert all(r.run for r in results)
    runs = of_type(redis_client, "schedule.run")
    assert sorted(int(e["server_id"]) for e in runs) == sorted(ids)


def test_a_run_that_cannot_proceed_records_last_run_and_emits_schedule_failed(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings,
    redis_client: redis.Redis,
) -> None:
    headers = api.headers("acme")
    server_id = _schedule(client, api, headers)
    busy = api.snapshot(headers, server_id, name="manual, still running")
    clock = Clock(berlin(2027, 3, 20, 12))
    sched, sent = _scheduler(store, settings, clock)
    runs = sched.tick()
    assert [(r.run, r.code) for r in runs] == [(False, "server_invalid_state")]
    assert sent == []
    got = client.get(f"/api/v1/servers/{server_id}/", headers=headers).json()["schedule"]
    assert got["last_run"]["status"] == "failed"
    assert got["last_run"]["at"] == "2027-03-20T11:00:00Z"
    assert got["last_run"]["error"]["code"] == "server_invalid_state"
    assert got["last_run"]["snapshot_id"] is None
    assert got["next_run_at"] == "2027-03-21T02:00:00Z"  # the slot is spent, not retried
    failed = of_type(redis_client, "schedule.failed")
    assert [e["data"]["code"] for e in failed] == ["server_invalid_state"]

    # The manual snapshot fails; the next slot runs; its capture fails too: last_run says so.
    assert store.fail_operation(busy["operation_id"], "storage_full", "disk full")
    clock.at = berlin(2027, 3, 21, 3, 0, 5)
    [run] = sched.tick()
    assert run.run
    assert store.begin_operation(_op(run)) is not None
    assert store.fail_operation(_op(run), "storage_full", "The repository is full.")
    got = client.get(f"/api/v1/servers/{server_id}/schedule/", headers=headers).json()
    assert got["last_run"] == {
        "at": "2027-03-21T02:00:05Z", "status": "failed", "snapshot_id": run.snapshot_id,
        "error": {"code": "storage_full", "message": "The repository is full."},
    }
    assert [e["data"]["code"] for e in of_type(redis_client, "schedule.failed")] == [
        "server_invalid_state", "storage_full"]

    # A successful run: last_run succeeded with its snapshot.
    clock.at = berlin(2027, 3, 22, 3, 0, 1)
    [run] = sched.tick()
    assert store.begin_operation(_op(run)) is not None
    assert store.complete_scheduled(_op(run), 1.0, [], []) == []
    got = client.get(f"/api/v1/servers/{server_id}/schedule/", headers=headers).json()
    assert got["last_run"] == {"at": "2027-03-22T02:00:01Z", "status": "succeeded",
                               "snapshot_id": run.snapshot_id, "error": None}


def test_limit_full_of_manual_and_protected_snapshots_fails_the_run(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings,
    redis_client: redis.Redis,
) -> None:
    headers = api.headers("acme")
    server_id = _schedule(client, api, headers, retention={"last": 1})
    clock = Clock(berlin(2027, 3, 20, 12))
    sched, _ = _scheduler(store, settings, clock)
    [run] = sched.tick()
    assert store.begin_operation(_op(run)) is not None
    assert store.complete_scheduled(_op(run), 1.0, [], []) == []
    # The scheduled snapshot is protected; four manual ones fill the limit of 5.
    r = client.patch(f"/api/v1/snapshots/{run.snapshot_id}/", json={"protected": True},
                     headers=headers)
    assert r.status_code == 200
    for i in range(4):
        snap = api.snapshot(headers, server_id, name=f"manual-{i}")
        assert store.begin_operation(snap["operation_id"]) is not None
        assert store.complete_create(snap["operation_id"], 1.0, [])
    before = store.server_snapshots(server_id)
    clock.at = berlin(2027, 3, 21, 3, 0, 1)
    [refused] = sched.tick()
    assert (refused.run, refused.code) == (False, "snapshot_limit_reached")
    assert [s.id for s in store.server_snapshots(server_id)] == [s.id for s in before]
    last = client.get(f"/api/v1/servers/{server_id}/schedule/", headers=headers).json()
    assert last["last_run"]["error"]["code"] == "snapshot_limit_reached"
    assert "never deletes manual, safety or protected" in last["last_run"]["error"]["message"]
    assert of_type(redis_client, "schedule.failed")[-1]["data"]["code"] == (
        "snapshot_limit_reached")


def test_a_changed_schedule_is_not_run_on_its_old_plan(
    client: TestClient, api: ApiHelper, store: Store, settings: Settings,
) -> None:
    headers = api.headers("acme")
    server_id = _schedule(client, api, headers)
    server = store.get_server(server_id)
    assert server is not None and server.schedule_next is not None
    stale = {"server_id": server_id, "rev": server.schedule_rev, "slot": server.schedule_next,
             "next": server.schedule_next + 60, "at": server.schedule_next, "slot_at": "x",
             "name": "stale", "drop": [], "max": 5}
    r = client.put(f"/api/v1/servers/{server_id}/schedule/", headers=headers,
                   json={"cron": "0 3 * * *", "retention": {"daily": 1}})
    assert r.status_code == 200
    assert store.run_schedule(stale)["code"] == "claimed"
    assert client.delete(f"/api/v1/servers/{server_id}/schedule/",
                         headers=headers).status_code == 204
    assert store.run_schedule(stale)["code"] == "gone"
    assert store.due_schedules(10**12) == []


def test_the_default_clock_is_redis_s(store: Store, settings: Settings) -> None:
    import time

    sched = Scheduler(store, lambda t, i: None, settings)
    seconds, micros = store.redis.time()
    assert abs(sched.clock() - (int(seconds) + int(micros) / 1e6)) < 1
    assert abs(sched.clock() - time.time()) < 5  # the test's Redis runs on this machine


@pytest.mark.parametrize("storage_url", ["file:///srv/repo", "s3://snaps/fleet"])
def test_retentions_deletes_run_where_the_repository_is(
    storage_url: str, client: TestClient, api: ApiHelper, redis_client: redis.Redis,
    settings: Settings,
) -> None:
    """What a schedule's retention lets go is deleted on the server's host on file:// (its
    directory), on any host's worker on s3:// (host '*': shared storage), whether after
    a run commits (complete_create) or to make room at the limit (run_schedule)."""
    settings = replace(settings, storage_url=storage_url, max_per_server=2)
    store = Store(redis_client, settings)
    server_id = _schedule(client, api, api.headers("acme"), retention={"last": 1})
    clock = Clock(berlin(2027, 3, 20, 12))
    sched, _ = _scheduler(store, settings, clock)
    (first,) = sched.tick()
    assert store.complete_scheduled(_op(first), 1.0, [], []) == []
    clock.at += 86400
    (second,) = sched.tick()
    after_commit = store.complete_scheduled(_op(second), 1.0, [], [int(first.snapshot_id or 0)])
    assert after_commit is not None and len(after_commit) == 1
    clock.at += 86400
    (third,) = sched.tick()  # the first is gone: this one fills the limit of 2
    assert third.delete_operation_ids == []
    store.complete_scheduled(_op(third), 1.0, [], [])
    clock.at += 86400
    (fourth,) = sched.tick()  # at the limit: retention makes room before the run
    assert fourth.run and fourth.delete_operation_ids, fourth
    deletes = [*after_commit, *fourth.delete_operation_ids]
    expected = "*" if storage_url.startswith("s3://") else "default"
    assert {store.get_operation(i).host for i in deletes} == {expected}  # type: ignore[union-attr]
    assert {store.get_operation(i).server_id for i in deletes} == {server_id}  # type: ignore[union-attr]
