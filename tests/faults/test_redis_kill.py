"""Redis SIGKILLed mid-work and started again from its append-only file: nothing committed
is lost, the API says 503 clearly while it is away, and everything (web and workers, the
job that was running included) recovers by itself."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import tree_diff, unthrottle, wait_progress


def test_redis_sigkilled_mid_capture_loses_nothing_and_recovers(
    make_service: ServiceFactory, big_state: Path, states: Path
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    small = states / "small"
    small.mkdir()
    (small / "a.txt").write_text("committed before the crash\n")
    first = add_server(client, str(small), name="small")
    done = snapshot(client, first["id"], name="committed")
    big = add_server(client, str(big_state), name="big")
    reference = describe(big_state)
    resp = client.post("/snapshots/", json={"server_id": big["id"], "name": "running"})
    assert resp.status_code == 201, resp.text
    running = resp.json()
    wait_progress(client, running["id"])

    svc.redis.kill()
    ready = httpx.get(f"{svc.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["redis"] is False
    for method, path in (("GET", f"/snapshots/{done['id']}/"), ("GET", "/snapshots/"),
                         ("POST", "/snapshots/")):
        answer = client.request(method, path, json={"server_id": first["id"], "name": "n"}
                                if method == "POST" else None)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "service_unavailable"

    # Stay down long enough that the running job's progress reports and the workers'
    # heartbeats, fetches and reapers all hit the outage (the fault's length, not a guess
    # about speed).
    outage_end = time.monotonic() + 4
    while time.monotonic() < outage_end:
        assert httpx.get(f"{svc.url}/readyz", timeout=10).status_code == 503
        time.sleep(0.2)
    svc.redis.start()
    wait_until(lambda: httpx.get(f"{svc.url}/readyz", timeout=10).status_code == 200,
               timeout=30, what="/readyz to answer 200 again")
    unthrottle(svc)  # the outage hit the running job: the rest may run at full speed
    # Committed state is all there: the snapshot, its operation, the servers, the token.
    assert client.get(f"/snapshots/{done['id']}/").json() == done
    assert {s["id"] for s in client.get("/servers/").json()["servers"]} == {first["id"], big["id"]}
    # The capture that Redis's death interrupted finishes by itself...
    op = wait_operation(client, running["operation_id"], timeout=120)
    assert op["status"] == "succeeded", op
    # ...and new work flows through the same workers.
    (small / "a.txt").write_text("changed\n")
    resp = client.post(f"/snapshots/{done['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert (small / "a.txt").read_text() == "committed before the crash\n"
    # The interrupted snapshot restores exactly.
    (big_state / "data0.bin").unlink()
    resp = client.post(f"/snapshots/{running['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert not tree_diff(reference, describe(big_state))
