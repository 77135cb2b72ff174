"""Served under a root path (uvicorn --root-path behind a proxy that keeps the prefix):
the router matches a path below it, so the token check must see it too; it saw only
paths starting with /api/v1/, let every request through unauthenticated and the handler
then found no principal (a 500 for every call). A list's next link names the root path
once (it had it twice: ``path`` holds it already)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.support.api import bearer


@pytest.fixture
def prefixed(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, root_path="/snap", raise_server_exceptions=False) as c:
        yield c


def test_requests_below_a_root_path_are_authenticated(prefixed: TestClient,
                                                      settings: object) -> None:
    for path in ("/snap/api/v1/snapshots/", "/snap/api/v1/snapshots"):
        r = prefixed.get(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = prefixed.get(path, headers={"Authorization": "Bearer snp_not-a-known-token"})
        assert r.status_code == 401
        r = prefixed.get(path, headers=bearer(settings.admin_token))  # type: ignore[attr-defined]
        assert r.status_code == 200 and r.json()["snapshots"] == []
    r = prefixed.get("/snap/api/v1/openapi.json")  # public below the root path too
    assert r.status_code == 200


def test_a_next_link_below_a_root_path_names_it_once(prefixed: TestClient,
                                                     settings: object) -> None:
    admin = bearer(settings.admin_token)  # type: ignore[attr-defined]
    for _ in range(2):
        made = prefixed.post("/snap/api/v1/tokens/", json={"account": "a", "scope": "read"},
                             headers=admin)
        assert made.status_code == 201
    r = prefixed.get("/snap/api/v1/tokens/?limit=1", headers=admin)
    link = r.json()["links"]["next"]
    assert link.startswith("/snap/api/v1/tokens/?"), link
    assert prefixed.get(link, headers=admin).status_code == 200
