"""Small helpers for driving the HTTP API in tests (tokens, servers, snapshots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class ApiHelper:
    """Wraps a TestClient with the admin token; makes accounts, tokens and servers."""

    def __init__(self, client: TestClient, admin_token: str, state_root: Path) -> None:
        self.client = client
        self.admin_token = admin_token
        self.admin = bearer(admin_token)
        self.state_root = state_root
        self._servers = 0

    def token(self, account: str, scope: str = "write") -> str:
        r = self.client.post(
            "/api/v1/tokens/", json={"account": account, "scope": scope}, headers=self.admin
        )
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def headers(self, account: str, scope: str = "write") -> dict[str, str]:
        return bearer(self.token(account, scope))

    def server(self, account: str, name: str | None = None, **extra: Any) -> dict[str, Any]:
        self._servers += 1
        path = self.state_root / f"server-{self._servers}"
        path.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any] = {
            "name": name or f"web-server-{self._servers:02d}",
            "account": account,
            "state": {"kind": "directory", "path": str(path)},
            "power": {"kind": "none"},
        }
        body.update(extra)
        r = self.client.post("/api/v1/servers/", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        server: dict[str, Any] = r.json()
        return server

    def snapshot(
        self, headers: dict[str, str], server_id: int, name: str = "snap", **extra: Any
    ) -> dict[str, Any]:
        body = {"server_id": server_id, "name": name, **extra}
        r = self.client.post("/api/v1/snapshots/", json=body, headers=headers)
        assert r.status_code == 201, r.text
        snap: dict[str, Any] = r.json()
        return snap
