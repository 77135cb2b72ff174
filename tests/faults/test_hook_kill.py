"""A worker SIGKILLed between a server's pre and post hook: the next attempt runs the post
hook the server is owed (``SNAPSHOTS_CAPTURE=interrupted``) before it starts again."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.flow import wait_operation
from tests.e2e.service import wait_until
from tests.faults.conftest import ServiceFactory


def test_post_hook_runs_on_the_next_attempt_after_a_kill(
    make_service: ServiceFactory, states: Path, tmp_path: Path
) -> None:
    svc = make_service().start()
    client = svc.client()
    log = tmp_path / "hooks.log"
    state = states / "db"
    state.mkdir()
    (state / "f").write_text("x\n")
    r = client.post("/servers/", json={
        "name": "db-01", "account": "acme", "state": {"kind": "directory", "path": str(state)},
        "hooks": {
            # The first attempt is killed while its pre hook sleeps (the database "frozen").
            "pre_snapshot": f"echo pre >> {log}; [ -e {log}.once ] || {{ touch {log}.once; "
                            "sleep 10; }",
            "post_snapshot": f'echo "post $SNAPSHOTS_CAPTURE" >> {log}',
        }})
    assert r.status_code == 201, r.text
    created = client.post("/snapshots/", json={"server_id": r.json()["id"], "name": "s"})
    assert created.status_code == 201, created.text
    wait_until(lambda: log.exists() and "pre" in log.read_text(), timeout=30,
               what="the pre hook of the first attempt")
    victim = svc.workers[0]
    svc.start_worker()
    svc.kill(victim)  # SIGKILL to the worker's process group
    op = wait_operation(client, created.json()["operation_id"], timeout=90)
    assert op["status"] == "succeeded", op
    assert log.read_text().splitlines() == ["pre", "post interrupted", "pre", "post succeeded"]
    # The killed pre hook never finished, so its record is the log line only.
    assert [h["hook"] for h in op["hooks"]] == ["post_snapshot", "pre_snapshot", "post_snapshot"]
