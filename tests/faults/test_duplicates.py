"""At-least-once delivery: the same message handled twice, one after the other and at the
same time by two workers, gives one snapshot and one restore, nothing corrupt and nothing
counted twice. The operation's lease (claim_operation.lua) refuses a second runner while a
live worker holds it; a message after the end finds the operation finished."""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import enqueue_again, events, store_for, tree_diff, wait_progress


def test_duplicate_messages_at_once_and_after_run_once(
    make_service: ServiceFactory, big_state: Path
) -> None:
    svc = make_service().start(workers=2)
    client = svc.client()
    server = add_server(client, str(big_state))
    reference = describe(big_state)

    # At the same time: two more copies of the create message while both workers (four
    # threads) are free, so they are fetched together with the API's own message.
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "dup"})
    assert resp.status_code == 201, resp.text
    snap_id, op_id = resp.json()["id"], resp.json()["operation_id"]
    enqueue_again(svc, "snapshot.create", op_id, times=2)
    wait_progress(client, snap_id)
    op = wait_operation(client, op_id, timeout=120)
    assert op["status"] == "succeeded", op
    store = store_for(svc)
    assert store.get_operation(op_id).attempts == 1  # type: ignore[union-attr]
    assert _worker_logs(svc).count(f"operation {op_id}: nothing to do here (busy)") >= 1
    manifest = svc.repository / "snapshots" / str(snap_id)
    committed = manifest.stat().st_mtime_ns
    snap = client.get(f"/snapshots/{snap_id}/").json()
    assert snap["status"] == "available"

    # One after the other: the same message once more after the end changes nothing.
    enqueue_again(svc, "snapshot.create", op_id)
    wait_until(lambda: _queues_empty(svc), timeout=30, what="the duplicate to be consumed")
    assert client.get(f"/snapshots/{snap_id}/").json() == snap
    assert manifest.stat().st_mtime_ns == committed
    assert events(svc, "snapshot.available", snap_id) == 1
    listing = client.get(f"/snapshots/?server_id={server['id']}").json()
    assert listing["meta"]["total"] == 1

    # The same for a restore: three copies of its message at once, then one more.
    for f in list(big_state.glob("data*.bin"))[:3]:
        f.unlink()
    (big_state / "stray").write_bytes(os.urandom(1000))
    resp = client.post(f"/snapshots/{snap_id}/restore/")
    assert resp.status_code == 200, resp.text
    restore_id = resp.json()["operation_id"]
    enqueue_again(svc, "snapshot.restore", restore_id, times=2)
    op = wait_operation(client, restore_id, timeout=120)
    assert op["status"] == "succeeded", op
    assert store.get_operation(restore_id).attempts == 1  # type: ignore[union-attr]
    enqueue_again(svc, "snapshot.restore", restore_id)
    wait_until(lambda: _queues_empty(svc), timeout=30, what="the duplicate to be consumed")
    assert not tree_diff(reference, describe(big_state))
    assert events(svc, "restore.succeeded", snap_id) == 1
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    # a live restore's old tree goes in the background (the worker's janitor), at once
    wait_until(lambda: not [p for p in big_state.parent.iterdir() if ".restore-" in p.name],
               timeout=30, what="the old tree to be removed")


def _worker_logs(svc: object) -> str:
    from tests.e2e.service import Service

    assert isinstance(svc, Service)
    return "".join(p.read_text(errors="replace") for p in svc.root.glob("worker*.log"))


def _queues_empty(svc: object) -> bool:
    """No message waiting or being handled in the snapshots queue (nor its delay queue)."""
    from tests.e2e.service import Service

    assert isinstance(svc, Service)
    store = store_for(svc)
    ns = "snapshots-dramatiq"
    pending = sum(int(store.redis.llen(f"{ns}:{q}")) for q in ("host.default", "host.default.DQ"))
    acks = sum(int(store.redis.scard(k)) for k in store.redis.scan_iter(f"{ns}:__acks__.*"))
    return pending == 0 and acks == 0
