"""A capture whose operation ends while its job is between the pre and the post hook (its
snapshot deleted, the reaper's deadline): the server is freed, but no other operation
starts on it until the post hook has run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shared.schemas import Hooks, ServerCreate, ServerState, SnapshotCreate
from shared.scripts import TransitionRefused
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.jobs import Jobs
from workers.power import driver_for


def _wait(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), path


@pytest.mark.parametrize("how", ["deleted", "deadline"])
def test_no_operation_starts_on_the_server_before_an_ended_captures_post_hook_ran(
    store: Store, settings: Settings, tmp_path: Path, how: str
) -> None:
    # It started at once, and the post hook ("start the database", "thaw the filesystem")
    # ran in the middle of it (a restore replacing the state, say).
    state, pre, go, log = (tmp_path / n for n in ("state", "pre", "go", "post.log"))
    state.mkdir()
    (state / "db").write_text("rows\n")
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        hooks=Hooks(pre_snapshot=f"touch {pre}; while [ ! -e {go} ]; do sleep 0.02; done",
                    post_snapshot=f"echo post >> {log}")))
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    job = threading.Thread(target=jobs.run, args=(op_id,))
    job.start()
    _wait(pre)
    if how == "deleted":
        store.delete_snapshot(account=None, snapshot_id=snap_id)  # cancels it
    else:  # the reaper's deadline
        assert store.fail_operation(op_id, "deadline_exceeded", "too long",
                                    started_before=int(time.time()) + 60)
    with pytest.raises(TransitionRefused) as refused:
        store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id,
                                                                name="next"))
    assert refused.value.code == "server_invalid_state"
    assert refused.value.message == (
        f"Server {server_id} is still being handed back by operation {op_id} (its power put "
        "back, or its post_snapshot hook run); retry in a moment.")
    go.touch()
    job.join(timeout=30)
    assert not job.is_alive()
    assert log.read_text() == "post\n"
    assert not store.hook_pending(op_id)
    # the hold ended with the job: the server takes a new operation at once
    store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="next"))


def test_a_restore_ended_during_its_failing_safety_capture_frees_its_server(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    # The reaper ends a restore while its safety snapshot's pre hook runs; the hook then
    # fails (the restore fails with it): the hold its post hook needed ends with the job,
    # not a hook timeout + 30 s later.
    state, pre, go = (tmp_path / n for n in ("state", "pre", "go"))
    state.mkdir()
    (state / "db").write_text("rows\n")
    server_id = store.create_server(ServerCreate(
        name="db-01", account="acme", state=ServerState(kind="directory", path=str(state)),
        hooks=Hooks(pre_snapshot=f"touch {pre}; while [ ! -e {go} ]; do sleep 0.02; done; "
                                 f"test ! -e {go}.fail", post_snapshot="true")))
    jobs = Jobs(store, Engine(settings.storage_url), driver_for, max_attempts=5)
    go.touch()
    snap_id, create_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server_id, name="s"))
    jobs.run(create_id)
    assert store.get_snapshot(snap_id).status == "available"  # type: ignore[union-attr]
    go.unlink()
    pre.unlink()
    restore_id = store.start_restore(account=None, snapshot_id=snap_id, safety=True)
    job = threading.Thread(target=jobs.run, args=(restore_id,))
    job.start()
    _wait(pre)
    assert store.fail_operation(restore_id, "deadline_exceeded", "too long",
                                started_before=int(time.time()) + 60)
    (tmp_path / "go.fail").touch()
    go.touch()
    job.join(timeout=30)
    assert not job.is_alive()
    store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id, name="next"))
