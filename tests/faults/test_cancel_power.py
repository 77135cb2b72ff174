"""A "stop_server" capture cancelled by its snapshot's DELETE frees the server at once, so
another operation may take it before the capture's job notices and ends: that job then
leaves the server's power to the operation holding it, never starting the server under a
restore that is replacing its state (it did: the restart landed mid-restore). Cost: one
service, ~15 s."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import wait_progress

FILES, FILE_MB = 3, 20


def _fill(state: Path) -> None:
    for i in range(FILES):
        (state / f"data{i}.bin").write_bytes(os.urandom(FILE_MB << 20))


def test_a_cancelled_stop_server_capture_never_starts_the_server_under_a_restore(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    svc = make_service(FAULT_TEST_MBPS="20").start(workers=1)
    client = svc.client()
    state = tmp_path / "srv"
    state.mkdir()
    _fill(state)
    flag, log = tmp_path / "running", tmp_path / "power.log"
    flag.touch()
    # The start command says whether a restore was writing the state as it ran.
    restoring = (f"ls -a {tmp_path} | grep -v trash | grep -q '^\\.srv\\.restore-'")
    power = {"kind": "command", "stop": f"rm -f {flag}; echo stop >> {log}",
             "start": f"if {restoring}; then echo start-during-restore >> {log}; "
                      f"else echo start >> {log}; fi; touch {flag}",
             "status": f"test -e {flag}"}
    server = add_server(client, str(state), power=power)
    first = snapshot(client, server["id"], name="a")
    _fill(state)  # the restore below has the whole state to write again

    made = client.post("/snapshots/", json={"server_id": server["id"], "name": "b",
                                            "stop_server": True})
    assert made.status_code == 201, made.text
    wait_progress(client, made.json()["id"])
    assert not flag.exists()  # stopped for the capture
    assert client.delete(f"/snapshots/{made.json()['id']}/").status_code == 204
    started = client.post(f"/snapshots/{first['id']}/restore/")
    assert started.status_code == 200, started.text
    op = wait_operation(client, started.json()["operation_id"])
    assert op["status"] == "succeeded", op
    # The cancelled job has long noticed (it asks every second); its last word is in.
    time.sleep(2)
    lines = log.read_text().split()
    assert "start-during-restore" not in lines, lines
    # The restore took the server stopped, so it owns its power and left it so (as its
    # status says; "start_after": true would have started it).
    assert lines == ["stop"], lines
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "stopped"
    assert not flag.exists()
