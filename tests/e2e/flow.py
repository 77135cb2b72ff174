"""API steps the end-to-end tests share: register a server, snapshot it, wait for work."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.service import wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def add_server(
    client: httpx.Client,
    path: str,
    *,
    kind: str = "directory",
    power: dict[str, str] | None = None,
    account: str = "acme",
    name: str = "web-server-01",
    host: str = "default",
) -> dict[str, Any]:
    resp = client.post(
        "/servers/",
        json={
            "name": name,
            "account": account,
            "state": {"kind": kind, "path": path},
            "power": power or {"kind": "none"},
            "host": host,
        },
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_operation(client: httpx.Client, op_id: int, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        # A web process or Redis being restarted (the fault tests kill them) answers nothing
        # or 503 for a moment: ask again until the deadline; any other answer must be the
        # operation.
        try:
            resp = client.get(f"/operations/{op_id}/")
        except httpx.TransportError:
            return None
        if resp.status_code == 503:
            return None
        op: dict[str, Any] = resp.json()
        return op if op["status"] in TERMINAL else None

    # Asked every 50 ms: a GET is cheap, and each of the suite's hundreds of waits ends
    # 50 ms sooner on average than at wait_until's 0.1 s.
    result: dict[str, Any] = wait_until(done, timeout=timeout, interval=0.05,
                                        what=f"operation {op_id}")
    return result


def snapshot(
    client: httpx.Client, server_id: int, name: str = "snap", **extra: Any
) -> dict[str, Any]:
    resp = client.post("/snapshots/", json={"server_id": server_id, "name": name, **extra})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    op = wait_operation(client, created["operation_id"])
    assert op["status"] == "succeeded", op
    snap: dict[str, Any] = client.get(f"/snapshots/{created['id']}/").json()
    assert snap["status"] == "available", snap
    return snap


def restore(client: httpx.Client, snapshot_id: int, **body: Any) -> dict[str, Any]:
    resp = client.post(f"/snapshots/{snapshot_id}/restore/", json=body or None)
    assert resp.status_code == 200, resp.text
    return wait_operation(client, resp.json()["operation_id"])


def delete(client: httpx.Client, snapshot_id: int) -> dict[str, Any]:
    """DELETE a snapshot (204, no body) and wait for the delete operation it queued."""
    server_id = client.get(f"/snapshots/{snapshot_id}/").json()["server"]["id"]
    resp = client.delete(f"/snapshots/{snapshot_id}/")
    assert resp.status_code == 204, resp.text
    ops = client.get("/operations/", params={"server_id": server_id}).json()["operations"]
    (op_id,) = [o["id"] for o in ops
                if o["type"] == "snapshot.delete" and o["snapshot_id"] == snapshot_id]
    return wait_operation(client, op_id)
