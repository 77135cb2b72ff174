"""A worker killed mid-job (SIGKILL: a crash; SIGTERM: a deploy) loses nothing.

The message comes back (the broker requeues a dead worker's unacked messages once its
heartbeat is stale; an interrupted job is retried), the next worker takes the operation's
lease over and resumes: a capture does not store again what it stored (the objects present
at the kill keep their inodes, and the resumed capture's own count of newly written bytes
leaves them out), a restore leaves the old tree or the new one, never a mix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.store import Store
from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import Service, wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import (
    objects,
    restore_has_data,
    store_for,
    stored_bytes,
    tree_diff,
    unthrottle,
    wait_progress,
)


def _capture_interrupted(
    svc: Service,
    state: Path,
    sig: int,
    max_exit_s: float | None = None,
    group: bool = True,
    power: dict[str, str] | None = None,
    interrupt: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> dict[str, Any]:
    """Starts a capture of `state`, interrupts its worker with `sig` mid-way (or with
    `interrupt(worker)`), lets another worker finish it, and proves nothing stored before
    the interruption was stored again. Answers the server."""
    client = svc.client()
    server = add_server(client, str(state), power=power)
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "big",
                                            "stop_server": power is not None})
    assert resp.status_code == 201, resp.text
    snap_id, op_id = resp.json()["id"], resp.json()["operation_id"]
    wait_progress(client, snap_id)
    before = objects(svc.repository)
    assert before, "the capture had stored nothing yet"
    victim = svc.workers[0]
    svc.start_worker()  # "elsewhere": the job resumes on another worker process
    started = time.monotonic()
    if interrupt is not None:
        interrupt(victim)
    elif group:
        svc.kill(victim, sig)
    else:
        os.kill(victim.pid, sig)  # the main process only; it signals its children once
        victim.wait(timeout=60)
    took = time.monotonic() - started
    if max_exit_s is not None:
        assert took < max_exit_s, f"the worker took {took:.1f} s to exit"
    assert client.get(f"/snapshots/{snap_id}/").json()["status"] == "in_progress"
    unthrottle(svc)  # the interruption landed mid-job: the rest may run at full speed

    op = wait_operation(client, op_id, timeout=120)
    assert op["status"] == "succeeded", op
    assert store_for(svc).get_operation(op_id).attempts >= 2  # type: ignore[union-attr]
    after = objects(svc.repository)
    # What was stored before the interruption is still there, the very same files...
    assert {k: after.get(k) for k in before} == before
    # ...and the resumed capture wrote at most what was missing (plus its manifest, which
    # the engine counts in stored_bytes too).
    missing = sum(size for key, (_ino, size) in after.items() if key not in before)
    manifest = (svc.repository / "snapshots" / str(snap_id)).stat().st_size
    assert 0 < stored_bytes(svc, snap_id) <= missing + manifest
    assert sum(size for _ino, size in before.values()) > 0
    return server


def test_sigkill_mid_capture_resumes_and_restores_exactly(
    make_service: ServiceFactory, big_state: Path, tmp_path: Path
) -> None:
    svc = make_service().start(workers=1)
    reference = describe(big_state)
    _capture_interrupted(svc, big_state, signal.SIGKILL)

    client = svc.client()
    snap = client.get("/snapshots/").json()["snapshots"][0]
    assert snap["status"] == "available" and snap["progress"] == 100
    (big_state / "data0.bin").unlink()
    (big_state / "etc" / "app.conf").write_text("broken\n")
    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert not tree_diff(reference, describe(big_state))


def test_sigkill_mid_capture_of_a_big_file_resumes_and_restores_exactly(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    # A file of 64 MiB and more is read in fixed blocks by several threads (blocks/): the
    # worker dies with some of its blocks stored; the next stores only the others.
    state = tmp_path / "servers" / "vm"
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "hostname").write_text("vm-01\n")
    with (state / "disk.img").open("wb") as fh:
        for i in range(96):
            fh.write(os.urandom(1 << 20) if i % 8 else bytes(1 << 20))
        fh.truncate(112 << 20)  # a hole at the end
    reference = describe(state)
    svc = make_service().start(workers=1)
    _capture_interrupted(svc, state, signal.SIGKILL)
    client = svc.client()
    snap = client.get("/snapshots/").json()["snapshots"][0]
    (state / "disk.img").write_bytes(b"broken")
    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert not tree_diff(reference, describe(state))  # bytes, holes, metadata


def test_sigkill_mid_capture_with_stop_server_starts_it_again(
    make_service: ServiceFactory, big_state: Path, states: Path
) -> None:
    # The killed attempt stopped the server; the attempt that finishes starts it again.
    flag = states / "running"
    flag.touch()
    power = {"kind": "command", "stop": f"rm -f {flag}", "start": f"touch {flag}",
             "status": f"test -e {flag}"}
    svc = make_service().start(workers=1)
    server = _capture_interrupted(svc, big_state, signal.SIGKILL, power=power)
    assert flag.exists()
    assert svc.client().get(f"/servers/{server['id']}/").json()["status"] == "running"


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "main-process"])
def test_sigterm_mid_capture_exits_in_time_and_resumes_elsewhere(
    make_service: ServiceFactory, big_state: Path, group: bool
) -> None:
    # SIGTERM to the whole process group (Heroku signals every process of the dyno: a
    # Dramatiq worker process signalled twice exits at once, like a crash), or to the main
    # process only (systemd's KillMode=mixed: a graceful stop that interrupts the job,
    # which releases its lease and is retried). Either way the worker is gone within 30 s
    # and the capture continues on the other worker from what it had stored.
    # Dramatiq's back-off as in production (2-4 s): the other worker takes the interrupted
    # job up only after the signalled one has exited, so the test sees the snapshot still
    # in progress then (with the fault tests' 0.2 s it may finish the capture meanwhile).
    svc = make_service(SNAPSHOTS_RETRY_BACKOFF="2").start(workers=1)
    _capture_interrupted(svc, big_state, signal.SIGTERM, max_exit_s=30, group=group)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _operation_process(main: int) -> int | None:
    """The process a worker forked for its running operation: a child of a Dramatiq worker
    process (itself a child of the main process), with the same command line."""
    for worker in _children(main):
        for pid in _children(worker):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"dramatiq" in f.read():
                    return pid
    return None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # a zombie until reaped
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("victim", ["operation", "worker-process"])
def test_sigkill_of_the_operations_process_or_of_its_worker_process(
    make_service: ServiceFactory, big_state: Path, victim: str
) -> None:
    # Each capture runs in a process forked for it (workers/engine/forked.py). Killed alone
    # (the OOM killer's choice), it is a transient failure: the job is retried and resumes
    # from what was stored. Its Dramatiq worker process killed alone (the main process
    # lives on), it dies at once with it (no orphan goes on capturing while another worker
    # takes the operation over), and the capture resumes on the other worker.
    svc = make_service().start(workers=1)

    def interrupt(worker: subprocess.Popen[bytes]) -> None:
        child = wait_until(lambda: _operation_process(worker.pid), timeout=10,
                           what="the operation's process")
        if victim == "operation":
            os.kill(child, signal.SIGKILL)
        else:
            (parent,) = _children(worker.pid)
            os.kill(parent, signal.SIGKILL)
        wait_until(lambda: _gone(child), timeout=5, interval=0.01,
                   what="the operation's process to die")

    _capture_interrupted(svc, big_state, signal.SIGKILL, interrupt=interrupt)


def test_a_capture_deleted_mid_way_stops_its_process_and_commits_nothing(
    make_service: ServiceFactory, big_state: Path
) -> None:
    # The cancel check crosses into the operation's process: a delete of the snapshot
    # being captured stops the capture within seconds, not at the end of the tree (at
    # 10 MB/s the 120 MB take 12 s at least).
    svc = make_service(FAULT_TEST_MBPS="10").start(workers=1)
    client = svc.client()
    server = add_server(client, str(big_state))
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "doomed"})
    assert resp.status_code == 201, resp.text
    snap_id = resp.json()["id"]
    wait_progress(client, snap_id)
    child = _operation_process(svc.workers[0].pid)
    assert child is not None
    assert client.delete(f"/snapshots/{snap_id}/").status_code == 204
    wait_until(lambda: _gone(child), timeout=5, interval=0.05,
               what="the capture's process to stop")
    assert client.get(f"/snapshots/{snap_id}/").status_code == 404
    assert not (svc.repository / "snapshots" / str(snap_id)).exists()
    # the worker goes on: the next capture of the same server succeeds (its big files
    # gone first: at the throttle's 10 MB/s they would take 12 s, and prove nothing more)
    for f in big_state.glob("data*.bin"):
        f.unlink()
    assert snapshot(client, server["id"], name="after")["status"] == "available"


@pytest.mark.parametrize("path", ["staging", "patch"])
def test_sigkill_mid_restore_leaves_old_or_new_state_then_finishes(
    make_service: ServiceFactory, big_state: Path, tmp_path: Path, path: str
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    # A server the worker stops (a live one, power "none", is never patched in place).
    flag = tmp_path / "running"
    flag.touch()
    power = {"kind": "command", "stop": f"rm -f {flag}", "start": f"touch {flag}",
             "status": f"test -e {flag}"}
    server = add_server(client, str(big_state), power=power)
    new = describe(big_state)
    snap = snapshot(client, server["id"], name="before")
    # The current state differs in every big file, so the restore must write them all.
    for f in big_state.glob("data*.bin"):
        f.unlink()
    (big_state / "etc" / "app.conf").write_text("changed\n")
    (big_state / "added").write_text("created after the snapshot\n")
    if path == "staging":  # many entries differ: the tree is rebuilt beside and swapped in
        for i in range(40):
            (big_state / f"added-{i}").write_text("created after the snapshot\n")
    # else few entries differ: patched in place, the new files prepared beside first
    old = describe(big_state)

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    op_id = resp.json()["operation_id"]
    wait_until(lambda: restore_has_data(big_state), timeout=60, interval=0.01,
               what="the restore to write into its staging tree")
    svc.kill(svc.workers[0], signal.SIGKILL)
    work = ".big.restore-patch" if path == "patch" else f".big.restore-{snap['id']}"
    assert (big_state.parent / work).is_dir()  # the path the restore took

    # Between the kill and the next worker: the old tree or the new one, never a mix.
    now = describe(big_state)
    assert not tree_diff(old, now) or not tree_diff(new, now)
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "restoring"

    unthrottle(svc)  # the kill landed mid-restore: the rest may run at full speed
    svc.start_worker()
    op = wait_operation(client, op_id, timeout=120)
    assert op["status"] == "succeeded", op
    assert not tree_diff(new, describe(big_state))
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    # a live restore's old tree goes in the background (the worker's janitor), at once
    wait_until(lambda: not [p for p in big_state.parent.iterdir() if ".restore-" in p.name],
               timeout=30, what="the old tree to be removed")


def test_sigkill_mid_delete_finishes_and_reclaims(
    make_service: ServiceFactory, states: Path
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    state = states / "web"
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "keep.conf").write_text("kept by the first snapshot\n")
    server = add_server(client, str(state))
    keep = snapshot(client, server["id"], name="keep")
    (state / "gone.bin").write_bytes(b"x" * 3_000_000 + bytes(range(256)) * 4000)
    doomed = snapshot(client, server["id"], name="doomed")
    before = objects(svc.repository)

    # Stop the worker, then put the delete exactly where a worker killed in the middle of
    # it leaves it: operation running under a dead owner, manifest gone, data not swept.
    svc.kill(svc.workers[0], signal.SIGKILL)
    resp = client.delete(f"/snapshots/{doomed['id']}/")
    assert resp.status_code == 204, resp.text
    store = store_for(svc)
    op_id = max(store.active_operation_ids())
    code, _op = store.claim_operation(op_id, "dead-worker/1", "dead-worker", "hb:none", 3000)
    assert code == "ok"
    (svc.repository / "snapshots" / str(doomed["id"])).unlink()

    # A real worker started and SIGKILLed right as it picks the operation up.
    svc.start_worker()
    wait_until(lambda: _taken_over(store, op_id), timeout=30, interval=0.005,
               what="a worker to take the delete over")
    svc.kill(svc.workers[-1], signal.SIGKILL)

    svc.start_worker()
    op = wait_operation(client, op_id, timeout=60)
    assert op["status"] == "succeeded", op
    assert client.get(f"/snapshots/{doomed['id']}/").status_code == 404
    after = wait_until(
        lambda: (o := objects(svc.repository)) and len(o) < len(before) and o,
        timeout=30, what="the doomed snapshot's data to be reclaimed")
    assert set(after) < set(before)
    # The snapshot that was kept still restores exactly.
    (state / "etc" / "keep.conf").write_text("changed\n")
    resp = client.post(f"/snapshots/{keep['id']}/restore/")
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert (state / "etc" / "keep.conf").read_text() == "kept by the first snapshot\n"
    assert not (state / "gone.bin").exists()


def _taken_over(store: Store, op_id: int) -> bool:
    """A live worker claimed the operation from the dead owner (or already finished it)."""
    owner = store.redis.hget(f"operation:{op_id}", "owner_process")
    status = store.redis.hget(f"operation:{op_id}", "status")
    return status != "running" or (owner is not None and owner != "dead-worker")
