"""A token revoked while a request's lookup of it is in flight: Redis answered the lookup
(the token was valid then) and the revocation's drop reached this process before the
answer was kept; the answer must not be kept for CACHE_TTL after the drop."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

from shared import keys
from tests.support.api import ApiHelper


def test_a_token_revoked_during_its_lookup_is_not_kept(
    app: Starlette, client: TestClient, api: ApiHelper, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = client.post("/api/v1/tokens/", json={"account": "acme", "scope": "read"},
                       headers=api.admin).json()
    svc = app.state.services
    store = svc.store
    real = store.get_token

    async def read_then_revoked(digest: str) -> Any:
        record = await real(digest)  # Redis answers: valid at this moment
        # The revocation lands now (another web process's DELETE): its record goes and
        # its token.revoked event reaches this process's cache before the answer is kept.
        redis_client.delete(keys.token(digest))
        svc.tokens.drop(digest)
        return record

    monkeypatch.setattr(store, "get_token", read_then_revoked)
    header = {"Authorization": f"Bearer {made['token']}"}
    # Its lookup began before the revocation: answering it is fair.
    assert client.get("/api/v1/snapshots/", headers=header).status_code == 200
    monkeypatch.setattr(store, "get_token", real)
    r = client.get("/api/v1/snapshots/", headers=header)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
