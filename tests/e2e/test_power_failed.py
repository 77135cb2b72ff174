"""A restore whose server does not start again ends power_failed, and the operation's
error keeps the last lines of what the start command printed, so the owner sees why."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.flow import add_server, restore, snapshot
from tests.e2e.service import Service


def test_restore_whose_start_fails_names_the_commands_output(tmp_path: Path) -> None:
    state = tmp_path / "srv"
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "app.conf").write_text("listen 80\n")
    flag = tmp_path / "running"
    flag.touch()
    power = {"kind": "command", "stop": f"rm -f {flag}",
             "start": "echo starting game; echo 'fatal: port 27015 already in use' >&2; exit 4",
             "status": f"test -e {flag}"}
    with Service.running(tmp_path / "svc") as svc:
        client = svc.client()
        server = add_server(client, str(state), power=power)
        snap = snapshot(client, server["id"])
        (state / "etc" / "app.conf").write_text("changed\n")
        op = restore(client, snap["id"])
        assert op["status"] == "failed", op
        assert op["error"]["code"] == "power_failed"
        message = op["error"]["message"]
        assert message.startswith("The state was restored, but the server did not start again")
        assert "exit code 4" in message and "port 27015 already in use" in message
        assert (state / "etc" / "app.conf").read_text() == "listen 80\n"
        assert client.get(f"/servers/{server['id']}/").json()["status"] == "stopped"
