"""Metrics and logs of real processes: a worker's jobs in GET /metrics, several web
processes in one scrape (prometheus_client's multi-process mode), and LOG_FORMAT=json
lines that carry the ids of what they are about."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.flow import add_server, snapshot
from tests.e2e.service import BIN, Service, wait_until
from tests.support.ports import free_port


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(f"{url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("[") and "dramatiq.MainProcess" in line:
            continue  # Dramatiq's main process logs before our code is loaded
        out.append(json.loads(line))  # every other line is one JSON object
    return out


def test_jobs_show_in_metrics_and_json_logs_carry_their_ids(tmp_path: Path) -> None:
    state = tmp_path / "srv"
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "app.conf").write_bytes(os.urandom(300_000))
    with Service.running(tmp_path / "svc", LOG_FORMAT="json") as svc:
        client = svc.client()
        server = add_server(client, str(state))
        snap = snapshot(client, server["id"], name="first")
        snapshot(client, server["id"], name="second")  # nothing changed: all deduplicated
        resp = client.get(f"/snapshots/{snap['id']}/", headers={"X-Request-Id": "req-abc-123"})
        assert resp.status_code == 200

        m = scrape(svc.url)
        ops = ("snapshots_operations_total",
               (("status", "succeeded"), ("type", "snapshot.create")))
        assert m[ops] == 2
        dur = ("snapshots_operation_duration_seconds_count", (("type", "snapshot.create"),))
        assert m[dur] == 2
        assert m[("snapshots_read_bytes_total", ())] >= 300_000
        assert 0 < m[("snapshots_stored_bytes_total", ())] < 2 * 300_000
        # The second capture stored only its manifest: the rest counts as deduplicated.
        assert m[("snapshots_deduplicated_bytes_total", ())] >= 290_000
        assert m[("snapshots_repository_bytes", ())] > 0
        assert m[("snapshots_live_workers", (("host", "default"),))] == 1
        assert m[("snapshots_queue_depth", (("queue", "host.default"),))] == 0

        web = json_lines(svc.root / "web.log")
        access = [r for r in web if r.get("request_id") == "req-abc-123"]
        assert len(access) == 1, web[-5:]
        line = access[0]
        assert line["logger"] == "api.access" and line["level"] == "INFO"
        assert line["method"] == "GET" and line["status"] == 200
        assert line["route"] == "/api/v1/snapshots/{snapshot_id}/"
        assert line["account"] == "*" and line["duration_ms"] >= 0
        assert any(r.get("message", "").startswith("Started server process") for r in web)
        assert not any(r["logger"] == "uvicorn.access" for r in web)  # ours says it all
        queued = [r for r in web if r.get("status") == "queued"]
        assert queued and all("operation_id" in r and "request_id" in r for r in queued)

        worker = json_lines(svc.root / "worker0.log")
        op_id = snap["operation_id"]
        mine = [r for r in worker if r.get("operation_id") == op_id]
        assert {r.get("status") for r in mine} >= {"running", "succeeded"}, mine
        for r in mine:
            assert r["account"] == "acme" and r["server_id"] == server["id"], r


def test_several_web_processes_report_every_request_in_one_scrape(tmp_path: Path) -> None:
    """uvicorn --workers 2 with PROMETHEUS_MULTIPROC_DIR: whichever process answers the
    scrape counts the requests that both answered."""
    svc = Service(tmp_path / "svc")
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    svc.extra_env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    svc.redis.start()
    port = free_port()
    web = svc._spawn("web2", [str(BIN / "uvicorn"), "--factory", "api.app:create_app",
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "2"])
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="two web processes")
        wait_until(lambda: len(list(multiproc.glob("*.db"))) >= 2, timeout=30,
                   what="both processes to write metrics")
        for _ in range(40):  # a new connection each, so both processes answer some
            resp = httpx.get(f"{url}/readyz", headers={"Connection": "close"}, timeout=5)
            assert resp.status_code == 200
        m = scrape(url)
        key = ("snapshots_http_requests_total",
               (("method", "GET"), ("route", "/readyz/"), ("status", "200")))
        assert m[key] == 40
        pids = {p.name.split("_")[-1] for p in multiproc.glob("counter_*.db")}
        assert len(pids) == 2, pids
    finally:
        Service.kill(web)
        svc.redis.stop()
        print(svc.logs())
