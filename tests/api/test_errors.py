"""Bad input answers 400/413/415 and changes nothing; every error has the one JSON shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from tests.support.api import ApiHelper


@pytest.fixture
def setup(client: TestClient, api: ApiHelper) -> dict[str, Any]:
    server = api.server("acme")
    return {"server": server, "headers": api.headers("acme")}


class Unchanged:
    """Asserts the Redis key set (and the event stream) did not change."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def snapshot(self) -> tuple[object, ...]:
        return (self.r.dbsize(), self.r.xlen("events"), self.r.get("seq:snapshot"))

    def __enter__(self) -> Unchanged:
        self.before = self.snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.snapshot() == self.before


@pytest.fixture
def unchanged(redis_client: redis.Redis) -> Iterator[Unchanged]:
    yield Unchanged(redis_client)


def error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-request-id"]
    assert "Traceback" not in r.text
    message: str = body["error"]["message"]
    return message


BAD_BODIES: list[tuple[bytes, str | None]] = [
    (b"{", "body"),
    (b"not json", "body"),
    (b"[]", "body"),
    (b'"a string"', "body"),
    (b"null", "body"),
    (b"42", "body"),
    (b'{"server_id": "1", "name": "x"}', "server_id"),
    (b'{"server_id": 1.5, "name": "x"}', "server_id"),
    (b'{"server_id": 0, "name": "x"}', "server_id"),
    (b'{"server_id": -3, "name": "x"}', "server_id"),
    (b'{"server_id": true, "name": "x"}', "server_id"),
    (b'{"server_id": 99999999999999999999999, "name": "x"}', "server_id"),
    (b'{"name": "x"}', "server_id"),
    (b'{"server_id": SID}', "name"),
    (b'{"server_id": SID, "name": ""}', "name"),
    (b'{"server_id": SID, "name": 5}', "name"),
    (b'{"server_id": SID, "name": "NNN"}', "name"),
    (b'{"server_id": SID, "name": "a\\u0000b"}', "name"),
    (b'{"server_id": SID, "name": "a\\nb"}', "name"),
    (b'{"server_id": SID, "name": "a\\u001bb"}', "name"),
    (b'{"server_id": SID, "name": "\\ud800"}', None),
    (b'{"server_id": SID, "name": "a\\udfffb"}', None),
    (b'{"server_id": SID, "name": "x", "description": 5}', "description"),
    (b'{"server_id": SID, "name": "x", "description": "DDD"}', "description"),
    (b'{"server_id": SID, "name": "x", "stop_server": "yes"}', "stop_server"),
    (b'{"server_id": SID, "name": "x", "extra": 1}', "extra"),
    (b'{"server_id": SID, "name": "x", "server_id": "dup"}', "server_id"),
    (b"\xff\xfe{}", None),
]


@pytest.mark.parametrize(("raw", "field"), BAD_BODIES)
def test_bad_create_bodies_are_400_naming_the_field(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged, raw: bytes, field: str | None
) -> None:
    raw = raw.replace(b"SID", str(setup["server"]["id"]).encode())
    raw = raw.replace(b"NNN", b"n" * 256).replace(b"DDD", b"d" * 1001)
    headers = {**setup["headers"], "Content-Type": "application/json"}
    with unchanged:
        r = client.post("/api/v1/snapshots/", content=raw, headers=headers)
        message = error(r, 400, "invalid_request")
    if field is not None:
        assert message.startswith(f"{field}:") or f"`{field}`" in message, message


