"""Which scheduled snapshots a schedule keeps: restic's ``forget --keep-*`` rules.

Snapshots are taken newest first. Each rule (``last``, ``hourly``, ``daily``, ``weekly``,
``monthly``) has a count and a bucket: every snapshot for ``last``, else the local hour,
day, ISO week or month in the schedule's time zone. A snapshot whose bucket differs from
the one the rule last kept is kept by that rule, which then counts one down; a snapshot
that no rule keeps is dropped. As in restic, "the last 2 days" are the last two days that
*have* a snapshot, not the last two calendar days.

Only the schedule's own snapshots take part: manual, safety and protected ones are never
dropped, and never stand in for a scheduled one in a bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import datetime

from shared.cron import local
from shared.records import SnapshotRecord
from shared.schemas import Retention
from shared.store import Store

Bucket = Callable[[datetime, int], Hashable]

_BUCKETS: tuple[tuple[str, Bucket], ...] = (
    ("last", lambda t, snapshot_id: snapshot_id),
    ("hourly", lambda t, _: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t, _: (t.year, t.month, t.day)),
    ("weekly", lambda t, _: t.isocalendar()[:2]),
    ("monthly", lambda t, _: (t.year, t.month)),
)


def keep(times: Mapping[int, float], policy: Retention, zone_name: str) -> set[int]:
    """The ids (of ``times``: id -> epoch seconds) that ``policy`` keeps."""
    counts = {name: int(getattr(policy, name)) for name, _ in _BUCKETS}
    last_kept: dict[str, Hashable] = {}
    kept: set[int] = set()
    for snapshot_id in sorted(times, key=lambda i: (times[i], i), reverse=True):
        at = local(times[snapshot_id], zone_name)
        for name, bucket in _BUCKETS:
            if counts[name] <= 0:
                continue
            value = bucket(at, snapshot_id)
            if name not in last_kept or last_kept[name] != value:
                last_kept[name] = value
                counts[name] -= 1
                kept.add(snapshot_id)
    return kept


def run_time(snap: SnapshotRecord) -> float:
    """A scheduled snapshot's time for the rules: the moment its run was started."""
    return float(snap.scheduled_at if snap.scheduled_at is not None else snap.created_at)


def droppable(snap: SnapshotRecord) -> bool:
    return snap.origin == "schedule" and not snap.protected and not snap.deleted


def plan(
    snapshots: Iterable[SnapshotRecord],
    policy: Retention,
    zone_name: str,
    new: tuple[int, float],
    drop_failed: bool,
) -> list[int]:
    """The scheduled snapshots to drop once ``new`` (id, run time) exists, oldest first.

    ``new`` always stays. Failed scheduled snapshots are dropped too when ``drop_failed``
    (after a run that succeeded: its own record says the run is healthy again).
    """
    snaps = [s for s in snapshots if droppable(s) and s.id != new[0]]
    times = {s.id: run_time(s) for s in snaps if s.status == "available"}
    times[new[0]] = new[1]
    kept = keep(times, policy, zone_name)
    drop = [i for i in times if i not in kept and i != new[0]]
    if drop_failed:
        drop += [s.id for s in snaps if s.status == "failed"]
    return sorted(drop)


def retention_drop(store: Store, snapshot_id: int, server_id: int) -> list[int]:
    """For a scheduled snapshot about to become available: what its retention drops."""
    server = store.get_server(server_id)
    snap = store.get_snapshot(snapshot_id)
    if server is None or server.schedule is None or snap is None:
        return []
    return plan(
        store.server_snapshots(server_id), server.schedule.retention,
        server.schedule.timezone, new=(snap.id, run_time(snap)), drop_failed=True,
    )
