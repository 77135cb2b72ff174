"""Per-token rate limits: a burst passes, then 429 rate_limited with Retry-After, and the
budget comes back at the configured rate; writes cost more; admin tokens are exempt by
default; two web processes (two apps on one Redis) share one budget per token."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from shared.settings import RateLimit, Settings, SettingsError
from tests.conftest import ADMIN_TOKEN
from tests.support.api import ApiHelper, bearer

# One request back every 2 s: nothing refills while a burst of a few ms runs.
SLOW = RateLimit(rate=0.5, burst=6, write_cost=3)


@pytest.fixture
def limited(settings: Settings) -> Iterator[tuple[TestClient, TestClient, ApiHelper]]:
    """Two apps (two web processes) on the same Redis, with the same limit."""
    limited_settings = replace(settings, rate_limit=SLOW)
    with TestClient(create_app(limited_settings), raise_server_exceptions=False) as one, \
            TestClient(create_app(limited_settings), raise_server_exceptions=False) as two:
        yield one, two, ApiHelper(one, ADMIN_TOKEN, settings.data_dir.parent / "servers")


def test_a_burst_passes_then_429_with_retry_after_then_the_budget_comes_back(
    limited: tuple[TestClient, TestClient, ApiHelper],
) -> None:
    client, _, api = limited
    token = bearer(api.token("acme", "read"))
    codes = [client.get("/api/v1/snapshots/", headers=token).status_code for _ in range(6)]
    assert codes == [200] * 6
    refused = client.get("/api/v1/snapshots/", headers=token)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "0.5 requests/s" in refused.json()["error"]["message"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2
    assert refused.headers["x-request-id"]
    # Refused requests cost nothing: after Retry-After, one request passes (one refilled).
    time.sleep(retry_after + 0.1)
    assert client.get("/api/v1/snapshots/", headers=token).status_code == 200
    assert client.get("/api/v1/snapshots/", headers=token).status_code == 429


def test_writes_cost_more_than_reads(limited: tuple[TestClient, TestClient, ApiHelper]) -> None:
    client, _, api = limited
    token = bearer(api.token("acme", "write"))
    body = {"server_id": 424242, "name": "x"}  # answers 404, and still costs a write
    assert client.post("/api/v1/snapshots/", headers=token, json=body).status_code == 404
    assert client.post("/api/v1/snapshots/", headers=token, json=body).status_code == 404
    assert client.post("/api/v1/snapshots/", headers=token, json=body).status_code == 429
    # 6 - 2 * 3 = 0 left: a read is refused too.
    assert client.get("/api/v1/snapshots/", headers=token).status_code == 429


def test_budgets_are_per_token_and_shared_by_every_web_process(
    limited: tuple[TestClient, TestClient, ApiHelper],
) -> None:
    one, two, api = limited
    first, second = bearer(api.token("acme", "read")), bearer(api.token("acme", "read"))
    for i in range(6):  # alternately on both processes: one budget
        assert (one if i % 2 else two).get("/api/v1/operations/", headers=first).status_code \
            == 200
    assert one.get("/api/v1/operations/", headers=first).status_code == 429
    assert two.get("/api/v1/operations/", headers=first).status_code == 429
    assert one.get("/api/v1/operations/", headers=second).status_code == 200


def test_admin_tokens_are_exempt_unless_configured(settings: Settings) -> None:
    with TestClient(create_app(replace(settings, rate_limit=SLOW))) as client:
        for _ in range(20):
            assert client.get("/api/v1/servers/", headers=bearer(ADMIN_TOKEN)).status_code == 200
    strict = replace(SLOW, limit_admin=True)
    with TestClient(create_app(replace(settings, rate_limit=strict))) as client:
        codes = [client.get("/api/v1/servers/", headers=bearer(ADMIN_TOKEN)).status_code
                 for _ in range(8)]
        assert codes[:6] == [200] * 6 and codes[6:] == [429, 429]


def test_unauthenticated_and_public_paths_are_not_limited(
    limited: tuple[TestClient, TestClient, ApiHelper],
) -> None:
    client, _, _ = limited
    assert all(client.get("/healthz").status_code == 200 for _ in range(10))
    assert all(client.get("/api/v1/snapshots/").status_code == 401 for _ in range(10))


def test_setting_is_parsed_and_bad_values_name_the_variable() -> None:
    parsed = Settings.from_env({"SNAPSHOTS_RATE_LIMIT": "20:100",
                                "SNAPSHOTS_RATE_LIMIT_WRITE_COST": "4"}).rate_limit
    assert parsed == RateLimit(rate=20.0, burst=100, write_cost=4, limit_admin=False)
    assert Settings.from_env({"SNAPSHOTS_RATE_LIMIT": "10"}).rate_limit == RateLimit(10.0, 10)
    assert Settings.from_env({}).rate_limit is None
    for bad in ("fast", "0:10", "5:0", "5:x"):
        with pytest.raises(SettingsError, match="SNAPSHOTS_RATE_LIMIT"):
            Settings.from_env({"SNAPSHOTS_RATE_LIMIT": bad})


def test_one_budget_however_the_header_spells_the_token(
    limited: tuple[TestClient, TestClient, ApiHelper],
) -> None:
    # The bucket was named by the Authorization header's bytes, and the scheme is
    # case-insensitive and the spaces free: every spelling of a token had a budget of its own.
    client, _, api = limited
    token = api.token("acme", "read")
    spellings = ["Bearer ", "bearer ", "BEARER ", "Bearer  ", "bEaReR ", "Bearer   "]
    codes = [client.get("/api/v1/snapshots/", headers={"Authorization": s + token}).status_code
             for s in spellings]
    assert codes == [200] * 6
    for spelling in ["beAREr ", "Bearer    ", "Bearer "]:
        r = client.get("/api/v1/snapshots/", headers={"Authorization": spelling + token})
        assert r.status_code == 429, spelling
    # Another token of the same account has its own budget.
    assert client.get("/api/v1/snapshots/", headers=bearer(api.token("acme", "read"))
                      ).status_code == 200
