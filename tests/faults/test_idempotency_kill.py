"""Idempotency-Key across a web process SIGKILLed right after its state transition: the
create's or restore's script has run (the operation exists), the answer never left. A retry
with the same key after the killed request's claim lapsed answers that operation, replayed,
and starts nothing again (it ran a second capture or restore).

The kill lands after the script through the fault tests' web gate (throttle/sitecustomize.py,
FAULT_TEST_WEB_GATE), not through the machine's speed. Cost: one service, ~10 s."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import redis

from api.idempotency import PENDING_TTL
from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import ADMIN_TOKEN, Service, wait_until
from tests.faults.conftest import ServiceFactory


def _killed_after_commit(svc: Service, gate: Path, script: str, path: str,
                         body: dict[str, Any], key: str) -> None:
    """POSTs under ``key``; the web process is SIGKILLed once ``script`` answered."""
    (gate / "hold").touch()
    failed: list[BaseException] = []

    def post() -> None:
        try:
            with svc.client() as c:
                c.post(path, json=body, headers={"Idempotency-Key": key}, timeout=60)
        except httpx.TransportError as err:
            failed.append(err)

    sender = threading.Thread(target=post)
    sender.start()
    wait_until(lambda: (gate / f"committed-{script}").exists(), timeout=30, interval=0.01,
               what=f"the {script} script to answer")
    assert svc.web is not None
    Service.kill(svc.web)
    sender.join(timeout=30)
    assert failed, "the request was answered before the kill"
    (gate / "hold").unlink()
    # The killed request's claim on the key lapses after PENDING_TTL (60 s): ended here
    # rather than waited for. A record the transition committed lives 24 h and stays.
    r = redis.Redis.from_url(svc.redis.url)
    for k in r.scan_iter("idem:*"):
        if 0 <= r.ttl(k) <= PENDING_TTL:
            r.delete(k)
    svc.start_web()


def _ops(client: httpx.Client, op_type: str) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = client.get("/operations/").json()["operations"]
    return [o for o in ops if o["type"] == op_type]


def test_a_retry_after_the_web_died_past_its_transition_starts_nothing_again(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    svc = make_service(FAULT_TEST_WEB_GATE=str(gate)).start(workers=1)
    client = svc.client(ADMIN_TOKEN)
    state = tmp_path / "state"
    state.mkdir()
    (state / "a.txt").write_text("captured\n")
    server = add_server(client, str(state))

    create = {"server_id": server["id"], "name": "n"}
    _killed_after_commit(svc, gate, "create_snapshot", "/snapshots/", create, "create-1")
    (made,) = _ops(client, "snapshot.create")
    # Never enqueued by the killed process: the reaper sends it.
    assert wait_operation(client, made["id"])["status"] == "succeeded"
    again = client.post("/snapshots/", json=create, headers={"Idempotency-Key": "create-1"})
    assert again.status_code == 201, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == made["snapshot_id"]
    assert again.json()["operation_id"] == made["id"]
    assert again.headers["location"] == f"/api/v1/snapshots/{made['snapshot_id']}/"
    assert [o["id"] for o in _ops(client, "snapshot.create")] == [made["id"]]

    (state / "a.txt").write_text("changed\n")
    restore_path = f"/snapshots/{made['snapshot_id']}/restore/"
    _killed_after_commit(svc, gate, "start_restore", restore_path, {}, "restore-1")
    (started,) = _ops(client, "snapshot.restore")
    assert wait_operation(client, started["id"])["status"] == "succeeded"
    assert (state / "a.txt").read_text() == "captured\n"
    (state / "a.txt").write_text("changed again\n")
    again = client.post(restore_path, json={}, headers={"Idempotency-Key": "restore-1"})
    assert again.status_code == 200, again.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["operation_id"] == started["id"]
    assert again.json()["server"] == {"id": server["id"], "name": server["name"],
                                      "status": "restoring"}
    # A second restore would have put the state back over the change made since.
    assert [o["id"] for o in _ops(client, "snapshot.restore")] == [started["id"]]
    assert wait_operation(client, started["id"])["status"] == "succeeded"
    assert (state / "a.txt").read_text() == "changed again\n"
