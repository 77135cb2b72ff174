"""End to end: the real web process, a real Dramatiq worker process, a real redis-server and
real files. Create reaches `available`, restore brings changed files back exactly, delete
reclaims the storage, and power drivers run in the order the SPEC promises.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.flow import add_server, restore, snapshot, wait_operation
from tests.e2e.service import Service, wait_until
from tests.engine.treecmp import assert_same


def _make_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("listen 80\n" * 100)
    (root / "var" / "lib").mkdir(parents=True)
    (root / "var" / "lib" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "empty").mkdir()
    (root / "link").symlink_to("/etc/passwd")
    os.chmod(root / "etc" / "app.conf", 0o640)


def _objects(repo: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(repo / "data"))


def test_create_restore_delete_round_trip(service: Service, states: Path, tmp_path: Path) -> None:
    state = states / "web"
    _make_tree(state)
    reference = tmp_path / "reference"
    subprocess.run(["cp", "-a", str(state), str(reference)], check=True)
    client = service.client()
    server = add_server(client, str(state))

    snap = snapshot(client, server["id"], name="before-update-snapshot")
    apparent = sum(p.stat().st_size for p in state.rglob("*") if p.is_file() and not p.is_symlink())
    assert snap["size_mb"] == round(apparent / 1024 / 1024, 2)
    assert snap["progress"] == 100
    assert snap["completed_at"] is not None
    assert _objects(service.repository) > 0

    # The tenant changes everything they can.
    (state / "etc" / "app.conf").write_text("hacked\n")
    (state / "var" / "lib" / "data.bin").unlink()
    (state / "new-file").write_text("added after the snapshot")
    (state / "empty").rmdir()

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["server"] == {"id": server["id"], "name": "web-server-01", "status": "restoring"}
    op = wait_operation(client, body["operation_id"])
    assert op["status"] == "succeeded", op
    assert op["progress"] == 100
    assert_same(reference, state)
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"

    resp = client.delete(f"/snapshots/{snap['id']}/")
    assert resp.status_code == 204
    ids = [s["id"] for s in client.get("/snapshots/").json()["snapshots"]]
    assert snap["id"] not in ids
    delete_ops = client.get("/operations/", params={"server_id": server["id"]}).json()
    delete_op = next(o for o in delete_ops["operations"] if o["type"] == "snapshot.delete")
    assert wait_operation(client, delete_op["id"])["status"] == "succeeded"
    wait_until(lambda: _objects(service.repository) == 0, timeout=10, what="reclaimed storage")


def _power(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    flag, log = tmp_path / "running", tmp_path / "power.log"
    flag.touch()
    power = {
        "kind": "command",
        "stop": f"echo stop >> {log}; rm -f {flag}",
        "start": f"echo start >> {log}; touch {flag}",
        "status": f"test -e {flag}",
    }
    return power, flag, log


def test_restore_stops_then_starts_a_running_server(
    service: Service, states: Path, tmp_path: Path
) -> None:
    state = states / "game"
    _make_tree(state)
    power, flag, log = _power(tmp_path)
    client = service.client()
    server = add_server(client, str(state), power=power, name="game-01")
    snap = snapshot(client, server["id"])
    (state / "etc" / "app.conf").write_text("changed")

    op = restore(client, snap["id"])
    assert op["status"] == "succeeded", op
    assert log.read_text().split() == ["stop", "start"]
    assert flag.exists()
    assert (state / "etc" / "app.conf").read_text() == "listen 80\n" * 100
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"


def test_restore_with_start_after_false_leaves_it_stopped(
    service: Service, states: Path, tmp_path: Path
) -> None:
    state = states / "db"
    _make_tree(state)
    power, flag, log = _power(tmp_path)
    client = service.client()
    server = add_server(client, str(state), power=power, name="db-01")
    snap = snapshot(client, server["id"])

    op = restore(client, snap["id"], start_after=False)
    assert op["status"] == "succeeded", op
    assert log.read_text().split() == ["stop"]
    assert not flag.exists()
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "stopped"


def test_stop_server_on_create_stops_and_starts_around_the_capture(
    service: Service, states: Path, tmp_path: Path
) -> None:
    state = states / "app"
    _make_tree(state)
    power, flag, log = _power(tmp_path)
    client = service.client()
    server = add_server(client, str(state), power=power, name="app-01")
    snapshot(client, server["id"], stop_server=True)
    assert log.read_text().split() == ["stop", "start"]
    assert flag.exists()


def test_failed_stop_leaves_a_clear_error_and_the_state_untouched(
    service: Service, states: Path, tmp_path: Path
) -> None:
    state = states / "stuck"
    _make_tree(state)
    flag = tmp_path / "running"
    flag.touch()
    client = service.client()
    power = {
        "kind": "command",
        "stop": "echo 'unit is busy' >&2; exit 1",
        "start": f"touch {flag}",
        "status": f"test -e {flag}",
    }
    server = add_server(client, str(state), power=power, name="stuck-01")
    snap = snapshot(client, server["id"])
    (state / "etc" / "app.conf").write_text("current")

    op = restore(client, snap["id"])
    assert op["status"] == "failed"
    assert op["error"]["code"] == "power_failed"
    assert "unit is busy" in op["error"]["message"]
    assert (state / "etc" / "app.conf").read_text() == "current"
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"


def test_image_server_round_trip(service: Service, states: Path) -> None:
    image = states / "disk.img"
    with image.open("wb") as fh:
        fh.write(os.urandom(2 * 1024 * 1024))
        fh.seek(8 * 1024 * 1024)
        fh.write(b"tail")
    original = image.read_bytes()
    client = service.client()
    server = add_server(client, str(image), kind="image", name="vm-01")
    snap = snapshot(client, server["id"])
    assert snap["size_mb"] == round(len(original) / 1024 / 1024, 2)
    with image.open("r+b") as fh:
        fh.seek(1024 * 1024)
        fh.write(b"\xff" * 4096)
    op = restore(client, snap["id"])
    assert op["status"] == "succeeded", op
    assert image.read_bytes() == original
