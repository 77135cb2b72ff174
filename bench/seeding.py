"""Seeding our API through its real endpoints for bench/api.py: servers, a write token and
one snapshot per server, then checking what GET answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from processes import ADMIN_TOKEN

# One snapshot each (a server runs one operation at a time): the list is a page of 50.
SERVERS = 50


@dataclass
class Seeded:
    token: str
    snapshot_id: int
    snapshots: int
    body: bytes
    list_body: bytes


def _post(client: httpx.Client, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 201:
        raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
    data: dict[str, Any] = r.json()
    return data


def seed(base: str, tmp: Path) -> Seeded:
    """SERVERS servers of one account, a write token, one snapshot per server."""
    with httpx.Client(base_url=base, timeout=10) as c:
        tok = _post(c, "/api/v1/tokens/", {"account": "bench", "scope": "write"}, ADMIN_TOKEN)
        token = str(tok["token"])
        snap_ids = []
        for i in range(SERVERS):
            state = tmp / f"server-{i}"
            state.mkdir()
            srv = _post(
                c,
                "/api/v1/servers/",
                {
                    "name": f"bench-server-{i:02d}",
                    "account": "bench",
                    "state": {"kind": "directory", "path": str(state)},
                    "power": {"kind": "none"},
                },
                ADMIN_TOKEN,
            )
            snap = _post(
                c,
                "/api/v1/snapshots/",
                {
                    "server_id": srv["id"],
                    "name": f"before-update-{i:02d}",
                    "description": "Snapshot before system update",
                    "stop_server": False,
                },
                token,
            )
            snap_ids.append(int(snap["id"]))
        one = c.get(
            f"/api/v1/snapshots/{snap_ids[0]}/", headers={"Authorization": f"Bearer {token}"}
        )
        if one.status_code != 200:
            raise RuntimeError(f"GET one snapshot answered {one.status_code}: {one.text[:300]}")
        listed = check_list(c, token, len(snap_ids))
        return Seeded(token, snap_ids[0], len(snap_ids), one.content, listed)


def check_list(c: httpx.Client, token: str, expected: int) -> bytes:
    """The list we load-test answers what we seeded (so we do not time an error page);
    its body."""
    r = c.get("/api/v1/snapshots/", headers={"Authorization": f"Bearer {token}"})
    body = r.json() if r.status_code == 200 else {}
    got = len(body.get("snapshots", []))
    total = body.get("meta", {}).get("total")
    if r.status_code != 200 or got != expected or total != expected:
        raise RuntimeError(f"GET the list answered {r.status_code} with {got} items, total {total}")
    return r.content
