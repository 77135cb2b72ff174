"""snapctl's lifecycle commands against the real service: protect/unprotect/rename,
schedules set/show/remove, restore --into --safety; with --json, and their exit codes."""

from __future__ import annotations

from pathlib import Path

from tests.snapctl.conftest import Cli
from tests.snapctl.test_cli import _server, _token


def test_protect_rename_and_delete(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "f").write_text("x\n")
    server_id = _server(cli, state)
    _, token = _token(cli, "acme")
    snap = cli("--json", "snapshots", "create", "--server-id", str(server_id), "--name", "a",
               "--wait", token=token).json
    sid = str(snap["id"])
    r = cli("snapshots", "protect", sid, "--json", token=token)
    assert r.code == 0 and r.json["protected"] is True, r.err
    r = cli("snapshots", "delete", sid, token=token)
    assert r.code == 6 and "protected" in r.err
    r = cli("--json", "snapshots", "rename", sid, "keep-me", "--description", "the one",
            token=token)
    assert (r.json["name"], r.json["description"]) == ("keep-me", "the one")
    r = cli("--json", "snapshots", "rename", sid, "keep-me", "--description", "", token=token)
    assert r.json["description"] is None
    assert cli("snapshots", "unprotect", sid, token=token).code == 0
    assert "protected" in cli("snapshots", "show", sid, token=token).out
    assert cli("snapshots", "delete", sid, token=token).code == 0
    assert cli("snapshots", "protect", "9999", token=token).code == 9


def test_schedules_set_show_remove(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    server_id = str(_server(cli, state))
    _, token = _token(cli, "acme")
    r = cli("--json", "schedules", "set", server_id, "--cron", "0 3 * * *", "--timezone",
            "Europe/Berlin", "--keep-last", "2", "--keep-daily", "2", "--keep-weekly", "1",
            token=token)
    assert r.code == 0, r.err
    assert r.json["retention"] == {"last": 2, "hourly": 0, "daily": 2, "weekly": 1,
                                   "monthly": 0}
    assert r.json["next_run_at"].endswith(":00:00Z") and r.json["last_run"] is None
    shown = cli("schedules", "show", server_id, token=token)
    assert shown.code == 0 and "Europe/Berlin" in shown.out and "next_run_at" in shown.out
    bad = cli("schedules", "set", server_id, "--cron", "0 3 * *", "--keep-last", "1",
              token=token)
    assert bad.code == 5 and "cron:" in bad.err
    bad = cli("schedules", "set", server_id, "--cron", "0 3 * * *", token=token)
    assert bad.code == 5 and "retention" in bad.err
    assert cli("schedules", "remove", server_id, token=token).code == 0
    assert cli("schedules", "show", server_id, token=token).code == 9


def test_restore_into_another_server_with_a_safety_snapshot(cli: Cli, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "app.txt").write_text("golden\n")
    (dst / "app.txt").write_text("old target\n")
    source = _server(cli, src, name="web-01")
    target = _server(cli, dst, name="web-02")
    _, token = _token(cli, "acme")
    snap = cli("--json", "snapshots", "create", "--server-id", str(source), "--name", "g",
               "--wait", token=token).json
    r = cli("--json", "snapshots", "restore", str(snap["id"]), "--into", str(target),
            "--safety", "--wait", token=token)
    assert r.code == 0, r.err
    op = r.json
    assert (op["status"], op["server_id"], op["source_server_id"]) == (
        "succeeded", target, source)
    assert (dst / "app.txt").read_text() == "golden\n"
    safety = cli("--json", "snapshots", "show", str(op["safety_snapshot_id"]), token=token).json
    assert (safety["origin"], safety["status"], safety["server"]["id"]) == (
        "safety", "available", target)
