"""The repository misbehaves: it fills up mid-capture (a small tmpfs as the repository),
or one of its objects is corrupted. The job fails with a clear code, commits nothing,
frees what it half-stored, and never touches the server's state."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import ServiceFactory
from tests.faults.faults import objects


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (needs root); unmounted after the service is stopped."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def test_storage_full_fails_cleanly_and_frees_space(
    small_fs: Path, make_service: ServiceFactory, states: Path
) -> None:
    repo = small_fs / "repository"
    svc = make_service(SNAPSHOTS_STORAGE_URL=f"file://{repo}").start(workers=1)
    client = svc.client()
    state = states / "web"
    state.mkdir()
    (state / "small.txt").write_text("fits\n")
    (state / "big.bin").write_bytes(os.urandom(24 << 20))  # incompressible, 3x the space
    server = add_server(client, str(state))
    before = describe(state)

    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "too-big"})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    op = wait_operation(client, created["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "storage_full", op
    assert op["error"]["message"]
    snap = client.get(f"/snapshots/{created['id']}/").json()
    assert snap["status"] == "failed" and snap["error"]["code"] == "storage_full", snap
    assert snap["size_mb"] is None
    # Nothing committed, the partial data freed, the server untouched.
    assert not (repo / "snapshots" / str(created["id"])).exists()
    wait_until(lambda: not objects(repo), timeout=30, what="the partial data to be freed")
    assert describe(state) == before
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"

    # With the space back, a state that fits is captured.
    (state / "big.bin").unlink()
    assert snapshot(client, server["id"], name="fits")["status"] == "available"


def test_corrupted_object_refuses_restore_and_keeps_state(
    make_service: ServiceFactory, states: Path
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    state = states / "web"
    state.mkdir()
    (state / "config.txt").write_text("unchanged\n")
    (state / "data.bin").write_bytes(os.urandom(3 << 20))
    server = add_server(client, str(state))
    snap = snapshot(client, server["id"], name="will-rot")
    # The tenant changes data.bin, so the restore has to read its chunks back...
    (state / "data.bin").write_bytes(b"current data\n")
    current = describe(state)
    # ...and one of them rots in the repository (same size, one byte flipped).
    # The largest object is a chunk of data.bin (random, so chunks of 256 KiB and more);
    # config.txt is unchanged and reused in place without being read back.
    stored = objects(svc.repository)
    victim = max(stored, key=lambda key: stored[key][1])
    path = svc.repository / victim
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    op = wait_operation(client, resp.json()["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "snapshot_corrupt", op
    assert describe(state) == current
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    leftovers = [p.name for p in state.parent.iterdir() if ".restore-" in p.name]
    assert leftovers == []


def test_restore_onto_a_full_state_filesystem_fails_at_once_with_state_full(
    small_fs: Path, make_service: ServiceFactory
) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    state = small_fs / "web"
    state.mkdir()
    (state / "config.txt").write_text("v1\n")
    (state / "data.bin").write_bytes(os.urandom(5 << 20))
    server = add_server(client, str(state))
    snap = snapshot(client, server["id"], name="before")
    # The tenant replaces data.bin: the rebuild needs 5 MiB more beside the current 5 MiB
    # of an 8 MiB filesystem.
    (state / "data.bin").write_bytes(os.urandom(5 << 20))
    current = describe(state)

    resp = client.post(f"/snapshots/{snap['id']}/restore/")
    assert resp.status_code == 200, resp.text
    op = wait_operation(client, resp.json()["operation_id"], timeout=60)
    assert op["status"] == "failed" and op["error"]["code"] == "state_full", op
    assert "bytes free" in op["error"]["message"] and "needs up to" in op["error"]["message"]
    detail = client.get(f"/operations/{op['id']}/").json()
    started = datetime.fromisoformat(detail["started_at"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(detail["finished_at"].replace("Z", "+00:00"))
    assert (finished - started).total_seconds() <= 5, detail  # at once: no retries
    assert describe(state) == current
    assert client.get(f"/servers/{server['id']}/").json()["status"] == "running"
    assert [p.name for p in small_fs.iterdir()] == ["web"]
