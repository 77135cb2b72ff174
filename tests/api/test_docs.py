"""GET /api/v1/docs/: the API reference page, with every file it loads served by the
service itself (Swagger UI from the installed package: no CDN, no network)."""

from __future__ import annotations

import re

from starlette.testclient import TestClient


def test_reference_page_loads_only_files_the_service_serves(client: TestClient) -> None:
    for path in ("/api/v1/docs/", "/api/v1/docs"):  # no token, with or without the slash
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing from another host"
    urls = re.findall(r"(?:src|href)=\"([^\"]+)\"", html) + re.findall(r'url: "([^"]+)"', html)
    assert "/api/v1/openapi.json" in urls and len(urls) == 5
    for url in urls:
        resp = client.get(url)
        assert resp.status_code == 200, url
        assert len(resp.content) > 100, url
    bundle = client.get("/static/docs/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert "max-age" in bundle.headers["cache-control"]
    # Swagger UI 5: it reads OpenAPI 3.1 (4.x, as swagger-ui-bundle ships, does not).
    assert b"SwaggerUIBundle" in bundle.content and b"isOAS31" in bundle.content
    assert client.get("/api/v1/openapi.json").json()["openapi"].startswith("3.1")


def test_only_the_pages_own_files_can_be_fetched(client: TestClient) -> None:
    for name in ("index.html", "swagger-editor-bundle.js", "..%2f__init__.py", "LICENSE"):
        resp = client.get(f"/static/docs/{name}")
        assert resp.status_code == 404, name
        assert resp.json()["error"]["code"] == "not_found"
