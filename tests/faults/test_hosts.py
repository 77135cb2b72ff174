"""Two hosts on this machine: each worker runs only its own host's servers (SPEC section 5).

Host a's and host b's workers are real Dramatiq processes with ``SNAPSHOTS_HOST=a`` and
``b``; each runs in a private mount namespace where the other host's state directory is an
empty tmpfs, so a worker of a cannot even see b's servers: had it run one of b's jobs, the
capture would have found no state and failed, and a restore would have written into the
tmpfs, not into the server. They share Redis and the repository (one machine's file://
standing in for the fleet's shared object store).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.broker import enqueue_operation, make_broker
from shared.hosts import WORKERS_KEY
from shared.settings import Settings
from shared.store import Store
from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import (
    objects,
    store_for,
    stored_bytes,
    tree_diff,
    unthrottle,
    wait_progress,
)
from workers.reaper import RECLAIM_KEY

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="hiding a host's states needs a private mount namespace (root)"
)
NS = "snapshots-dramatiq"


def _host_dirs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "hosts" / "a", tmp_path / "hosts" / "b"
    for d in (a, b):
        d.mkdir(parents=True)
    return a, b


def _state(root: Path, text: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text(text)
    (root / "data.bin").write_bytes(os.urandom(300_000))
    return root


def owner_host(store: Store, op_id: int) -> str:
    """The host of the worker process that last claimed the operation (its heartbeat)."""
    process = str(store.redis.hget(f"operation:{op_id}", "owner_process") or "")
    assert process, f"operation {op_id} was never claimed"
    hosts = [str(m).split("/")[0] for m in store.redis.zrange(WORKERS_KEY, 0, -1)
             if str(m).endswith(f"/{process}")]
    assert len(hosts) == 1, hosts
    return hosts[0]


def queued_messages(store: Store, host: str) -> int:
    return int(store.redis.llen(f"{NS}:host.{host}"))


def capture_under_way(
    client: httpx.Client, store: Store, server_id: int, host: str
) -> tuple[int, int, str]:
    """Starts a capture of the server and waits until it moved on a worker of ``host``:
    answers the snapshot, the operation and the worker process that holds it."""
    resp = client.post("/snapshots/", json={"server_id": server_id, "name": "big"})
    assert resp.status_code == 201, resp.text
    snap_id, op_id = resp.json()["id"], resp.json()["operation_id"]
    wait_progress(client, snap_id)
    assert owner_host(store, op_id) == host
    return snap_id, op_id, str(store.redis.hget(f"operation:{op_id}", "owner_process"))


def snapshot_each_host(
    client: httpx.Client, store: Store, states: dict[str, Path], min_mb: float
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Registers a server on each host (its state path) and snapshots it through the API;
    each capture ran on its server's host and read the real state (at least ``min_mb``,
    not the empty tmpfs another host's worker sees there). Answers servers and snapshots."""
    servers = {h: add_server(client, str(p), host=h, name=f"web-{h}") for h, p in states.items()}
    snaps = {h: snapshot(client, servers[h]["id"], name=f"on-{h}") for h in states}
    for h, snap in snaps.items():
        op = client.get(f"/operations/{snap['operation_id']}/").json()
        assert op["host"] == h and owner_host(store, op["id"]) == h
        assert snap["size_mb"] > min_mb, snap
    return servers, snaps


def test_each_host_runs_only_its_own_servers(make_service: ServiceFactory, tmp_path: Path) -> None:
    a_dir, b_dir = _host_dirs(tmp_path)
    svc = make_service().start(workers=0)
    svc.start_worker(host="a", hide=(b_dir,))
    worker_b = svc.start_worker(host="b", hide=(a_dir,))
    client, store = svc.client(), store_for(svc)
    # Each worker says what it runs, and that a host on file:// keeps its snapshots local.
    wait_until(lambda: "worker of host 'b' consumes host.b, webhooks" in svc.logs()
               and "SNAPSHOTS_HOST=b with a file:// repository" in svc.logs(), timeout=20,
               what="b's announce")
    states = {"a": _state(a_dir / "web", "on a\n"), "b": _state(b_dir / "web", "on b\n")}
    servers, snaps = snapshot_each_host(client, store, states, min_mb=0.25)
    reference = {h: describe(p) for h, p in states.items()}
    for h, state in states.items():
        (state / "etc" / "app.conf").write_text("broken\n")
        (state / "data.bin").unlink()
        resp = client.post(f"/snapshots/{snaps[h]['id']}/restore/")
        assert resp.status_code == 200, resp.text
        op = wait_operation(client, resp.json()["operation_id"])
        assert op["status"] == "succeeded" and op["host"] == h, op
        assert owner_host(store, op["id"]) == h
        assert not tree_diff(reference[h], describe(state))

    # A restore of a's snapshot into b's server (a clone) is the target's: b's worker runs
    # it, reading a's snapshot from the shared repository (a's worker could not even see
    # b's state).
    resp = client.post(f"/snapshots/{snaps['a']['id']}/restore/",
                       json={"server_id": servers["b"]["id"]})
    assert resp.status_code == 200, resp.text
    op = wait_operation(client, resp.json()["operation_id"])
    assert op["status"] == "succeeded" and op["host"] == "b", op
    assert owner_host(store, op["id"]) == "b"
    assert not tree_diff(reference["a"], describe(states["b"]))

    # A message of b's operation put on a's queue by mistake (by hand, or by a stray
    # producer): a's worker refuses to claim it and hands it on to b's queue.
    svc.kill(worker_b, signal.SIGTERM)
    resp = client.post("/snapshots/", json={"server_id": servers["b"]["id"], "name": "stray"})
    assert resp.status_code == 201, resp.text
    op_id = resp.json()["operation_id"]
    assert queued_messages(store, "b") == 1
    broker = make_broker(Settings.from_env(svc.env))
    try:
        enqueue_operation(broker, "snapshot.create", op_id, "a")
    finally:
        broker.close()
    wait_until(lambda: queued_messages(store, "b") == 2, timeout=20,
               what="host a's worker to forward the stray message to host b's queue")
    op = client.get(f"/operations/{op_id}/").json()
    assert op["status"] == "queued" and op["host"] == "b", op
    assert store.get_operation(op_id).attempts == 0  # type: ignore[union-attr]

    svc.start_worker(host="b", hide=(a_dir,))  # b is back: its operation runs there
    op = wait_operation(client, op_id)
    assert op["status"] == "succeeded" and owner_host(store, op_id) == "b", op


