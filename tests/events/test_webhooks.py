"""Webhooks end to end: the real web process, a real Dramatiq worker (dispatcher thread and
delivery actor) and a real HTTP receiver on loopback. Signatures, account scoping,
retries with backoff, and the delivery attempts as the API shows them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from shared.webhooks import sign, verify
from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import Service, wait_until
from tests.events.receiver import Receiver
from tests.support.api import ApiHelper


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service.running(tmp_path_factory.mktemp("service"), SNAPSHOTS_WEBHOOK_BACKOFF="0.2",
                         SNAPSHOTS_WEBHOOK_ATTEMPTS="3") as svc:
        yield svc


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver({"/flaky": [500, 500, 200], "/down": [503]}).start()
    yield r
    r.stop()


def _hook(admin: httpx.Client, account: str, url: str) -> dict[str, Any]:
    r = admin.post("/webhooks/", json={"account": account, "url": url})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _deliveries(admin: httpx.Client, hook_id: int) -> list[dict[str, Any]]:
    r = admin.get(f"/webhooks/{hook_id}/deliveries/")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["deliveries"]
    return items


def test_events_are_posted_signed_and_retried(
    service: Service, receiver: Receiver, tmp_path: Path
) -> None:
    admin = service.client()
    ok = _hook(admin, "acme", f"{receiver.url}/ok")
    flaky = _hook(admin, "acme", f"{receiver.url}/flaky")
    down = _hook(admin, "globex", f"{receiver.url}/down")
    assert ok["secret"].startswith("whsec_") and ok["account"] == "acme"
    # The secret is shown once.
    listed = admin.get("/webhooks/").json()["webhooks"]
    assert {h["id"] for h in listed} == {ok["id"], flaky["id"], down["id"]}
    assert all("secret" not in h for h in listed)
    assert "secret" not in admin.get(f"/webhooks/{ok['id']}/").json()

    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "f").write_text("x")
    (tmp_path / "globex").mkdir()
    acme = add_server(admin, str(tmp_path / "acme"), account="acme")
    globex = add_server(admin, str(tmp_path / "globex"), account="globex", name="g")
    snap = admin.post("/snapshots/", json={"server_id": acme["id"], "name": "s"}).json()
    assert wait_operation(admin, snap["operation_id"])["status"] == "succeeded"
    admin.post("/snapshots/", json={"server_id": globex["id"], "name": "g"})

    hits = wait_until(
        lambda: (h := receiver.at("/ok")) and any(
            json.loads(x.body)["type"] == "snapshot.available" for x in h) and h,
        timeout=20, what="snapshot.available at /ok")
    for hit in hits:
        event = json.loads(hit.body)
        assert event["account"] == "acme"  # never another account's events
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["x-event-id"] == event["id"]
        assert hit.headers["x-event-type"] == event["type"]
        assert verify(ok["secret"], hit.headers["x-signature"], hit.body, now=int(time.time()))
        assert not verify(flaky["secret"], hit.headers["x-signature"], hit.body,
                          now=int(time.time()))
    # Two worker threads deliver, so the order of arrival is not the order of events.
    by_type = {json.loads(h.body)["type"]: json.loads(h.body) for h in hits}
    assert {"snapshot.created", "snapshot.available"} <= set(by_type)
    assert by_type["snapshot.created"]["snapshot_id"] == snap["id"]

    # /flaky answers 500 twice, then 200: three attempts, with backoff between them.
    def flaky_created() -> dict[str, Any] | None:
        for d in _deliveries(admin, flaky["id"]):
            if d["event_type"] == "snapshot.created" and d["status"] == "delivered":
                return d
        return None

    d = wait_until(flaky_created, timeout=20, what="the flaky delivery")
    assert [a["status_code"] for a in d["attempts"]] == [500, 500, 200]
    assert [a["attempt"] for a in d["attempts"]] == [1, 2, 3]
    assert d["attempts"][0]["error"] == "the receiver answered HTTP 500"
    assert d["attempts"][2]["error"] is None and d["next_attempt_at"] is None
    bodies = {h.body for h in receiver.at("/flaky") if json.loads(h.body)["type"] ==
              "snapshot.created"}
    assert len(bodies) == 1  # the same event each time

    # /down never accepts: after SNAPSHOTS_WEBHOOK_ATTEMPTS attempts the delivery failed.
    def down_failed() -> dict[str, Any] | None:
        # Several events go to /down; wait for one whose delivery has ended, whichever.
        for d in _deliveries(admin, down["id"]):
            if d["status"] == "failed":
                return d
        return None

    d = wait_until(down_failed, timeout=20, what="the failed delivery")
    assert [a["status_code"] for a in d["attempts"]] == [503, 503, 503]

    assert admin.delete(f"/webhooks/{ok['id']}/").status_code == 204
    assert admin.get(f"/webhooks/{ok['id']}/deliveries/").status_code == 404
    assert admin.delete(f"/webhooks/{ok['id']}/").status_code == 404


def test_webhooks_are_admin_only_and_validated(service: Service) -> None:
    admin = service.client()
    token = admin.post("/tokens/", json={"account": "acme", "scope": "write"}).json()["token"]
    user = service.client(token)
    assert user.get("/webhooks/").status_code == 403
    assert user.post("/webhooks/", json={"account": "acme", "url": "http://x.test/"}
                     ).status_code == 403
    for body, field in (({"account": "acme", "url": "ftp://x.test/"}, "url"),
                        ({"account": "acme", "url": "not a url at all"}, "url"),
                        ({"account": "acme"}, "url"),
                        ({"account": "a b", "url": "http://x.test/"}, "account"),
                        ({"account": "acme", "url": "http://x.test/", "x": 1}, "x"),
                        # Accepted before, then every delivery failed (httpx refuses them).
                        *(({"account": "acme", "url": f"http://x.test:{port}/"}, "url")
                          for port in ("99999", "-1", "8o", "0"))):
        r = admin.post("/webhooks/", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["message"].startswith(field), r.text
    assert admin.get("/webhooks/999/deliveries/").status_code == 404


def test_signature_scheme() -> None:
    body = b'{"id":"1-0"}'
    header = sign("whsec_k", 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_k", header, body, now=1_700_000_100)
    assert not verify("whsec_k", header, body + b" ", now=1_700_000_100)
    assert not verify("whsec_k", header, body, now=1_700_001_000)  # too old: a replay
    assert not verify("whsec_k", "garbage", body, now=1_700_000_000)


def test_a_webhook_is_born_on_the_redis_clock_its_events_carry(
    client: TestClient, api: ApiHelper, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The dispatcher skips events older than the webhook (created_ms > the event's stream
    # id, which is Redis's clock); created_ms came from the web host's clock, so one an
    # hour ahead dropped every event of the account for the webhook's first hour.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the web host's clock
    r = client.post("/api/v1/webhooks/", json={"account": "acme", "url": "http://x.test/"},
                    headers=api.admin)
    monkeypatch.undo()
    assert r.status_code == 201, r.text
    created_ms = int(redis_client.hget(f"webhook:{r.json()['id']}", "created_ms") or 0)
    server = api.server("acme")
    api.snapshot(api.headers("acme"), server["id"])  # snapshot.created, just after
    newest: Any = redis_client.xrevrange("events", count=1)
    [(entry_id, fields)] = newest
    assert fields["type"] == "snapshot.created"
    assert created_ms <= int(str(entry_id).split("-")[0]), (created_ms, entry_id)
