"""snapctl as a user runs it: the installed console script, in a subprocess, against the
real service. Every command with --json, --wait with its progress bar, the exit codes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.snapctl.conftest import Cli


def _server(cli: Cli, path: Path, account: str = "acme", name: str = "web-01") -> int:
    r = cli("servers", "add", "--name", name, "--account", account, "--path", str(path),
            "--json")
    assert r.code == 0, r.err
    server_id: int = r.json["id"]
    return server_id


def _token(cli: Cli, account: str, scope: str = "write") -> tuple[int, str]:
    r = cli("--json", "tokens", "create", "--account", account, "--scope", scope)
    assert r.code == 0, r.err
    return r.json["id"], r.json["token"]


def test_walkthrough(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "index.html").write_text("hello\n")
    (state / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    server_id = _server(cli, state)
    token_id, token = _token(cli, "acme")

    r = cli("servers", "list", token=token)
    assert r.code == 0 and "web-01" in r.out
    assert cli("servers", "show", str(server_id), "--json", token=token).json["status"] == "running"

    # --wait with the progress bar (stderr), the final snapshot on stdout.
    r = cli("snapshots", "create", "--server-id", str(server_id), "--name", "before-update",
            "--wait", token=token)
    assert r.code == 0, r.err
    assert "100%" in r.err and "snapshot" in r.err
    assert "available" in r.out
    r = cli("--json", "snapshots", "create", "--server-id", str(server_id), "--name", "second",
            "--description", "with json", "--wait", token=token)
    assert r.code == 0, r.err
    snap = r.json
    assert snap["status"] == "available" and snap["progress"] == 100
    assert snap["description"] == "with json" and snap["size_mb"] == 2.0

    listing = cli("snapshots", "list", "--server-id", str(server_id), "--json", token=token)
    assert [s["name"] for s in listing.json["snapshots"]] == ["second", "before-update"]
    assert cli("snapshots", "list", token=token).out.count("available") == 2
    assert cli("snapshots", "show", str(snap["id"]), "--json", token=token).json == snap

    (state / "index.html").write_text("broken\n")
    r = cli("snapshots", "restore", str(snap["id"]), "--wait", "--json", token=token)
    assert r.code == 0, r.err
    op = r.json
    assert op["type"] == "snapshot.restore" and op["status"] == "succeeded"
    assert (state / "index.html").read_text() == "hello\n"
    assert cli("operations", "show", str(op["id"]), "--json", token=token).json == op
    r = cli("operations", "show", str(op["id"]), "--wait", token=token)
    assert r.code == 0 and "succeeded" in r.out

    r = cli("snapshots", "delete", str(snap["id"]), "--json", token=token)
    assert r.code == 0 and r.json == {"deleted": {"snapshot_id": snap["id"]}}
    assert cli("snapshots", "show", str(snap["id"]), token=token).code == 9

    r = cli("tokens", "list", "--account", "acme", "--json")
    assert r.code == 0 and token_id in [t["id"] for t in r.json["tokens"]]
    assert token not in r.out  # a listing never shows a token's value
    r = cli("tokens", "list")
    assert r.code == 0 and "acme" in r.out and "created_at" in r.out

    # The fleet's hosts (admin): this service's one worker, on host default.
    r = cli("hosts", "list", "--json")
    assert r.code == 0, r.err
    default = {h["name"]: h for h in r.json["hosts"]}["default"]
    assert default["workers"] == 1 and default["servers"] >= 1
    r = cli("hosts", "list")
    assert r.code == 0 and "default" in r.out and "last_seen" in r.out
    assert cli("hosts", "list", token=token).code == 8  # admin only

    r = cli("tokens", "revoke", str(token_id), "--json")
    assert r.code == 0 and r.json == {"revoked": {"token_id": token_id}}
    r = cli("snapshots", "list", token=token)
    assert r.code == 7 and "revoked" in r.err.lower()


def test_failed_operation_and_error_exit_codes(cli: Cli, tmp_path: Path) -> None:
    # A state that does not exist: the capture fails, and --wait says so with exit 1.
    server_id = _server(cli, tmp_path / "missing", name="gone")
    _, token = _token(cli, "acme")
    _, reader = _token(cli, "acme", "read")
    r = cli("snapshots", "create", "--server-id", str(server_id), "--name", "x", "--wait",
            "--json", token=token)
    assert r.code == 1, (r.out, r.err)
    assert r.json["status"] == "failed" and r.json["error"]["message"]
    assert "failed" in r.err

    r = cli("snapshots", "restore", str(r.json["id"]), "--json", token=token)
    assert r.code == 6
    assert r.json["error"]["code"] == "snapshot_not_available"
    assert "only available snapshots" in r.err

    r = cli("snapshots", "show", "999999", token=token)
    assert r.code == 9 and "Snapshot 999999 not found." in r.err
    r = cli("snapshots", "create", "--server-id", str(server_id), "--name", "x", token=reader)
    assert r.code == 8 and "write scope" in r.err
    r = cli("snapshots", "create", "--server-id", str(server_id), "--name", " ", token=token)
    assert r.code == 5 and "name" in r.err
    assert cli("servers", "remove", "999999").code == 9
    assert cli("snapshots", "list", token="snp_not-a-real-token-000000").code == 7
    assert cli("snapshots", "show", "abc").code == 2


def test_configuration(cli: Cli, tmp_path: Path) -> None:
    r = cli("servers", "list", env={"SNAPCTL_URL": "", "SNAPCTL_TOKEN": ""})
    assert r.code == 3 and "SNAPCTL_URL" in r.err
    # Nothing listens on port 9 of loopback.
    r = cli("servers", "list", url="http://127.0.0.1:9")
    assert r.code == 4 and "cannot reach" in r.err
    config = cli.home / ".config" / "snapctl" / "config.toml"
    config.parent.mkdir(parents=True)
    from tests.e2e.service import ADMIN_TOKEN

    config.write_text(f'url = "{cli.url}"\ntoken = "{ADMIN_TOKEN}"\n')
    r = cli("--json", "servers", "list", env={"SNAPCTL_URL": "", "SNAPCTL_TOKEN": ""})
    assert r.code == 0, r.err
    assert "servers" in r.json
