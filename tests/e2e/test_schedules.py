"""Schedules with real worker processes: a week of slots on an injected clock, checked
against a retention table computed by hand, and a `* * * * *` schedule that three worker
processes on two hosts run exactly once per slot (stream and webhooks say so); their
schedulers' clock is one the test steps past one slot at a time, so a slot is due without
waiting for it and no other slot comes meanwhile (steppedclock/sitecustomize.py)."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import redis

from shared.broker import enqueue_operation, make_broker
from shared.schemas import rfc3339
from shared.settings import Settings
from shared.store import Store
from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import Service, wait_until
from tests.events.receiver import Receiver
from tests.support.streams import of_type
from workers.scheduler import Scheduler

BERLIN = ZoneInfo("Europe/Berlin")
STEPPED_CLOCK = Path(__file__).resolve().parent / "steppedclock"  # see its sitecustomize.py
CLOCK_KEY = "test:scheduler-clock"  # the time the workers' schedulers read


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=BERLIN).timestamp()


class Clock:
    def __init__(self) -> None:
        self.at = 0.0

    def __call__(self) -> float:
        return self.at


# Twice a day (00:00 and 12:00 Berlin) from Thursday 2027-03-25, across the change to
# summer time on Sunday 03-28, with the workers "down" from Saturday 12:00 to Sunday 15:00
# (three slots missed: one make-up run, R6). Retention: last 1, daily 2, weekly 2. Two
# manual snapshots (one protected) sit beside them, so from R10 on the limit of 5 is full
# before each run and the scheduled snapshot retention drops is deleted *first*.
# (run, clock, scheduled snapshots kept after it (run numbers), rotated before it)
WEEK: list[tuple[str, tuple[int, ...], set[str], int]] = [
    ("R1", (2027, 3, 25, 0, 0, 2), {"R1"}, 0),
    ("R2", (2027, 3, 25, 12, 0, 2), {"R2"}, 0),                 # same day, same week
    ("R3", (2027, 3, 26, 0, 0, 2), {"R3", "R2"}, 0),            # R2: Thursday's newest
    ("R4", (2027, 3, 26, 12, 0, 2), {"R4", "R2"}, 0),
    ("R5", (2027, 3, 27, 0, 0, 2), {"R5", "R4"}, 0),            # R4: Friday's newest
    ("R6", (2027, 3, 28, 15, 0, 0), {"R6", "R5"}, 0),           # the make-up run
    ("R7", (2027, 3, 29, 0, 0, 2), {"R7", "R6"}, 0),            # week 13 begins: R6 = w12
    ("R8", (2027, 3, 29, 12, 0, 2), {"R8", "R6"}, 0),           # R6: Sunday's and w12's
    ("R9", (2027, 3, 30, 0, 0, 2), {"R9", "R8", "R6"}, 0),      # 2 manual + 3 = the limit
    ("R10", (2027, 3, 30, 12, 0, 2), {"R10", "R8", "R6"}, 1),   # R9 deleted before the run
    ("R11", (2027, 3, 31, 0, 0, 2), {"R11", "R10", "R6"}, 1),   # R8 deleted before
    ("R12", (2027, 3, 31, 12, 0, 2), {"R12", "R10", "R6"}, 1),  # R11 deleted before
]


def _settings(svc: Service) -> Settings:
    return Settings.from_env(svc.env)


def _scheduled(client: httpx.Client, server_id: int) -> dict[int, dict[str, Any]]:
    listed = client.get("/snapshots/", params={"server_id": server_id, "limit": 200}).json()
    return {s["id"]: s for s in listed["snapshots"] if s["origin"] == "schedule"}




def test_a_week_of_slots_keeps_what_the_table_says(tmp_path: Path) -> None:
    # The workers' own schedulers stay out of it: this test's scheduler owns the clock.
    with Service.running(tmp_path, workers=1, SNAPSHOTS_SCHEDULER_INTERVAL="3600") as svc:
        client = svc.client()
        state = tmp_path / "state"
        state.mkdir()
        (state / "data.txt").write_text("start\n")
        server = add_server(client, str(state))
        sid = server["id"]
        keeper = snapshot(client, sid, name="keep forever")
        assert client.patch(f"/snapshots/{keeper['id']}/",
                            json={"protected": True}).status_code == 200
        snapshot(client, sid, name="manual")
        r = client.put(f"/servers/{sid}/schedule/", json={
            "cron": "0 0,12 * * *", "timezone": "Europe/Berlin",
            "retention": {"last": 1, "daily": 2, "weekly": 2}})
        assert r.status_code == 200, r.text

        settings = _settings(svc)
        rclient = redis.Redis.from_url(svc.redis.url, decode_responses=True)
        store = Store(rclient, settings)
        broker = make_broker(settings)
        clock = Clock()

        def enqueue(op_type: str, op_id: int) -> None:  # as workers.actors.enqueue does
            op = store.get_operation(op_id)
            assert op is not None
            enqueue_operation(broker, op_type, op_id, op.host)

        sched = Scheduler(store, enqueue, settings, clock)
        names: dict[int, str] = {}
        for run, at, kept, rotated in WEEK:
            (state / "data.txt").write_text(f"{run}\n")
            clock.at = berlin(*at)
            [result] = sched.tick()
            assert result.run, result
            assert len(result.delete_operation_ids) == rotated, (run, result)
            assert sched.tick() == []  # one run per slot, however often it ticks
            names[result.snapshot_id or 0] = run
            op = wait_operation(client, result.operation_id or 0)
            assert op["status"] == "succeeded", (run, op)
            got = {names[i] for i in _scheduled(client, sid)}
            assert got == kept, (run, got, kept)
            if run == "R6":
                # After the make-up run the next slot is Monday 00:00 CEST (summer time).
                nxt = client.get(f"/servers/{sid}/schedule/").json()["next_run_at"]
                assert nxt == "2027-03-28T22:00:00Z"

        # Protect R10: now retention may drop nothing, the limit is full, the run fails.
        r10 = next(i for i, n in names.items() if n == "R10")
        assert client.patch(f"/snapshots/{r10}/", json={"protected": True}).status_code == 200
        clock.at = berlin(2027, 4, 1, 0, 0, 2)
        [refused] = sched.tick()
        assert (refused.run, refused.code) == (False, "snapshot_limit_reached")
        sched_view = client.get(f"/servers/{sid}/").json()["schedule"]
        assert sched_view["last_run"]["status"] == "failed"
        assert sched_view["last_run"]["error"]["code"] == "snapshot_limit_reached"
        assert {names[i] for i in _scheduled(client, sid)} == {"R12", "R10", "R6"}
        # The manual snapshots were never touched.
        others = client.get("/snapshots/", params={"server_id": sid}).json()["snapshots"]
        assert sorted(s["name"] for s in others if s["origin"] == "manual") == [
            "keep forever", "manual"]
        assert len(of_type(rclient, "schedule.run")) == len(WEEK)
        assert [e["data"]["code"] for e in of_type(rclient, "schedule.failed")] == [
            "snapshot_limit_reached"]
        # Every deleted scheduled snapshot's storage was reclaimed by its delete operation.
        deletes = client.get("/operations/", params={"server_id": sid, "limit": 200}).json()
        ops = [o for o in deletes["operations"] if o["type"] == "snapshot.delete"]
        assert len(ops) == len(WEEK) - 3
        for o in ops:
            assert wait_operation(client, o["id"])["status"] == "succeeded"
        rclient.close()


def test_every_minute_runs_exactly_once_per_slot_across_three_workers(tmp_path: Path) -> None:
    receiver = Receiver({}).start()
    # Each worker's scheduler reads the time from CLOCK_KEY, 0 (before every slot) until
    # the test steps it past the next slot of every schedule, then past the one after.
    path = os.pathsep.join(p for p in (str(STEPPED_CLOCK), os.environ.get("PYTHONPATH")) if p)
    env = {"SNAPSHOTS_SCHEDULER_INTERVAL": "0.2", "SCHEDULER_TEST_CLOCK": CLOCK_KEY,
           "PYTHONPATH": path}
    try:
        with Service.running(tmp_path, workers=0, **env) as svc:
            for host in ("a", "b", "a"):
                svc.start_worker(host=host)
            client = svc.client()
            rclient = redis.Redis.from_url(svc.redis.url, decode_responses=True)
            hook = client.post("/webhooks/", json={"account": "acme", "url": receiver.url + "/h"})
            assert hook.status_code == 201, hook.text
            ids = []
            for n, host in enumerate(("a", "b", "a")):
                state = tmp_path / f"state-{n}"
                state.mkdir()
                (state / "f").write_text(str(n))
                r = client.post("/servers/", json={
                    "name": f"s{n}", "account": "acme", "host": host,
                    "state": {"kind": "directory", "path": str(state)}})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
                r = client.put(f"/servers/{ids[-1]}/schedule/",
                               json={"cron": "* * * * *", "retention": {"last": 2}})
                assert r.status_code == 200, r.text

            def views() -> list[dict[str, Any]]:
                return [client.get(f"/servers/{i}/schedule/").json() for i in ids]

            # The next slots, a minute apart at most (the PUTs ran on the real clock).
            first = max(datetime.fromisoformat(v["next_run_at"]).timestamp() for v in views())
            for step, now in enumerate((first, first + 60), start=1):
                rclient.set(CLOCK_KEY, now)  # every slot up to `now` is due; none after it

                def all_ran(at: str = rfc3339(int(now)) or "") -> bool:
                    return all(v["last_run"] and v["last_run"]["at"] == at
                               and v["last_run"]["status"] == "succeeded" for v in views())

                wait_until(all_ran, timeout=30, interval=0.1, what=f"run {step} of every schedule")
            runs = of_type(rclient, "schedule.run")
            per_slot = Counter((e["server_id"], e["data"]["slot"]) for e in runs)
            assert len(per_slot) == 2 * len(ids) and max(per_slot.values()) == 1, per_slot
            assert {int(s) for s, _ in per_slot} == set(ids)
            for i in ids:
                assert len(_scheduled(client, i)) == 2
            assert not of_type(rclient, "schedule.failed")

            # Each run's event reaches the webhook (at least once; dedupe by event id).
            def delivered() -> set[str]:
                return {json.loads(h.body)["id"] for h in receiver.at("/h")
                        if h.headers.get("x-event-type") == "schedule.run"}

            wanted = {e["id"] for e in runs}
            wait_until(lambda: delivered() >= wanted, timeout=20,
                       what="schedule.run delivered to the webhook")
            rclient.close()
    finally:
        receiver.stop()
