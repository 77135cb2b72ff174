"""Snapshot hooks with a real worker process: order (inside a stop_server stop), their
environment, output kept on the operation, a failing or hung pre hook failing the snapshot
with hook_failed, and the post hook running whenever the pre hook ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.e2e.flow import wait_operation
from tests.e2e.service import Service


def _server(client: httpx.Client, state: Path, hooks: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
    state.mkdir(exist_ok=True)
    (state / "f.txt").write_text("data\n")
    r = client.post("/servers/", json={
        "name": "db-01", "account": "acme", "hooks": hooks,
        "state": {"kind": "directory", "path": str(state)}, **extra})
    assert r.status_code == 201, r.text
    server: dict[str, Any] = r.json()
    assert server["hooks"] == {"timeout": 60, "pre_snapshot": None, "post_snapshot": None, **hooks}
    return server


def _snapshot(client: httpx.Client, server_id: int, **body: Any) -> dict[str, Any]:
    r = client.post("/snapshots/", json={"server_id": server_id, "name": "s", **body})
    assert r.status_code == 201, r.text
    op = wait_operation(client, r.json()["operation_id"])
    return op


def test_hooks_run_around_the_capture_inside_the_stop(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    log, env_file, flag = tmp_path / "log", tmp_path / "env", tmp_path / "running"
    flag.touch()
    power = {"kind": "command", "stop": f"echo stop >> {log}; rm -f {flag}",
             "start": f"echo start >> {log}; touch {flag}", "status": f"test -e {flag}"}
    server = _server(client, states / "db", {
        "pre_snapshot": f'echo "pre $SNAPSHOTS_SERVER_ID $SNAPSHOTS_SERVER_NAME" >> {log}; '
                        f"env > {env_file}; echo hello from pre; echo warn >&2",
        "post_snapshot": f'echo "post $SNAPSHOTS_CAPTURE" >> {log}',
    }, power=power)
    op = _snapshot(client, server["id"], stop_server=True)
    assert op["status"] == "succeeded", op
    assert log.read_text().splitlines() == [
        "stop", f"pre {server['id']} db-01", "post succeeded", "start"]
    pre, post = op["hooks"]
    assert (pre["hook"], pre["exit_code"], pre["timed_out"]) == ("pre_snapshot", 0, False)
    assert pre["output"] == "hello from pre\nwarn\n"
    assert (post["hook"], post["exit_code"], post["output"]) == ("post_snapshot", 0, "")
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert env["SNAPSHOTS_SERVER_ID"] == str(server["id"])
    assert env["SNAPSHOTS_STATE_PATH"] == str(states / "db")
    assert env["SNAPSHOTS_HOOK"] == "pre_snapshot"
    # The worker's own secrets never reach a hook.
    assert not {"REDIS_URL", "SNAPSHOTS_ADMIN_TOKEN"} & set(env)


def test_a_failing_pre_hook_fails_the_snapshot_and_the_post_hook_still_runs(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    log = tmp_path / "log"
    server = _server(client, states / "db", {
        "pre_snapshot": "echo cannot reach the database >&2; exit 3",
        "post_snapshot": f'echo "post $SNAPSHOTS_CAPTURE" >> {log}',
    })
    op = _snapshot(client, server["id"])
    assert op["status"] == "failed" and op["error"]["code"] == "hook_failed", op
    assert "exit code 3" in op["error"]["message"]
    snap = client.get(f"/snapshots/{op['snapshot_id']}/").json()
    assert snap["status"] == "failed" and snap["error"]["code"] == "hook_failed"
    assert op["hooks"][0]["output"] == "cannot reach the database\n"
    assert log.read_text() == "post failed\n"


def test_a_hung_pre_hook_is_killed_at_its_timeout(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    child = tmp_path / "child.pid"
    server = _server(client, states / "db", {
        # A child of the hook that would outlive it, were the whole group not killed.
        "pre_snapshot": f"sleep 300 & echo $! > {child}; " + "head -c 10000 /dev/zero | "
                        "tr '\\0' x; echo; echo END; sleep 300",
        "timeout": 1,
    })
    op = _snapshot(client, server["id"])
    assert op["status"] == "failed" and op["error"]["code"] == "hook_failed", op
    assert "1 s" in op["error"]["message"]
    [pre] = op["hooks"]
    assert (pre["exit_code"], pre["timed_out"]) == (None, True)
    assert 1 <= pre["seconds"] < 10
    assert len(pre["output"]) == 4096 and pre["output"].endswith("x\nEND\n")
    pid = int(child.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text(
    ).split()[2]


def test_bad_hooks_are_refused(service: Service) -> None:
    client = service.client()
    for hooks, field in [({"pre_snapshot": ""}, "hooks.pre_snapshot"),
                         ({"timeout": 0}, "hooks.timeout"), ({"timeout": 4000}, "hooks.timeout"),
                         ({"pre": "x"}, "hooks.pre"), ("echo", "hooks")]:
        r = client.post("/servers/", json={"name": "x", "account": "acme", "hooks": hooks,
                                           "state": {"kind": "directory", "path": "/srv/x"}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"].startswith(field), (hooks, r.json())