def test_255_chars_and_unicode_names_are_fine(client: TestClient, setup: dict[str, Any]) -> None:
    name = "é" * 250 + "snap✓"
    r = client.post(
        "/api/v1/snapshots/",
        json={"server_id": setup["server"]["id"], "name": name, "description": "line1\nline2"},
        headers=setup["headers"],
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and len(name) == 255


def test_body_over_64k_is_413(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged
) -> None:
    big = b'{"server_id": 1, "name": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    headers = {**setup["headers"], "Content-Type": "application/json"}
    with unchanged:
        error(client.post("/api/v1/snapshots/", content=big, headers=headers), 413,
              "payload_too_large")
        just_over = b'{"name": "' + b"x" * (64 * 1024) + b'"}'
        error(client.post("/api/v1/snapshots/", content=just_over, headers=headers), 413,
              "payload_too_large")


def test_body_over_64k_without_content_length_is_413(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b"x" * 1024

    headers = {**setup["headers"], "Content-Type": "application/json"}
    with unchanged:
        r = client.post("/api/v1/snapshots/", content=chunks(), headers=headers)
        error(r, 413, "payload_too_large")


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonx", "multipart/form-data; boundary=x"])
def test_non_json_content_type_is_415(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged, ctype: str | None
) -> None:
    raw = b'{"server_id": %d, "name": "x"}' % setup["server"]["id"]
    headers = dict(setup["headers"])
    if ctype is not None:
        headers["Content-Type"] = ctype
    with unchanged:
        error(client.post("/api/v1/snapshots/", content=raw, headers=headers), 415,
              "unsupported_media_type")


def test_json_with_charset_is_fine(client: TestClient, setup: dict[str, Any]) -> None:
    raw = b'{"server_id": %d, "name": "x"}' % setup["server"]["id"]
    headers = {**setup["headers"], "Content-Type": "application/json; charset=utf-8"}
    assert client.post("/api/v1/snapshots/", content=raw, headers=headers).status_code == 201


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "1.5", "1e3", "٣", "99999999999999999999",
                                 "%20", "0x10"])
def test_non_numeric_ids_are_400_naming_the_parameter(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged, bad: str
) -> None:
    h = setup["headers"]
    with unchanged:
        for method, path, param in [
            ("GET", f"/api/v1/snapshots/{bad}/", "snapshot_id"),
            ("DELETE", f"/api/v1/snapshots/{bad}/", "snapshot_id"),
            ("POST", f"/api/v1/snapshots/{bad}/restore/", "snapshot_id"),
            ("GET", f"/api/v1/operations/{bad}/", "operation_id"),
            ("GET", f"/api/v1/servers/{bad}/", "server_id"),
        ]:
            r = client.request(method, path, headers=h)
            assert error(r, 400, "invalid_request").startswith(param), (method, path)


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "cursor=abc",
                                   "server_id=-1", "status=bogus"])
def test_bad_query_parameters_are_400(
    client: TestClient, setup: dict[str, Any], query: str
) -> None:
    r = client.get(f"/api/v1/snapshots/?{query}", headers=setup["headers"])
    assert error(r, 400, "invalid_request").startswith(query.split("=")[0])


HUGE = "9" * 5000  # past int()'s 4300 digits: ValueError, not a number too large


LISTINGS = ["/api/v1/snapshots/", "/api/v1/operations/", "/api/v1/servers/", "/api/v1/tokens/"]


@pytest.mark.parametrize("path_query", [
    *((path, query) for path in LISTINGS for query in (f"limit={HUGE}", f"cursor={HUGE}")),
    *((path, f"server_id={HUGE}") for path in LISTINGS[:2]),
    ("/api/v1/snapshots/", "limit=%C2%B2"),
])
def test_huge_query_numbers_are_400_on_every_listing(
    client: TestClient, api: ApiHelper, path_query: tuple[str, str]
) -> None:
    path, query = path_query
    r = client.get(f"{path}?{query}", headers=api.admin)
    assert error(r, 400, "invalid_request").startswith(query.split("=")[0]), r.text


