"""GET /metrics, scraped and parsed with prometheus_client's own parser.

Here the web process's side (in-process app, the session's real redis-server); the
workers' side, several web processes (multi-process mode) and the logs are in
tests/e2e/test_observability.py, with real processes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from api.app import create_app
from shared.settings import Settings
from tests.support.api import ApiHelper, bearer


def scrape(client: TestClient, **headers: str) -> dict[str, Any]:
    """{metric family name: {(sample name, sorted labels): value}}"""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(resp.text):
        out[family.name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
        }
    return out


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return float(families[family].get((sample, tuple(sorted(labels.items()))), 0.0))


def test_http_requests_are_counted_by_route_template_and_status(
    client: TestClient, api: ApiHelper
) -> None:
    token = api.token("acme", "read")
    for _ in range(3):
        assert client.get("/api/v1/snapshots/", headers=bearer(token)).status_code == 200
    for snap_id in (998, 999):  # two ids, one series: the route's template labels it
        assert client.get(f"/api/v1/snapshots/{snap_id}", headers=bearer(token)).status_code == 404
    assert client.get("/api/v1/snapshots/").status_code == 401
    assert client.get("/no/such/route").status_code == 404

    m = scrape(client)
    name = "snapshots_http_requests"
    assert value(m, name, f"{name}_total", method="GET", route="/api/v1/snapshots/",
                 status="200") == 3
    assert value(m, name, f"{name}_total", method="GET",
                 route="/api/v1/snapshots/{snapshot_id}/", status="404") == 2
    assert value(m, name, f"{name}_total", method="GET", route="/api/v1/snapshots/",
                 status="401") == 1
    assert value(m, name, f"{name}_total", method="GET", route="unmatched", status="404") == 1
    assert not any("998" in str(key) for key in m[name])
    lat = "snapshots_http_request_duration_seconds"
    count = value(m, lat, f"{lat}_count", method="GET", route="/api/v1/snapshots/")
    inf = value(m, lat, f"{lat}_bucket", method="GET", route="/api/v1/snapshots/", le="+Inf")
    assert count == inf == 4  # 3 answered, 1 refused: every answer has a latency
    assert value(m, lat, f"{lat}_sum", method="GET", route="/api/v1/snapshots/") > 0


def test_queue_depth_and_job_metrics_come_from_redis(
    client: TestClient, api: ApiHelper
) -> None:
    headers = api.headers("acme")
    for name in ("a", "b"):
        server = api.server("acme", name=name)
        resp = client.post("/api/v1/snapshots/", headers=headers,
                           json={"server_id": server["id"], "name": name})
        assert resp.status_code == 201, resp.text
    elsewhere = api.server("acme", name="c", host="hv-c")
    resp = client.post("/api/v1/snapshots/", headers=headers,
                       json={"server_id": elsewhere["id"], "name": "c"})
    assert resp.status_code == 201, resp.text
    m = scrape(client)
    # No worker runs here: every message waits in its host's queue, no host has a worker.
    assert value(m, "snapshots_queue_depth", "snapshots_queue_depth", queue="host.default") == 2
    assert value(m, "snapshots_queue_depth", "snapshots_queue_depth", queue="host.hv-c") == 1
    assert value(m, "snapshots_queue_depth", "snapshots_queue_depth", queue="host.hv-c.DQ") == 0
    assert value(m, "snapshots_queue_depth", "snapshots_queue_depth", queue="webhooks") == 0
    assert value(m, "snapshots_live_workers", "snapshots_live_workers", host="default") == 0
    assert value(m, "snapshots_live_workers", "snapshots_live_workers", host="hv-c") == 0
    for kind in ("read", "stored", "deduplicated"):
        assert f"snapshots_{kind}_bytes" in m
    assert "snapshots_repository_bytes" in m

    # Deleting a snapshot being created cancels its operation: counted as it ends.
    snap_id = client.get("/api/v1/snapshots/", headers=headers).json()["snapshots"][0]["id"]
    assert client.delete(f"/api/v1/snapshots/{snap_id}/", headers=headers).status_code == 204
    m = scrape(client)
    assert value(m, "snapshots_operations", "snapshots_operations_total",
                 type="snapshot.create", status="cancelled") == 1


def test_metrics_token_is_required_when_set(settings: Settings) -> None:
    app = create_app(replace(settings, metrics_token="scrape-secret-0123456789"))
    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/metrics")
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["error"]["code"] == "unauthorized"
        assert client.get("/metrics", headers=bearer("wrong-token-0123")).status_code == 401
        assert client.get("/metrics", headers=bearer(settings.admin_token or "")).status_code \
            == 401  # the admin token is not the scrape token
        m = scrape(client, Authorization="Bearer scrape-secret-0123456789")
        assert "snapshots_http_requests" in m