def test_a_host_without_workers_keeps_its_operation_queued(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    a_dir, b_dir = _host_dirs(tmp_path)
    svc = make_service().start(workers=0)
    svc.start_worker(host="a", hide=(b_dir,))
    client, store = svc.client(), store_for(svc)
    server = add_server(client, str(_state(b_dir / "web", "on b\n")), host="b")
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "waits"})
    assert resp.status_code == 201, resp.text
    op_id = resp.json()["operation_id"]

    # Longer than two of the reapers' resends (SNAPSHOTS_REQUEUE_AFTER=3): the resends go
    # to b's queue too, and nothing runs it.
    until = time.monotonic() + 7
    while time.monotonic() < until:
        op: dict[str, Any] = client.get(f"/operations/{op_id}/").json()
        assert op["status"] == "queued" and op["host"] == "b" and op["started_at"] is None, op
        time.sleep(0.5)
    assert queued_messages(store, "b") >= 2 and queued_messages(store, "a") == 0
    assert store.get_operation(op_id).attempts == 0  # type: ignore[union-attr]
    # A capture no worker ever started stored nothing: it does not hold back the fleet's
    # reclaims (host a's reaper reclaims every SNAPSHOTS_RECLAIM_INTERVAL=2 s meanwhile).
    wait_until(lambda: store.redis.exists(RECLAIM_KEY), timeout=10,
               what="host a's reaper to reclaim while b's capture waits")
    hosts = {h.pop("name"): h for h in client.get("/hosts/").json()["hosts"]}
    assert hosts["b"] == {"workers": 0, "last_seen": None, "servers": 1, "queued": 1}
    assert hosts["a"]["workers"] == 1 and hosts["a"]["servers"] == 0

    svc.start_worker(host="b", hide=(a_dir,))
    op = wait_operation(client, op_id)
    assert op["status"] == "succeeded" and owner_host(store, op_id) == "b", op
    hosts = {h.pop("name"): h for h in client.get("/hosts/").json()["hosts"]}
    assert hosts["b"]["workers"] == 1 and hosts["b"]["queued"] == 0


def test_the_deadline_ends_an_operation_of_a_host_without_workers(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    _, b_dir = _host_dirs(tmp_path)
    svc = make_service(SNAPSHOTS_OPERATION_DEADLINE="3").start(workers=0)
    svc.start_worker(host="a", hide=(b_dir,))
    client = svc.client()
    server = add_server(client, str(_state(b_dir / "web", "on b\n")), host="b")
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "never"})
    op = wait_operation(client, resp.json()["operation_id"], timeout=30)
    assert op["status"] == "failed" and op["error"]["code"] == "deadline_exceeded", op
    assert "'b' has no live worker" in op["error"]["message"]
    assert client.get(f"/snapshots/{resp.json()['id']}/").json()["status"] == "failed"
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"


def test_killing_host_b_worker_mid_capture_resumes_on_host_b_only(
    make_service: ServiceFactory, big_state: Path, tmp_path: Path
) -> None:
    b_dir = big_state.parent
    a_dir = tmp_path / "hosts-a"
    a_dir.mkdir()
    svc = make_service().start(workers=0)
    svc.start_worker(host="a", hide=(b_dir,))
    victim = svc.start_worker(host="b", hide=(a_dir,))
    client, store = svc.client(), store_for(svc)
    server = add_server(client, str(big_state), host="b")
    reference = describe(big_state)
    snap_id, op_id, first = capture_under_way(client, store, server["id"], "b")
    before = objects(svc.repository)
    assert before, "the capture had stored nothing yet"

    svc.start_worker(host="b", hide=(a_dir,))  # another worker of host b
    svc.kill(victim, signal.SIGKILL)
    unthrottle(svc)  # the kill landed mid-capture: the rest may run at full speed
    op = wait_operation(client, op_id, timeout=120)
    assert op["status"] == "succeeded" and op["host"] == "b", op
    assert store.get_operation(op_id).attempts >= 2  # type: ignore[union-attr]
    assert store.redis.hget(f"operation:{op_id}", "owner_process") != first
    assert owner_host(store, op_id) == "b"  # the other b worker resumed it, not a
    # It resumed: what the killed worker stored is still there, not stored again.
    after = objects(svc.repository)
    assert {k: after.get(k) for k in before} == before
    missing = sum(size for key, (_ino, size) in after.items() if key not in before)
    manifest = (svc.repository / "snapshots" / str(snap_id)).stat().st_size
    assert 0 < stored_bytes(svc, snap_id) <= missing + manifest

    (big_state / "data0.bin").unlink()
    resp = client.post(f"/snapshots/{snap_id}/restore/")
    op = wait_operation(client, resp.json()["operation_id"], timeout=120)
    assert op["status"] == "succeeded" and owner_host(store, op["id"]) == "b", op
    assert not tree_diff(reference, describe(big_state))
