"""The reaper (workers/reaper.py, a thread in every worker process) ends what would stay
stuck: an operation whose message never left the web process, one whose worker died more
times than it may be retried, and one that runs past SNAPSHOTS_OPERATION_DEADLINE."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from shared.broker import HEARTBEATS_KEY
from shared.hosts import DEFAULT_HOST, live_workers
from shared.schemas import SnapshotCreate
from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import wait_until
from tests.engine.test_crash import spawn
from tests.engine.test_patch import die_at_rename
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import events, store_for
from workers.actors import MAX_ATTEMPTS


def _small_state(states: Path, name: str) -> Path:
    state = states / name
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "app.conf").write_text(f"{name}\n" * 100)
    return state


def test_state_written_but_never_enqueued_is_finished_by_the_reaper(
    make_service: ServiceFactory, states: Path
) -> None:
    # The web process's crash window, made deterministic: the create's state is written
    # (the Lua script the API runs) and the process dies before it enqueues. Two workers,
    # so two reapers race for it: the compare-and-set lets one message through per round.
    svc = make_service().start(workers=2)
    client = svc.client()
    server = add_server(client, str(_small_state(states, "web")))
    store = store_for(svc)
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server["id"], name="never-enqueued")
    )
    op = wait_operation(client, op_id, timeout=60)
    assert op["status"] == "succeeded", op
    assert store.get_operation(op_id).attempts == 1  # type: ignore[union-attr]
    assert client.get(f"/snapshots/{snap_id}/").json()["status"] == "available"
    assert events(svc, "snapshot.available", snap_id) == 1


def test_web_sigkilled_during_creates_leaves_nothing_stuck(
    make_service: ServiceFactory, states: Path
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    servers = [add_server(client, str(_small_state(states, f"s{i}")), name=f"s{i}")
               for i in range(8)]
    answered: list[int] = []

    def create(server_id: int) -> None:
        try:
            with svc.client() as c:
                if c.post("/snapshots/", json={"server_id": server_id, "name": "x"}).status_code:
                    answered.append(server_id)
        except httpx.HTTPError:
            pass  # the web process died under this request

    threads = [threading.Thread(target=create, args=(s["id"],)) for s in servers]
    for t in threads:
        t.start()
    assert svc.web is not None
    svc.kill(svc.web, signal.SIGKILL)
    for t in threads:
        t.join()
    svc.start_web()

    # Whatever the kill interrupted, every snapshot that exists gets to an end.
    store = store_for(svc)
    page = store.list_snapshots(account=None, limit=200)
    for snap in page.items:
        assert snap.operation_id is not None
        op = wait_operation(client, snap.operation_id, timeout=60)
        assert op["status"] == "succeeded", op
    assert store.active_operation_ids() == []


def test_operation_whose_worker_died_too_often_ends_worker_lost(
    make_service: ServiceFactory, states: Path
) -> None:
    svc = make_service().start(workers=0)
    client = svc.client()
    server = add_server(client, str(_small_state(states, "web")))
    store = store_for(svc)
    snap_id, op_id = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=server["id"], name="doomed")
    )
    # Every allowed attempt was claimed by a worker that then died (no heartbeat).
    for i in range(MAX_ATTEMPTS):
        code, _ = store.claim_operation(op_id, f"dead{i}/1", f"dead{i}", HEARTBEATS_KEY, 3000)
        assert code == "ok"
    svc.start_worker()  # its reaper sends the message again; the claim sees the count
    op = wait_operation(client, op_id, timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "worker_lost", op
    snap = client.get(f"/snapshots/{snap_id}/").json()
    assert snap["status"] == "failed" and snap["error"]["code"] == "worker_lost", snap
    # The server is free again: a new snapshot can be taken.
    assert snapshot(client, server["id"], name="after")["status"] == "available"


def test_operations_past_their_deadline_end_failed_with_truthful_status(
    make_service: ServiceFactory, states: Path
) -> None:
    svc = make_service(SNAPSHOTS_OPERATION_DEADLINE="4").start(workers=1)
    client = svc.client()
    flag = states / "running"
    flag.touch()
    # A server whose stop command hangs: the job stays in `running` until the reaper.
    power = {"kind": "command", "stop": "sleep 600", "start": f"touch {flag}",
             "status": f"test -e {flag}"}
    state = _small_state(states, "web")
    server = add_server(client, str(state), power=power)
    snap = snapshot(client, server["id"], name="good")
    before = (state / "etc" / "app.conf").read_text()

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    op = wait_operation(client, resp.json()["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "deadline_exceeded", op
    assert "deadline" in op["error"]["message"]
    # The server is out of `restoring`, in the status its driver reports; its state as it was.
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    assert (state / "etc" / "app.conf").read_text() == before
    assert client.get(f"/snapshots/{snap['id']}/").json()["status"] == "available"

    # A capture that stops the server (and hangs there) ends failed the same way.
    other = add_server(client, str(_small_state(states, "other")), power=power, name="other")
    svc.start_worker()  # the first worker's threads may both be stuck in `sleep 600`
    resp = client.post("/snapshots/", json={"server_id": other["id"], "name": "stuck",
                                            "stop_server": True})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    op = wait_operation(client, created["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "deadline_exceeded", op
    stuck = client.get(f"/snapshots/{created['id']}/").json()
    assert stuck["status"] == "failed" and stuck["error"]["code"] == "deadline_exceeded"
    wait_until(lambda: store_for(svc).get_server(other["id"]).active_op is None,  # type: ignore[union-attr]
               timeout=10, what="the server to be released")


def test_restore_whose_worker_died_too_often_puts_the_state_back(
    make_service: ServiceFactory, states: Path
) -> None:
    # A patch restore (few entries differ) killed while applying its renames leaves a mix
    # and an undo journal; when the operation is given up, the worker undoes it at once,
    # so the server does not start on half a restore.
    svc = make_service().start(workers=1)
    client = svc.client()
    state = _small_state(states, "web")
    for i in range(30):
        (state / "etc" / f"f{i:02}.conf").write_text(f"{i}\n" * 100)
    server = add_server(client, str(state))
    snap = snapshot(client, server["id"], name="before")
    assert svc.workers
    svc.kill(svc.workers[0], signal.SIGKILL)
    for i in range(3):
        (state / "etc" / f"f{i:02}.conf").write_text("changed since the snapshot\n")
    old = describe(state)
    proc = spawn(die_at_rename(3) + f"""
