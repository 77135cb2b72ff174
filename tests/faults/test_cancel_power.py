"""A "stop_server" capture cancelled by its snapshot's DELETE frees the server at once, but
holds it (server_invalid_state, "still being handed back") until the capture's job has
started it again: another operation taking it in between left that start to the other
operation, which found the server stopped and left it so (a restore took it "stopped"),
and before that the restart landed mid-restore. Cost: one service, ~15 s."""

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
    refused = 0
    deadline = time.monotonic() + 60
    while True:  # what a script does: retry in a moment while the server is handed back
        started = client.post(f"/snapshots/{first['id']}/restore/")
        if started.status_code != 400 or time.monotonic() > deadline:
            break
        assert started.json()["error"]["code"] == "server_invalid_state", started.text
        assert "handed back" in started.json()["error"]["message"], started.text
        refused += 1
        time.sleep(0.1)
    assert started.status_code == 200, started.text
    assert refused, "the restore took the server before the cancelled job started it again"
    op = wait_operation(client, started.json()["operation_id"])
    assert op["status"] == "succeeded", op
    lines = log.read_text().split()
    assert "start-during-restore" not in lines, lines
    # The cancelled job started the server again before the restore could take it; the
    # restore took it running, stopped it, and started it again as it was (its prior status).
    assert lines == ["stop", "start", "stop", "start"], lines
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    assert flag.exists()
