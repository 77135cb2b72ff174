"""The scheduler: starts each schedule's runs, exactly once per slot across the fleet.

A thread in every worker process (on every host) calls `Scheduler.tick` every
``SNAPSHOTS_SCHEDULER_INTERVAL`` seconds. A tick takes the servers whose next slot is due
(``schedules:due``), plans the run (the next slot after now, in the schedule's zone, and
what retention would drop once this run exists) and hands it to ``run_schedule.lua``,
whose compare-and-set on the schedule's revision and next slot lets exactly one caller
claim the slot; every other worker and host gets ``claimed`` and does nothing. Because the
new next slot is the first one after *now*, slots missed while no worker ran are made up by
this one run. The clock is Redis's (``Store.now``), so hosts whose clocks drift apart still
agree on when a slot is due; it is a parameter, so tests drive a week of slots in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from shared import cron
from shared.keys import SCHEDULES_DUE
from shared.records import ServerRecord
from shared.schemas import rfc3339
from shared.settings import Settings
from shared.store import Store
from workers import retention

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Enqueue = Callable[[str, int], None]


class RunResult(msgspec.Struct):
    server_id: int
    slot: int
    run: bool
    code: str | None = None
    snapshot_id: int | None = None
    operation_id: int | None = None
    delete_operation_ids: list[int] = msgspec.field(default_factory=list)


class Scheduler:
    def __init__(
        self, store: Store, enqueue: Enqueue, settings: Settings, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.settings = settings
        self.clock = clock if clock is not None else store.now

    def tick(self) -> list[RunResult]:
        """Claims and starts every due slot; answers the runs this caller claimed."""
        now = self.clock()
        out: list[RunResult] = []
        for server_id in self.store.due_schedules(now):
            try:
                done = self._run(server_id, now)
            except ValueError:
                # A schedule whose zone vanished from the system's tz database: leave it
                # for an operator (logged each tick), never take the other ones down.
                log.exception("schedule of server %s cannot be evaluated", server_id)
                continue
            if done is not None:
                out.append(done)
        return out

    def _run(self, server_id: int, now: float) -> RunResult | None:
        server = self.store.get_server(server_id)
        if server is None or server.schedule is None or server.schedule_next is None:
            self.store.redis.zrem(SCHEDULES_DUE, server_id)
            return None
        slot = server.schedule_next
        if slot > now:
            return None
        sched = server.schedule
        at = int(now)
        answer = self.store.run_schedule({
            "server_id": server.id,
            "rev": server.schedule_rev,
            "slot": slot,
            "next": cron.next_after(sched.cron, sched.timezone, now),
            "at": at,
            "slot_at": rfc3339(slot),
            "name": self.snapshot_name(server, at),
            "drop": self._rotation(server, at),
            "max": self.settings.max_per_server,
        })
        if not answer.get("ok"):
            return None  # claimed by another scheduler (or the schedule just went)
        result = msgspec.convert(
            {**answer, "server_id": server.id, "slot": slot}, RunResult, strict=False
        )
        if result.run and result.operation_id is not None:
            log.info("schedule of server %s: slot %s runs as snapshot %s",
                     server.id, rfc3339(slot), result.snapshot_id)
            for op_id in result.delete_operation_ids:
                self.enqueue("snapshot.delete", op_id)
            self.enqueue("snapshot.create", result.operation_id)
        else:
            log.warning("schedule of server %s: slot %s failed: %s",
                        server.id, rfc3339(slot), answer.get("message"))
        return result

    def _rotation(self, server: ServerRecord, at: int) -> list[int]:
        """What retention drops once this run exists: deleted first when at the limit."""
        assert server.schedule is not None
        snaps = self.store.server_snapshots(server.id)
        return retention.plan(snaps, server.schedule.retention, server.schedule.timezone,
                              new=(0, float(at)), drop_failed=False)

    @staticmethod
    def snapshot_name(server: ServerRecord, at: int) -> str:
        assert server.schedule is not None
        when = cron.local(at, server.schedule.timezone)
        return f"scheduled {when:%Y-%m-%d %H:%M} {server.schedule.timezone}"
