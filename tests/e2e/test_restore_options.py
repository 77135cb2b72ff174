"""Restore into another server and restore with a safety snapshot, with a real worker
process: the target gets the snapshot bit for bit through its own power driver, the
safety snapshot holds the state the restore replaced, and a safety snapshot that fails
stops the restore before it touches anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from tests.e2e.flow import add_server, restore, snapshot
from tests.e2e.service import Service
from tests.e2e.test_lifecycle import _make_tree
from tests.engine.treecmp import assert_same
from tests.support.streams import of_type


def _power(tmp: Path, name: str) -> dict[str, str]:
    """A command power driver whose runs are logged, 'running' while a flag file exists."""
    flag, log = tmp / f"{name}.running", tmp / f"{name}.power.log"
    flag.touch()
    return {"kind": "command", "stop": f"echo stop >> {log}; rm -f {flag}",
            "start": f"echo start >> {log}; touch {flag}", "status": f"test -e {flag}"}


def test_restore_into_another_server_makes_a_clone(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    src_state, dst_state = states / "src", states / "new-server"
    _make_tree(src_state)
    reference = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(src_state), str(reference)], check=True)
    source = add_server(client, str(src_state), name="web-01")
    target = add_server(client, str(dst_state), name="web-02", power=_power(tmp_path, "dst"))
    snap = snapshot(client, source["id"], name="golden")

    op = restore(client, snap["id"], server_id=target["id"])
    assert op["status"] == "succeeded", op
    assert (op["server_id"], op["source_server_id"]) == (target["id"], source["id"])
    assert_same(reference, dst_state)  # a new server, made from the snapshot
    assert_same(reference, src_state)  # the source is untouched
    assert (tmp_path / "dst.power.log").read_text().split() == ["stop", "start"]
    assert client.get(f"/servers/{target['id']}/").json()["status"] == "running"
    r = redis.Redis.from_url(service.redis.url, decode_responses=True)
    mine = [e for e in of_type(r, "restore.succeeded") if e["operation_id"] == str(op["id"])]
    assert [e["server_id"] for e in mine] == [str(target["id"])]
    clone = [e for e in of_type(r, "clone.succeeded") if e["operation_id"] == str(op["id"])]
    assert [e["server_id"] for e in clone] == [str(source["id"])]
    r.close()


def test_safety_snapshot_keeps_what_the_restore_replaced(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    state = states / "app"
    state.mkdir()
    (state / "data.txt").write_text("version 1\n")
    server = add_server(client, str(state), name="app-01")
    v1 = snapshot(client, server["id"], name="v1")
    (state / "data.txt").write_text("version 2, not snapshotted\n")
    (state / "new.txt").write_text("added later\n")
    before = tmp_path / "before"
    subprocess.run(["cp", "-a", str(state), str(before)], check=True)

    op = restore(client, v1["id"], safety_snapshot=True)
    assert op["status"] == "succeeded", op
    assert (state / "data.txt").read_text() == "version 1\n"
    assert not (state / "new.txt").exists()
    safety = client.get(f"/snapshots/{op['safety_snapshot_id']}/").json()
    assert (safety["origin"], safety["status"]) == ("safety", "available")
    # The safety snapshot is the state from just before: restoring it undoes the restore.
    back = restore(client, safety["id"])
    assert back["status"] == "succeeded", back
    assert_same(before, state, root_mtime=False)


def test_a_failed_safety_snapshot_stops_the_restore(
    service: Service, states: Path, tmp_path: Path
) -> None:
    client = service.client()
    state = states / "db"
    state.mkdir()
    (state / "data.txt").write_text("version 1\n")
    fail_flag = tmp_path / "hooks-fail"
    resp = client.post("/servers/", json={
        "name": "db-01", "account": "acme", "state": {"kind": "directory", "path": str(state)},
        "hooks": {"pre_snapshot": f"echo checking; test ! -e {fail_flag}"}})
    assert resp.status_code == 201, resp.text
    server = resp.json()
    v1 = snapshot(client, server["id"], name="v1")
    (state / "data.txt").write_text("version 2\n")
    fail_flag.touch()  # from now on the pre hook fails: no safety snapshot can be taken
    op = restore(client, v1["id"], safety_snapshot=True)
    assert op["status"] == "failed" and op["error"]["code"] == "hook_failed", op
    assert "safety snapshot could not be captured" in op["error"]["message"]
    [pre] = [h for h in op["hooks"] if h["hook"] == "pre_snapshot"]
    assert (pre["exit_code"], pre["timed_out"], pre["output"]) == (1, False, "checking\n")
    assert (state / "data.txt").read_text() == "version 2\n"  # nothing was restored
    safety = client.get(f"/snapshots/{op['safety_snapshot_id']}/").json()
    assert safety["status"] == "failed" and safety["error"]["code"] == "hook_failed"
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
