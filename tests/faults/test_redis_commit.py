"""Redis SIGKILLed exactly as a job commits (its capture, restore or delete is done, its
final transition is next), down for ~2 s, then started again from its append-only file:
the worker waits in place, the operation ends in the right state exactly once (one event,
no second transition), the API says 503 meanwhile, and no traceback is logged.

The outage lands at the commit through the fault tests' commit gate (throttle/
sitecustomize.py, FAULT_TEST_COMMIT_GATE), not through the machine's speed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import Service, wait_until
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import events, store_for

OUTAGE_S = 2.0


def commit_in_outage(svc: Service, client: httpx.Client, gate: Path, op_id: int) -> None:
    """Waits for the worker to reach operation ``op_id``'s final transition, kills Redis,
    lets the transition go into the outage, and starts Redis again ~2 s later."""
    wait_until(lambda: (gate / f"reached-{op_id}").exists(), timeout=60, interval=0.01,
               what=f"operation {op_id} to reach its commit")
    svc.redis.kill()
    (gate / f"go-{op_id}").touch()
    outage_end = time.monotonic() + OUTAGE_S
    answer = client.get(f"/operations/{op_id}/")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "service_unavailable"
    time.sleep(max(0.0, outage_end - time.monotonic()))
    svc.redis.start()


def _ended(svc: Service, client: httpx.Client, op_id: int) -> None:
    """The operation succeeded on its first delivery: committed in place, not given up
    to a redelivery (the API does not show attempts; the record does)."""
    op = wait_operation(client, op_id, timeout=60)
    assert op["status"] == "succeeded", op
    record = store_for(svc).get_operation(op_id)
    assert record is not None and record.attempts == 1, record


def test_jobs_committing_while_redis_restarts_end_once_and_quietly(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "hold").touch()
    svc = make_service(FAULT_TEST_COMMIT_GATE=str(gate)).start(workers=1)
    client = svc.client()
    state = tmp_path / "state"
    state.mkdir()
    (state / "a.txt").write_text("captured\n")
    (state / "b.bin").write_bytes(b"\1" * 300_000)
    server = add_server(client, str(state))

    # A capture's commit (complete_create).
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "n"})
    assert resp.status_code == 201, resp.text
    snap_id, op_id = resp.json()["id"], resp.json()["operation_id"]
    commit_in_outage(svc, client, gate, op_id)
    _ended(svc, client, op_id)
    assert client.get(f"/snapshots/{snap_id}/").json()["status"] == "available"
    assert events(svc, "snapshot.available", snap_id) == 1

    # A restore's (complete_restore): the state is put back, the server running again.
    (state / "a.txt").write_text("changed\n")
    resp = client.post(f"/snapshots/{snap_id}/restore/")
    assert resp.status_code == 200, resp.text
    op_id = resp.json()["operation_id"]
    commit_in_outage(svc, client, gate, op_id)
    _ended(svc, client, op_id)
    assert (state / "a.txt").read_text() == "captured\n"
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    assert events(svc, "restore.succeeded", snap_id) == 1

    # A delete's (complete_delete): the snapshot is gone, reclaimed once.
    resp = client.delete(f"/snapshots/{snap_id}/")
    assert resp.status_code == 204, resp.text
    (op_id,) = store_for(svc).active_operation_ids()
    commit_in_outage(svc, client, gate, op_id)
    _ended(svc, client, op_id)
    assert client.get(f"/snapshots/{snap_id}/").status_code == 404
    assert events(svc, "snapshot.reclaimed", snap_id) == 1

    worker_log = (svc.root / "worker0.log").read_text(errors="replace")
    assert "Traceback" not in worker_log, worker_log
    assert "Redis is back after" in worker_log, worker_log  # it did wait, in place
