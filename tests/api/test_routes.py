"""The route table (api/routes.py): the router, the scopes and the OpenAPI document agree."""

from __future__ import annotations

import re
from typing import Any, get_args

import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from api.app import OPENAPI_PATH
from api.auth import SCOPE_RANK as RANK
from api.endpoint import PUBLIC, Endpoint
from api.routes import TABLE
from api.views import SNAPSHOT_MESSAGES
from shared.schemas import OperationStatus, SnapshotStatus, TokenScope
from tests.support.api import ApiHelper


def _concrete(path: str) -> str:
    """A path of the table with every {name} filled in (ids that exist nowhere)."""
    return re.sub(r"\{[a-z_]+\}", "999999", path)


def _token_rows() -> list[Endpoint]:
    return [e for e in TABLE if e.scope != PUBLIC]


def test_every_row_is_routed_and_documented(app: Starlette, client: TestClient) -> None:
    doc: dict[str, Any] = client.get(OPENAPI_PATH).json()
    routed = {
        (method, r.path) for r in app.routes if isinstance(r, Route) for method in r.methods or ()
    }
    for e in TABLE:
        assert (e.method, e.path.rstrip("/") + "/") in routed, (e.method, e.path)
        assert e.method.lower() in doc["paths"][e.path], (e.method, e.path)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    # Nothing is routed that the document does not show (HEAD mirrors GET).
    for method, path in routed - {("HEAD", p) for _, p in routed}:
        if path != OPENAPI_PATH + "/":
            assert (method, path) in documented or (method, path.rstrip("/")) in documented


def test_status_filters_come_from_the_schemas(client: TestClient) -> None:
    doc: dict[str, Any] = client.get(OPENAPI_PATH).json()

    def enum(path: str) -> list[str]:
        params = doc["paths"][path]["get"]["parameters"]
        result: list[str] = next(p["schema"]["enum"] for p in params if p["name"] == "status")
        return result

    assert enum("/api/v1/snapshots/") == list(get_args(SnapshotStatus))
    assert enum("/api/v1/operations/") == list(get_args(OperationStatus))
    # Every snapshot status has its message in responses.
    assert set(SNAPSHOT_MESSAGES) == set(get_args(SnapshotStatus))


@pytest.mark.parametrize("e", _token_rows(), ids=lambda e: f"{e.method} {e.path}")
def test_every_token_row_needs_a_token(client: TestClient, e: Endpoint) -> None:
    assert client.request(e.method, _concrete(e.path)).status_code == 401


def test_scope_of_every_row_is_enforced_before_the_body(
    client: TestClient, api: ApiHelper
) -> None:
    below_admin = [scope for scope in get_args(TokenScope) if scope != "admin"]
    headers = {scope: api.headers("acme", scope) for scope in below_admin}
    for e in _token_rows():
        if e.scope == PUBLIC or e.media_type == "text/event-stream":
            continue  # the stream never ends; it needs only a token of any scope
        for scope, h in headers.items():
            # An empty body would be a 400 if the scope check came second.
            r = client.request(e.method, _concrete(e.path), headers=h)
            if RANK[scope] < RANK[e.scope]:
                assert r.status_code == 403, (scope, e.method, e.path, r.text)
                assert r.json()["error"]["code"] == "forbidden"
            else:
                assert r.status_code != 403, (scope, e.method, e.path, r.text)
