"""healthz, readyz, OpenAPI, and behaviour while Redis is down."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from shared.responses import Snapshot
from shared.schemas import SnapshotCreate
from shared.settings import Settings
from tests.conftest import make_settings
from tests.support.api import ApiHelper, bearer
from tests.support.redis_proc import RedisProcess
from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import ACCESS_KEY, REGION, S3_BUCKET, SECRET_KEY, SeaweedProcess


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.headers["x-request-id"]


def test_readyz_ok(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


def test_readyz_storage_not_writable(redis_server: RedisProcess, tmp_path: Path) -> None:
    """A read-only filesystem under the repository (root ignores mode bits, not ro mounts)."""
    locked = tmp_path / "locked"
    (locked / "repo").mkdir(parents=True)
    settings = make_settings(redis_server.url_for_db(1), tmp_path / "data",
                             storage_url=f"file://{locked}/repo")
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                       check=True)
    else:
        locked.chmod(0o500)
    try:
        with TestClient(create_app(settings)) as c:
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["storage"] is False
            assert "not writable" in r.json()["storage_error"]
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=True)
        else:
            locked.chmod(0o700)


def test_readyz_storage_is_a_file(redis_server: RedisProcess, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    settings = make_settings(redis_server.url_for_db(1), tmp_path / "data",
                             storage_url=f"file://{blocker}/repo")
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {
            "status": "unavailable", "redis": True, "storage": False,
            "storage_error": f"storage directory {blocker}/repo is not writable"}


def test_openapi_document(client: TestClient) -> None:
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name in ["SnapshotCreate", "Snapshot", "SnapshotList", "RestoreRequest",
                 "RestoreAccepted", "Operation", "Server", "ServerCreate", "TokenCreate",
                 "Token", "ErrorEnvelope"]:
        assert name in schemas, name
    assert set(schemas["SnapshotCreate"]["required"]) == {"server_id", "name"}
    assert schemas["SnapshotCreate"]["properties"]["name"]["maxLength"] == 255
    assert set(schemas["Snapshot"]["properties"]) == set(Snapshot.__struct_fields__)
    assert set(SnapshotCreate.__struct_fields__) == set(schemas["SnapshotCreate"]["properties"])
    for path in ["/api/v1/snapshots/", "/api/v1/snapshots/{snapshot_id}/",
                 "/api/v1/snapshots/{snapshot_id}/restore/", "/api/v1/operations/",
                 "/api/v1/operations/{operation_id}/", "/api/v1/servers/",
                 "/api/v1/servers/{server_id}/", "/api/v1/tokens/",
                 "/api/v1/tokens/{token_id}/", "/healthz", "/readyz"]:
        assert path in doc["paths"], path

    # Every $ref resolves inside the document.
    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_redis_down_answers_503_and_recovers(tmp_path: Path) -> None:
    own = RedisProcess(tmp_path / "redis").start()
    try:
        settings = make_settings(own.url, tmp_path / "data")
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            api = ApiHelper(c, settings.admin_token or "", tmp_path / "servers")
            headers = api.headers("acme")
            server = api.server("acme")
            snap = api.snapshot(headers, server["id"])
            assert c.get("/api/v1/snapshots/", headers=headers).status_code == 200
            assert c.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 200
            own.kill()
            for method, path, body in [
                ("GET", "/api/v1/snapshots/", None),
                ("POST", "/api/v1/snapshots/", {"server_id": server["id"], "name": "x"}),
                ("GET", "/api/v1/servers/", None),
                ("GET", f"/api/v1/snapshots/{snap['id']}/", None),
                ("DELETE", f"/api/v1/snapshots/{snap['id']}/", None),
            ]:
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"]["code"] == "service_unavailable"
                assert r.headers["x-request-id"]
            # An unknown (uncached) token needs Redis too: 503, not 401 or 500.
            r = c.get("/api/v1/snapshots/", headers=bearer("snp_never-seen-before-token"))
            assert r.status_code == 503
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            assert c.get("/healthz").status_code == 200
            own.start()
            assert c.get("/readyz").status_code == 200
            r = c.get("/api/v1/snapshots/", headers=headers)
            assert r.status_code == 200, r.text
            r = c.get(f"/api/v1/snapshots/{snap['id']}/", headers=headers)
            assert r.status_code == 200 and r.json()["status"] == "in_progress"
            assert c.delete(f"/api/v1/snapshots/{snap['id']}/", headers=headers).status_code == 204
            r = c.post("/api/v1/snapshots/", json={"server_id": server["id"], "name": "x"},
                       headers=headers)
            assert r.status_code == 201, r.text
    finally:
        own.close()


def test_factory_generates_and_keeps_the_admin_token(
    redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_server.url_for_db(1))
    monkeypatch.setenv("SNAPSHOTS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SNAPSHOTS_ADMIN_TOKEN", raising=False)
    with TestClient(create_app()) as c:
        printed = capsys.readouterr().err
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        assert token in printed
        assert c.get("/api/v1/servers/", headers=bearer(token)).status_code == 200
    create_app()
    assert token not in capsys.readouterr().err  # printed once, at first start only


def test_openapi_document_validates_as_3_1(client: TestClient) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    doc = client.get("/api/v1/openapi.json").json()
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_readyz_names_the_bucket_on_s3(redis_server: RedisProcess, seaweed: SeaweedProcess,
                                       tmp_path: Path) -> None:
    """s3://: ready with the right credentials; 503 naming the bucket and the reason with
    wrong ones or a bucket that does not exist."""
    def ready(**overrides: object) -> tuple[int, dict[str, Any]]:
        values: dict[str, object] = {
            "storage_url": f"s3://{S3_BUCKET}/readyz", "aws_endpoint_url": seaweed.endpoint,
            "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY,
            "aws_region": REGION, **overrides}
        settings = make_settings(redis_server.url_for_db(1), tmp_path / "data", **values)
        with TestClient(create_app(settings)) as c:
            r = c.get("/readyz")
            return r.status_code, r.json()

    assert ready() == (200, {"status": "ok", "redis": True, "storage": True,
                             "storage_error": None})
    status, body = ready(aws_secret_access_key="wrong")
    assert status == 503 and body["storage"] is False
    assert f"bucket '{S3_BUCKET}'" in body["storage_error"]
    assert "access denied" in body["storage_error"]
    status, body = ready(storage_url="s3://no-such-bucket/x")
    assert status == 503 and "bucket 'no-such-bucket' does not exist" in body["storage_error"]


def test_readyz_probes_the_object_store_once_however_many_ask(
    settings: Settings, seaweed: SeaweedProcess
) -> None:
    # Every /readyz (no token needed) made its own probe: on s3:// a client, two GETs, a
    # PUT and a DELETE, in a thread of the pool the operations' enqueues need. 30 of them
    # at once were 120 requests to the store; now they share one probe for 5 s.
    proxy = S3Proxy(seaweed.endpoint).start()
    try:
        on_s3 = replace(settings, storage_url=f"s3://{S3_BUCKET}/readyz-{uuid.uuid4().hex}",
                        aws_endpoint_url=proxy.endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, aws_region=REGION)
        with TestClient(create_app(on_s3)) as client, ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: client.get("/readyz"), range(30)))
        assert [r.status_code for r in answers] == [200] * 30, answers[0].text
        assert sum(proxy.counts.values()) <= 4, proxy.counts
        assert proxy.counts  # the store was asked, once
    finally:
        proxy.close()