from workers.engine import Engine
from tests.engine.conftest import dir_state
Engine("file://{svc.repository}").restore({snap["id"]}, dir_state({str(state)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    assert describe(state) != old  # a mix, with the undo journal beside it

    store = store_for(svc)
    op_id = store.start_restore(account=None, snapshot_id=snap["id"])
    for i in range(MAX_ATTEMPTS):
        code, _ = store.claim_operation(op_id, f"dead{i}/1", f"dead{i}", HEARTBEATS_KEY, 3000)
        assert code == "ok"
    svc.start_worker()
    op = wait_operation(client, op_id, timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "worker_lost", op
    assert describe(state) == old
    assert sorted(p.name for p in states.iterdir()) == ["web"]


def _stored(repository: Path) -> list[str]:
    """The data objects of a file:// repository (chunks, packs and their indexes)."""
    return sorted(str(p.relative_to(repository)) for top in ("data", "packidx")
                  if (repository / top).exists() for p in (repository / top).rglob("*")
                  if p.is_file())


def test_a_delete_that_failed_for_good_still_frees_its_storage(
    make_service: ServiceFactory, states: Path
) -> None:
    # A delete whose every attempt failed (the store away through all of them) ended
    # failed: the snapshot was gone from every listing, yet its manifest stayed, and every
    # reclaim after kept its data for ever. The reaper's reclaim now removes it first.
    svc = make_service().start(workers=1)
    client = svc.client()
    server = add_server(client, str(_small_state(states, "web")))
    snap = snapshot(client, server["id"])
    manifest = svc.repository / "snapshots" / str(snap["id"])
    assert manifest.exists() and _stored(svc.repository)
    store = store_for(svc)
    op_id = store.delete_snapshot(account=None, snapshot_id=snap["id"])
    assert store.fail_operation(op_id, "storage_unavailable", "The store was away.")
    assert client.get(f"/snapshots/{snap['id']}/").status_code == 404
    wait_until(lambda: not manifest.exists(), timeout=30, what="the manifest to be removed")
    wait_until(lambda: not _stored(svc.repository), timeout=30, what="its data reclaimed")


def test_a_worker_whose_clock_is_behind_keeps_its_job(
    make_service: ServiceFactory, big_state: Path
) -> None:
    # The lease's owner was judged by Dramatiq's heartbeat, which a worker writes with its
    # own clock, against Redis's: a worker a minute behind (the heartbeat timeout is 10 s
    # here) looked dead from the start of every job, so the reaper sent the job again 3 s
    # in (requeue_after) and the worker's other thread took it over: the capture ran twice
    # at once. 10 s, not the fault tests' 3: far below the skew still, and a worker whose
    # beats (one a second) stall 3 s under load is not taken for dead; and the snapshot is
    # made once the worker is up, not left queued while it boots.
    svc = make_service(FAULT_TEST_MBPS="10",  # ~12 s for the big state
                       SNAPSHOTS_HEARTBEAT_TIMEOUT="10").start(workers=0)
    svc.start_worker(env={"FAULT_TEST_CLOCK_SKEW": "-60"})
    store = store_for(svc)
    wait_until(lambda: live_workers(store.redis, 10).get(DEFAULT_HOST), timeout=30,
               what="the worker to be up")
    client = svc.client()
    server = add_server(client, str(big_state))
    snap = snapshot(client, server["id"])
    op = store.get_operation(snap["operation_id"])
    assert op is not None and op.attempts == 1, op
    assert events(svc, "operation.requeued", snap["id"]) == 0


def test_a_reaper_whose_clock_is_ahead_keeps_the_deadline(
    make_service: ServiceFactory, states: Path
) -> None:
    # The reaper compared its host's clock with the operations' times (Redis's clock): a
    # host two minutes ahead ended, at once, an operation of a deadline of one minute.
    svc = make_service(SNAPSHOTS_OPERATION_DEADLINE="60").start(workers=0)
    svc.start_worker(env={"FAULT_TEST_CLOCK_SKEW": "120"})
    client = svc.client()
    # Of a host with no live worker: it waits, queued, until the deadline (SPEC 5).
    server = add_server(client, str(_small_state(states, "far")), host="far")
    r = client.post("/snapshots/", json={"server_id": server["id"], "name": "waits"})
    assert r.status_code == 201, r.text
    time.sleep(3)  # six passes of the reaper (SNAPSHOTS_REAPER_INTERVAL 0.5 s)
    op = client.get(f"/operations/{r.json()['operation_id']}/").json()
    assert op["status"] == "queued", op


def test_a_restore_past_its_deadline_stops_and_leaves_the_state_as_it_was(
    make_service: ServiceFactory, states: Path
) -> None:
    # A restore the reaper ends (deadline) while it writes stops there: it went on to its
    # swap, seconds after its operation had failed and the server was free again, so the
    # state a user was told was kept was replaced after all.
    svc = make_service().start(workers=1)
    client = svc.client()
    state = states / "web"
    state.mkdir()
    for i in range(4):
        (state / f"data{i}.bin").write_bytes(os.urandom(4 << 20))
    server = add_server(client, str(state))
    snap = snapshot(client, server["id"], name="good")
    for i in range(4):
        (state / f"data{i}.bin").write_bytes(os.urandom(4 << 20))
    current = describe(state)
    # a worker whose restore moves 2 MB/s (16 MiB: ~8 s) under a 3 s deadline
    assert svc.workers
    svc.kill(svc.workers[0])  # idle: nothing of it to wait for
    svc.start_worker(env={"FAULT_TEST_MBPS": "2", "SNAPSHOTS_OPERATION_DEADLINE": "3"})

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    op = wait_operation(client, resp.json()["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "deadline_exceeded", op
    def ended() -> bool:  # nothing of the restore left beside the state
        return not [n for n in os.listdir(states) if n.startswith(".web.restore-")]

    wait_until(ended, timeout=30, what="the restore to end")
    time.sleep(1)
    assert describe(state) == current
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
