"""A capture given up after too many attempts still runs the post hook its server is owed
(the last attempt was killed between the hooks), then ends worker_lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.schemas import Hooks, PowerCommand, ServerCreate, ServerState, SnapshotCreate
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.jobs import Jobs
from workers.power import driver_for


def test_given_up_capture_runs_the_owed_post_hook(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    state, log = tmp_path / "state", tmp_path / "hooks.log"
    state.mkdir()
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        hooks=Hooks(pre_snapshot=f"echo pre >> {log}",
                    post_snapshot=f'echo "post $SNAPSHOTS_CAPTURE" >> {log}')))
    _, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    # Five attempts were killed, the last one between its pre and its post hook.
    store.redis.hset(f"operation:{op_id}", "attempts", 5)
    store.set_hook_pending(op_id, True)

    Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5).run(op_id)
    op = store.get_operation(op_id)
    assert op is not None and op.status == "failed"
    assert op.error is not None and op.error.code == "worker_lost"
    assert log.read_text() == "post interrupted\n"
    assert op.hooks is not None and [h.hook for h in op.hooks] == ["post_snapshot"]
    assert not store.hook_pending(op_id)


def test_given_up_stop_server_capture_starts_the_server_again(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    # An earlier attempt stopped the server for the capture, then its worker died, as did
    # every one after: the give-up ended the operation and left the server stopped for good.
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    server_id = store.create_server(ServerCreate(
        name="game-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}")))
    _, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s", stop_server=True))
    store.note_server_stopped(op_id, 60)
    store.set_server_power(server_id, "stopped")
    store.redis.hset(f"operation:{op_id}", "attempts", 5)

    Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5).run(op_id)
    op = store.get_operation(op_id)
    assert op is not None and op.error is not None and op.error.code == "worker_lost"
    assert flag.exists()
    server = store.get_server(server_id)
    assert server is not None and server.status == "running"


def test_given_up_restore_puts_the_power_back_and_says_so(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    # Its attempts stopped the server and died: the give-up put the state back, and the
    # server's status back to its prior "running" while the server itself stayed stopped.
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="game-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}")))
    snapshot_id, create_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    store.begin_operation(create_id)
    store.complete_create(create_id, 1.0, [])
    op_id = store.start_restore(account=None, snapshot_id=snapshot_id)
    flag.unlink()  # stopped by an attempt that then died
    store.redis.hset(f"operation:{op_id}", "attempts", 5)

    Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5).run(op_id)
    op = store.get_operation(op_id)
    assert op is not None and op.error is not None and op.error.code == "worker_lost"
    assert flag.exists()
    server = store.get_server(server_id)
    assert server is not None and server.status == "running"


def test_a_restore_ended_under_it_leaves_the_power_to_the_next_operation(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reaper ends a restore at its deadline while the job still writes (freeing the
    # server), and another restore takes the server: the first job, finishing, started the
    # server under the second one's work.
    state, flag = tmp_path / "state", tmp_path / "running"
    state.mkdir()
    (state / "a.bin").write_bytes(b"a" * 300_000)
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="game-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}")))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    snapshot_id, create_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    jobs.run(create_id)
    (state / "a.bin").write_bytes(b"b" * 300_000)
    first = store.start_restore(account=None, snapshot_id=snapshot_id)
    taken: list[int] = []
    report = store.report_progress

    def reaped_then_taken(op_id: int, percent: int) -> None:
        if not taken:
            assert store.fail_operation(op_id, "deadline_exceeded", "too long", "stopped")
            taken.append(store.start_restore(account=None, snapshot_id=snapshot_id))
        report(op_id, percent)

    monkeypatch.setattr(store, "report_progress", reaped_then_taken)
    jobs.run(first)
    assert taken, "the restore reported no progress"
    assert not flag.exists()  # the second restore owns the server's power
    server = store.get_server(server_id)
    assert server is not None and server.status == "restoring"


def test_a_restore_failing_for_good_unexpectedly_puts_the_power_back(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    # The engine raised what no handler expects (here an OSError: the state's parent made
    # immutable, where neither a patch nor a rebuild can make its work directory) on the
    # last attempt: the operation ended internal_error with the server left stopped by the
    # restore, its status saying "running" (its prior one).
    parent, flag = tmp_path / "p", tmp_path / "running"
    state = parent / "state"
    state.mkdir(parents=True)
    for i in range(20):
        (state / f"f{i}").write_text(f"snapshot {i}\n")
    flag.touch()
    server_id = store.create_server(ServerCreate(
        name="game-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        power=PowerCommand(stop=f"rm -f {flag}", start=f"touch {flag}",
                           status=f"test -e {flag}")))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    snapshot_id, create_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    jobs.run(create_id)
    (state / "f1").write_text("changed since\n")
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode:
        pytest.skip("cannot make a directory immutable here (chattr +i)")
    try:
        op_id = store.start_restore(account=None, snapshot_id=snapshot_id)
        store.redis.hset(f"operation:{op_id}", "attempts", 4)  # this one is the last
        jobs.run(op_id)
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    op = store.get_operation(op_id)
    assert op is not None and op.error is not None and op.error.code == "internal_error"
    assert "Operation not permitted" in op.error.message
    assert (state / "f1").read_text() == "changed since\n"  # the state as it was
    assert flag.exists()  # started again, as it was before the restore
    server = store.get_server(server_id)
    assert server is not None and server.status == "running"
