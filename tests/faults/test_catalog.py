"""Catalog rebuild: Redis wiped (FLUSHALL), `python -m workers.catalog rebuild` brings back
every committed snapshot from the repository, with its server, name and times, and new ids
never collide with the rebuilt ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from tests.e2e.flow import add_server, snapshot, wait_operation
from tests.e2e.service import Service
from tests.faults.conftest import ServiceFactory


def _rebuild(svc: Service, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.catalog", "rebuild", *args],
        env=svc.env, capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_catalog_rebuild_after_flushall(make_service: ServiceFactory, states: Path) -> None:
    svc = make_service().start(workers=1)
    client = svc.client()
    paths = {}
    for name in ("web", "db"):
        paths[name] = states / name
        paths[name].mkdir()
        (paths[name] / "data.txt").write_text(f"{name} v1\n")
    web = add_server(client, str(paths["web"]), name="web-01")
    db = add_server(client, str(paths["db"]), name="db-01", account="beta")
    first = snapshot(client, web["id"], name="first")
    doomed = snapshot(client, web["id"], name="doomed")
    described = snapshot(client, db["id"], name="db", description="before the migration")
    resp = client.delete(f"/snapshots/{doomed['id']}/")
    assert resp.status_code == 204
    ops = client.get("/operations/?status=queued").json()["operations"]
    ops += client.get("/operations/?status=running").json()["operations"]
    for op in ops:
        wait_operation(client, op["id"])

    redis.Redis.from_url(svc.redis.url).flushall()
    assert client.get("/snapshots/").json()["meta"]["total"] == 0
    out = _rebuild(svc)
    assert "2 snapshots and 2 servers put back" in out, out

    listing = {s["id"]: s for s in client.get("/snapshots/").json()["snapshots"]}
    assert set(listing) == {first["id"], described["id"]}
    for before in (first, described):
        after = listing[before["id"]]
        for field in ("name", "description", "created_at", "server", "size_mb", "status"):
            assert after[field] == before[field], (field, after, before)
        assert abs(_epoch(after["completed_at"]) - _epoch(before["completed_at"])) <= 2
    servers = {s["id"]: s for s in client.get("/servers/").json()["servers"]}
    assert servers[web["id"]]["name"] == "web-01" and servers[web["id"]]["account"] == "acme"
    assert servers[db["id"]]["account"] == "beta"

    # The manifest recorded the server's state and power: a restore works at once.
    (paths["web"] / "data.txt").write_text("web v2\n")
    resp = client.post(f"/snapshots/{first['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert (paths["web"] / "data.txt").read_text() == "web v1\n"

    # --servers overrides what the manifests say (a server moved to another path).
    moved = states / "web-moved"
    moved.mkdir()
    spec: dict[str, Any] = {str(web["id"]): {"state": {"kind": "directory",
                                                     "path": str(moved)},
                                           "power": {"kind": "none"}}}
    (svc.root / "servers.json").write_text(json.dumps(spec))
    out = _rebuild(svc, "--servers", str(svc.root / "servers.json"))
    assert "0 snapshots and 0 servers put back, 2 snapshots already present" in out, out
    resp = client.post(f"/snapshots/{first['id']}/restore/")
    assert resp.status_code == 200, resp.text
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    assert (moved / "data.txt").read_text() == "web v1\n"

    # New ids start above the rebuilt ones.
    new_path = states / "new"
    new_path.mkdir()
    new = add_server(client, str(new_path), name="new")
    assert new["id"] > max(web["id"], db["id"])
    fresh = snapshot(client, new["id"], name="fresh")
    assert fresh["id"] > max(first["id"], doomed["id"], described["id"])


def _epoch(stamp: str) -> int:
    from calendar import timegm
    from time import strptime

    return timegm(strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
