"""PUT/GET/DELETE /servers/{id}/schedule/: bodies, next_run_at, the server object, errors."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from starlette.testclient import TestClient

from shared import cron
from shared.schemas import rfc3339
from tests.support.api import ApiHelper

BODY: dict[str, Any] = {
    "cron": "0 3 * * *", "timezone": "Europe/Berlin",
    "retention": {"last": 2, "hourly": 0, "daily": 2, "weekly": 1, "monthly": 0},
    "stop_server": False,
}


def test_put_get_delete(client: TestClient, api: ApiHelper) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    url = f"/api/v1/servers/{server['id']}/schedule/"
    assert client.get(url, headers=headers).status_code == 404
    before = time.time()
    r = client.put(url, json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    got = r.json()
    nxt = datetime.strptime(got.pop("next_run_at"), "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=ZoneInfo("UTC"))
    local = nxt.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute) == (3, 0)
    assert 0 < nxt.timestamp() - before <= 25 * 3600
    assert got.pop("created_at") == got.pop("updated_at")
    assert got == {"server_id": server["id"], **BODY, "last_run": None}
    assert client.get(url.rstrip("/"), headers=headers).json()["cron"] == "0 3 * * *"

    # On the server object too, for the account and the admin, and in the listing.
    mine = client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()
    assert mine["schedule"]["next_run_at"] == r.json()["next_run_at"]
    assert mine["schedule"]["last_run"] is None
    listed = client.get("/api/v1/servers/", headers=api.admin).json()["servers"]
    assert listed[0]["schedule"]["timezone"] == "Europe/Berlin"

    # Replace: defaults apply (UTC), created_at stays.
    r = client.put(url, json={"cron": "*/15 * * * *", "retention": {"last": 5}},
                   headers=headers)
    assert r.status_code == 200
    again = r.json()
    assert (again["timezone"], again["stop_server"], again["retention"]["last"]) == (
        "UTC", False, 5)
    quarter = datetime.strptime(again["next_run_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=ZoneInfo("UTC"))
    assert quarter.minute % 15 == 0 and quarter.second == 0
    assert 0 < quarter.timestamp() - time.time() <= 15 * 60

    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).status_code == 404
    assert client.delete(url, headers=headers).status_code == 404
    assert client.get(f"/api/v1/servers/{server['id']}/", headers=headers).json()[
        "schedule"] is None


@pytest.mark.parametrize("body,field", [
    ({**BODY, "cron": "0 3 * *"}, "cron"),
    ({**BODY, "cron": "0 25 * * *"}, "cron"),
    ({**BODY, "cron": ""}, "cron"),
    ({**BODY, "cron": 5}, "cron"),
    ({**BODY, "timezone": "Europe/Atlantis"}, "timezone"),
    ({**BODY, "timezone": "../../../etc/passwd"}, "timezone"),
    # files of the zone database's directory that name no zone of it: the host's own zone
    # (another host of the fleet may have another), leap-second clocks (runs 27 s late)
    ({**BODY, "timezone": "localtime"}, "timezone"),
    ({**BODY, "timezone": "posixrules"}, "timezone"),
    ({**BODY, "timezone": "right/Europe/Berlin"}, "timezone"),
    ({**BODY, "retention": {"last": 0}}, "retention"),
    ({**BODY, "retention": {"last": 3, "daily": 3}}, "retention"),
    ({**BODY, "retention": {"last": -1, "daily": 2}}, "retention.last"),
    ({**BODY, "retention": {"yearly": 1}}, "retention.yearly"),
    ({**BODY, "stop_server": "yes"}, "stop_server"),
    ({**BODY, "every": "day"}, "every"),
    ({"timezone": "UTC", "retention": {"last": 1}}, "cron"),
    ({"cron": "0 3 * * *"}, "retention"),
])
def test_bad_bodies_name_the_field_and_change_nothing(
    client: TestClient, api: ApiHelper, body: dict[str, Any], field: str
) -> None:
    server = api.server("acme")
    headers = api.headers("acme")
    url = f"/api/v1/servers/{server['id']}/schedule/"
    r = client.put(url, json=body, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["message"].startswith(f"{field}"), err
    assert client.get(url, headers=headers).status_code == 404


def test_scope_and_tenancy(client: TestClient, api: ApiHelper) -> None:
    server = api.server("acme")
    url = f"/api/v1/servers/{server['id']}/schedule/"
    assert client.put(url, json=BODY, headers=api.headers("acme", "read")).status_code == 403
    other = api.headers("globex")
    r = client.put(url, json=BODY, headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.put(url, json=BODY, headers=api.headers("acme")).status_code == 200
    assert client.get(url, headers=other).status_code == 404
    assert client.delete(url, headers=other).status_code == 404
    assert client.get(url, headers=api.headers("acme", "read")).status_code == 200
    assert client.put("/api/v1/servers/9999/schedule/", json=BODY,
                      headers=api.admin).status_code == 404


def test_deleting_the_server_removes_its_schedule(client: TestClient, api: ApiHelper,
                                                  store: Any) -> None:
    server = api.server("acme")
    url = f"/api/v1/servers/{server['id']}/schedule/"
    assert client.put(url, json=BODY, headers=api.admin).status_code == 200
    assert store.due_schedules(10**12) == [server["id"]]
    assert client.delete(f"/api/v1/servers/{server['id']}/", headers=api.admin).status_code == 204
    assert store.due_schedules(10**12) == []


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_next_run_is_by_the_redis_clock_not_the_web_hosts(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch, skew: float,
) -> None:
    # The scheduler on every host goes by Redis's clock; PUT planned the first slot by the
    # web host's: an hour behind, a slot already past (an off-slot run at once); an hour
    # ahead, the coming slots skipped.
    server = api.server("acme")
    h = api.headers("acme")
    expr = "*/10 * * * *"

    def expected() -> str | None:
        seconds, _micros = redis_client.time()
        return rfc3339(cron.next_after(expr, "UTC", float(seconds)))

    before = expected()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)  # the web host's clock
    r = client.put(f"/api/v1/servers/{server['id']}/schedule/",
                   json={"cron": expr, "retention": {"last": 1}}, headers=h)
    monkeypatch.undo()
    assert r.status_code == 200, r.text
    assert r.json()["next_run_at"] in (before, expected()), r.json()