def test_restore_body_validation(
    client: TestClient, setup: dict[str, Any], unchanged: Unchanged
) -> None:
    h = {**setup["headers"], "Content-Type": "application/json"}
    with unchanged:
        for raw, field in [(b'{"start_after": "yes"}', "start_after"), (b'{"x": 1}', "x"),
                           (b"[true]", "body")]:
            r = client.post("/api/v1/snapshots/1/restore/", content=raw, headers=h)
            assert error(r, 400, "invalid_request").startswith(field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "account": "acme", "state": {"kind": "disk", "path": "/x"}}, "state.kind"),
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "rel"}}, "state.path"),
        # "//" opened as the root: a capture of the whole machine; ".." another's state.
        *(({"name": "x", "account": "acme", "state": {"kind": "directory", "path": path}},
           "state.path") for path in ("//", "///", "//srv", "/srv/a/..", "/srv//a", "/srv/./a",
                                      "/.", "/srv/..")),
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "/x"},
          "power": {"kind": "ipmi"}}, "power"),
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "/x"},
          "power": {"kind": "command", "stop": "a"}}, "power"),
        ({"name": "x", "account": "a b", "state": {"kind": "image", "path": "/x"}}, "account"),
        # NUL: exec refuses it (ValueError), so every job of the server raised until it died.
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "/x"},
          "power": {"kind": "command", "stop": "virsh shutdown\u0000x", "start": "a",
                    "status": "a"}}, "power.stop"),
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "/x"},
          "hooks": {"post_snapshot": "sync\u0000"}}, "hooks.post_snapshot"),
        ({"name": "x", "state": {"kind": "image", "path": "/x"}}, "account"),
        ({"name": "x", "account": "acme", "state": {"kind": "image", "path": "/x", "y": 1}},
         "state.y"),
    ],
)
def test_bad_server_bodies(
    client: TestClient, api: ApiHelper, unchanged: Unchanged, body: dict[str, Any], field: str
) -> None:
    with unchanged:
        r = client.post("/api/v1/servers/", json=body, headers=api.admin)
        assert error(r, 400, "invalid_request").startswith(field)


def test_bad_token_bodies(client: TestClient, api: ApiHelper, unchanged: Unchanged) -> None:
    with unchanged:
        for body, field in [({"account": "acme", "scope": "root"}, "scope"),
                            ({"scope": "read"}, "account")]:
            r = client.post("/api/v1/tokens/", json=body, headers=api.admin)
            assert error(r, 400, "invalid_request").startswith(field)


def test_unknown_route_is_json_404(client: TestClient, setup: dict[str, Any]) -> None:
    error(client.get("/nope"), 404, "not_found")
    error(client.get("/api/v1/nothing/", headers=setup["headers"]), 404, "not_found")
    error(client.get("/api/v1/snapshots/1/extra/", headers=setup["headers"]), 404, "not_found")


def test_wrong_method_is_json_405(client: TestClient, setup: dict[str, Any]) -> None:
    h = setup["headers"]
    r = client.put("/api/v1/snapshots/", headers=h)
    error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    error(client.put("/api/v1/snapshots/1/", headers=h), 405, "method_not_allowed")
    error(client.get("/api/v1/snapshots/1/restore/", headers=h), 405, "method_not_allowed")
    error(client.post("/healthz"), 405, "method_not_allowed")


def test_internal_error_has_no_stack_trace(
    client: TestClient, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from api import views

    def boom(rec: object) -> None:
        raise RuntimeError("secret internals")

    snap = client.post("/api/v1/snapshots/", json={"server_id": setup["server"]["id"],
                                                   "name": "x"}, headers=setup["headers"])
    # GET one renders through api/views.py (RowViews.snapshot_json -> snapshot_view).
    monkeypatch.setattr("api.views.snapshot_view", boom)
    assert views  # the real module stays importable
    r = client.get(f"/api/v1/snapshots/{snap.json()['id']}/", headers=setup["headers"])
    error(r, 500, "internal_error")
    assert "secret" not in r.text


def test_request_id_is_honoured_or_generated(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9"[:6]})
    assert r.headers["x-request-id"] != "bad id"
    r1, r2 = client.get("/healthz"), client.get("/healthz")
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    r = client.get("/api/v1/snapshots/")
    assert r.status_code == 401 and r.headers["x-request-id"]
