"""A restore's job settles the server's power under a hold (hold_server_power.lua), then
ends the operation: once a client sees the restore ended, the server takes the next
operation at once, never "still being handed back" (CI failed on that once: a restore
POSTed right after the previous one succeeded was refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.schemas import Hooks, PowerCommand, ServerCreate, ServerState, SnapshotCreate
from shared.scripts import TransitionRefused
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.jobs import Jobs
from workers.power import driver_for


def _server_with_snapshot(store: Store, settings: Settings, tmp_path: Path) -> tuple[int, Jobs]:
    state = tmp_path / "state"
    state.mkdir()
    (state / "data.txt").write_text("version 1\n")
    server_id = store.create_server(ServerCreate(
        name="app-01", account="acme", state=ServerState(kind="directory", path=str(state))))
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="v1"))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    jobs.run(op_id)
    assert store.get_snapshot(snap_id).status == "available"  # type: ignore[union-attr]
    return snap_id, jobs


def test_the_next_operation_starts_the_moment_a_restore_is_seen_succeeded(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap_id, jobs = _server_with_snapshot(store, settings, tmp_path)
    restore_id = store.start_restore(account=None, snapshot_id=snap_id)
    seen: list[str] = []
    complete = store.complete_restore

    def complete_then_ask_again(op_id: int, server_status: str) -> bool:
        # what a client's script does: it sees the restore succeed and restores again at
        # once, before the job has returned from its commit
        done = complete(op_id, server_status)
        assert store.get_operation(op_id).status == "succeeded"  # type: ignore[union-attr]
        seen.append(str(store.start_restore(account=None, snapshot_id=snap_id)))
        return done

    monkeypatch.setattr(store, "complete_restore", complete_then_ask_again)
    jobs.run(restore_id)
    assert len(seen) == 1  # refused before: "is still being handed back by operation …"


def test_a_failed_restore_ends_its_own_power_hold_but_not_when_the_reaper_fails_it(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    snap_id, _ = _server_with_snapshot(store, settings, tmp_path)
    server_id = store.get_snapshot(snap_id).server_id  # type: ignore[union-attr]
    own = store.start_restore(account=None, snapshot_id=snap_id)
    assert store.begin_operation(own) is not None
    assert store.hold_server_power(server_id, own, 60)
    # its job failed it after settling the power itself (power_failed)
    assert store.fail_operation(own, "power_failed", "did not start", server_status="stopped",
                                power_settled=True)
    reaped = store.start_restore(account=None, snapshot_id=snap_id)  # taken at once
    assert store.begin_operation(reaped) is not None
    assert store.hold_server_power(server_id, reaped, 60)
    # the reaper's deadline: the job may be starting the server right now; its hold stays
    assert store.fail_operation(reaped, "deadline_exceeded", "too long", server_status="stopped")
    assert store.redis.get(f"power_hold:{server_id}") in (str(reaped), str(reaped).encode())


def test_a_failed_stop_server_capture_has_started_the_server_when_it_is_seen_failed(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop_server capture whose pre hook fails: the job failed the operation, then started
    # the server again. A script that saw the snapshot fail and at once asked for another
    # snapshot took the server in between: the start was left to that operation (it held
    # the server), which found the server stopped and left it so: stopped for good.
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}"),
        hooks=Hooks(pre_snapshot="exit 3")))
    _, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s", stop_server=True))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    seen: list[tuple[bool, str | None]] = []
    fail = store.fail_operation

    def fail_then_ask_again(op_id: int, *args: Any, **kwargs: Any) -> bool:
        done = fail(op_id, *args, **kwargs)
        server = store.get_server(server_id)
        seen.append((flag.exists(), server.status if server else None))
        store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="t"))
        return done

    monkeypatch.setattr(store, "fail_operation", fail_then_ask_again)
    jobs.run(op_id)
    op = store.get_operation(op_id)
    assert op is not None and op.error is not None and op.error.code == "hook_failed"
    assert seen == [(True, "running")]  # before: (False, "stopped")
    assert flag.exists()  # before: left stopped


def test_a_stop_server_capture_deleted_under_it_starts_its_server_before_the_next_one(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop_server capture's snapshot is deleted while it is captured (the operation is
    # cancelled, the server freed) and the client at once asks for another snapshot of the
    # server: that one took the server before the first job started it again, the start
    # was left to it, and it found the server stopped and left it so, for good.
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    (state / "a.bin").write_bytes(b"a" * 300_000)
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}")))
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s", stop_server=True))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    refused: list[str] = []
    report = store.report_progress

    def deleted_then_asked_again(op: int, percent: int) -> None:
        if op == op_id and not refused:
            store.delete_snapshot(account=None, snapshot_id=snap_id)
            again = SnapshotCreate(server_id=server_id, name="t", stop_server=True)
            try:
                store.create_snapshot(account=None, body=again)
                refused.append("")
            except TransitionRefused as exc:  # held until the first job started it again
                refused.append(exc.code)
        report(op, percent)

    monkeypatch.setattr(store, "report_progress", deleted_then_asked_again)
    jobs.run(op_id)
    assert refused == ["server_invalid_state"]  # before: taken at once
    assert flag.exists()  # before: left stopped
    server = store.get_server(server_id)
    assert server is not None and server.status == "running"
    # and the hold ended with the start: the next snapshot starts at once
    store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="u"))


def test_a_stop_server_capture_whose_stop_fails_leaves_the_server_free(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    # It noted the server stopped before the stop, which failed: its own failure holds
    # nothing for a start it will never make (the next snapshot starts at once).
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop="exit 1", start=f"touch {flag}", status=f"test -e {flag}")))
    _, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s", stop_server=True))
    Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5).run(op_id)
    op = store.get_operation(op_id)
    assert op is not None and op.error is not None and op.error.code == "power_failed"
    store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="t"))


def test_the_reaper_ending_a_capture_that_stopped_its_server_holds_it_for_the_start(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state))))
    _, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s", stop_server=True))
    assert store.begin_operation(op_id) is not None
    store.note_server_stopped(op_id, 200)
    # the deadline: its job may be about to start the server again
    assert store.fail_operation(op_id, "deadline_exceeded", "too long")
    assert 150 < store.redis.ttl(f"power_hold:{server_id}") <= 200
    with pytest.raises(TransitionRefused, match="handed back"):
        store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="t"))
    store.set_server_power(server_id, "running", held_by=op_id)  # the job's start, done
    assert not store.server_stopped_by(op_id)
    store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="t"))
