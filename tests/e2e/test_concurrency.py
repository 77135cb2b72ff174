"""The per-server limit and "one active operation per server" under real concurrency:
20 clients race to snapshot one server, retrying while another snapshot is in progress,
against the real web process and a real worker. Exactly the limit is created.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import Service


def test_twenty_racing_clients_make_exactly_five_snapshots(service: Service, states: Path) -> None:
    state = states / "busy"
    state.mkdir()
    (state / "file").write_bytes(b"x" * 100_000)
    admin = service.client()
    server = add_server(admin, str(state), name="busy-01")
    outcomes: list[str] = []
    created: list[int] = []
    lock = threading.Lock()

    def racer() -> None:
        with service.client() as client:
            for _ in range(600):
                resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "race"})
                code = "created" if resp.status_code == 201 else resp.json()["error"]["code"]
                if code == "server_invalid_state":
                    continue  # another snapshot of it is in progress: try again
                with lock:
                    outcomes.append(code)
                    if resp.status_code == 201:
                        created.append(resp.json()["operation_id"])
                return

    threads = [threading.Thread(target=racer) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert outcomes.count("created") == 5, outcomes
    assert outcomes.count("snapshot_limit_reached") == 15, outcomes
    for op_id in created:
        assert wait_operation(admin, op_id)["status"] == "succeeded"
    listed = admin.get("/snapshots/", params={"server_id": server["id"]}).json()
    assert listed["meta"]["total"] == 5
    assert {s["status"] for s in listed["snapshots"]} == {"available"}


def test_first_create_wins_and_the_rest_see_server_invalid_state(
    service: Service, states: Path
) -> None:
    state = states / "burst"
    state.mkdir()
    (state / "file").write_bytes(b"y" * 1000)
    flag = states / "burst.running"
    flag.touch()
    # A stop that takes seconds keeps the first snapshot in progress while the others land.
    power = {
        "kind": "command",
        "stop": f"sleep 3; rm -f {flag}",
        "start": f"touch {flag}",
        "status": f"test -e {flag}",
    }
    admin = service.client()
    server = add_server(admin, str(state), name="burst-01", power=power)
    barrier = threading.Barrier(20)
    codes: list[int] = []

    def burst() -> None:
        with httpx.Client(base_url=f"{service.url}/api/v1", headers=admin.headers) as client:
            barrier.wait()
            resp = client.post(
                "/snapshots/", json={"server_id": server["id"], "name": "b", "stop_server": True}
            )
            codes.append(resp.status_code)
            if resp.status_code == 400:
                assert resp.json()["error"]["code"] == "server_invalid_state"

    threads = [threading.Thread(target=burst) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [201] + [400] * 19
