"""The compare-and-set scripts behind leases, the reaper and catalog rebuild, one by one
(against the session's real redis-server; no processes are killed here)."""

from __future__ import annotations

import time
from pathlib import Path

from shared.schemas import PowerNone, ServerCreate, ServerState, SnapshotCreate
from shared.store import Store

HB = "test:heartbeats"


def _create(store: Store, tmp_path: Path) -> tuple[int, int, int]:
    server_id = store.create_server(ServerCreate(
        name="s", account="acme", state=ServerState(kind="directory", path=str(tmp_path)),
        power=PowerNone()))
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="n")
    )
    return server_id, snap_id, op_id


def _beat(store: Store, process: str, age_ms: int = 0) -> None:
    store.redis.zadd(HB, {process: int(time.time() * 1000) - age_ms})


def test_claim_is_refused_while_the_owner_lives_and_taken_over_when_it_died(
    store: Store, tmp_path: Path
) -> None:
    _server, _snap, op = _create(store, tmp_path)
    _beat(store, "a")
    code, rec = store.claim_operation(op, "a/1", "a", HB, 3000)
    assert code == "ok" and rec is not None and rec.attempts == 1 and rec.status == "running"
    assert store.claim_operation(op, "b/1", "b", HB, 3000) == ("busy", None)
    assert store.claim_operation(op, "a/2", "a", HB, 3000) == ("busy", None)  # other thread
    code, rec = store.claim_operation(op, "a/1", "a", HB, 3000)  # the owner itself: a retry
    assert code == "ok" and rec is not None and rec.attempts == 2
    _beat(store, "a", age_ms=10_000)  # a's heartbeat went stale: a is dead
    code, rec = store.claim_operation(op, "b/1", "b", HB, 3000)
    assert code == "ok" and rec is not None and rec.attempts == 3
    assert store.complete_create(op, 1.0, [])
    assert store.claim_operation(op, "c/1", "c", HB, 3000) == ("terminal", None)
    assert store.claim_operation(999, "c/1", "c", HB, 3000) == ("not_found", None)


def test_release_lets_a_retry_claim_at_once(store: Store, tmp_path: Path) -> None:
    _server, _snap, op = _create(store, tmp_path)
    _beat(store, "a")
    assert store.claim_operation(op, "a/1", "a", HB, 3000)[0] == "ok"
    assert not store.release_operation(op, "b/1")  # not b's to give back
    assert store.release_operation(op, "a/1")
    assert store.claim_operation(op, "b/1", "b", HB, 3000)[0] == "ok"


def test_mark_requeue_is_a_compare_and_set(store: Store, tmp_path: Path) -> None:
    _server, _snap, op = _create(store, tmp_path)
    assert not store.captures_active()  # queued, never claimed: it stored nothing yet
    assert store.mark_requeue(op, 3600, HB, 3000) is None  # queued, but only just
    assert store.mark_requeue(op, 0, HB, 3000) == ("snapshot.create", "default")
    assert store.mark_requeue(op, 1, HB, 3000) is None  # another reaper, same round
    key = f"operation:{op}"
    store.redis.hset(key, "requeued_at", int(store.redis.hget(key, "requeued_at") or 0) - 1)
    assert store.mark_requeue(op, 1, HB, 3000) is None  # the 2nd resend waits 2 s, not 1
    _beat(store, "a")
    store.claim_operation(op, "a/1", "a", HB, 3000)
    assert store.mark_requeue(op, 0, HB, 3000) is None  # running under a live owner
    _beat(store, "a", age_ms=10_000)
    assert store.mark_requeue(op, 0, HB, 3000) == ("snapshot.create", "default")  # its owner died
    assert store.active_operation_ids() == [op]
    assert store.captures_active()


def test_deadline_guard_fails_only_operations_started_before_it(
    store: Store, tmp_path: Path
) -> None:
    server, snap, op = _create(store, tmp_path)
    _beat(store, "a")
    store.claim_operation(op, "a/1", "a", HB, 3000)
    started = store.get_operation(op).started_at  # type: ignore[union-attr]
    assert started is not None
    assert not store.fail_operation(op, "deadline_exceeded", "late", started_before=started - 1)
    assert store.fail_operation(op, "deadline_exceeded", "late", started_before=started)
    record = store.get_snapshot(snap)
    assert record is not None and record.status == "failed"
    assert record.error is not None and record.error.code == "deadline_exceeded"
    assert store.get_server(server).active_op is None  # type: ignore[union-attr]


def test_rebuild_snapshot_is_idempotent_and_raises_counters(store: Store) -> None:
    payload = {
        "snapshot_id": 41, "server_id": 7, "server_name": "web", "account": "acme",
        "name": "n", "created_at": 1_700_000_000, "completed_at": 1_700_000_100,
        "size_mb": "1.50", "state_kind": "directory", "placeholder_path": "/.x/server-7",
    }
    assert store.rebuild_snapshot(payload) == {"ok": True, "snapshot": True, "server": True}
    assert store.rebuild_snapshot(payload) == {"ok": True, "snapshot": False, "server": False}
    snap = store.get_snapshot(41)
    assert snap is not None and snap.status == "available" and snap.size_mb == 1.5
    server = store.get_server(7)
    assert server is not None and server.status == "stopped" and server.state.path == "/.x/server-7"
    assert int(store.redis.get("seq:snapshot") or 0) == 41
    assert int(store.redis.get("seq:server") or 0) == 7
    assert store.list_snapshots(account="acme").total == 1
