"""The OpenAPI 3.1 document, generated from the route table and its msgspec types.

Nothing here names a path: each row of ``api/routes.py`` becomes one operation, with its
path parameters (from the ``{name}`` parts of the path), query parameters, body, answer
and the errors its shape can give (every token route: 400, 401, 403, 404, 429, 503; with a
body also 408, 413 and 415).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from api.endpoint import PUBLIC, Endpoint, Query
from api.idempotency import HEADER, MAX_KEY
from shared import responses as r

REF: Final = "#/components/schemas/{name}"
ERROR_TEXTS: Final = {
    400: "Invalid request or refused transition",
    401: "Missing or invalid token",
    403: "Scope does not allow this call",
    404: "Not found (or not yours)",
    408: "Body did not arrive within SNAPSHOTS_BODY_TIMEOUT",
    413: "Body over 64 KiB",
    415: "Body is not application/json",
    429: "The token's rate limit is spent, or too many open event streams (Retry-After)",
    503: "Redis unavailable",
}
ANSWER_TEXTS: Final = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}
TOKEN_ERRORS: Final = (400, 401, 403, 404, 429, 503)
BODY_ERRORS: Final = (408, 413, 415)

IDEMPOTENCY_KEY: Final = Query(
    HEADER,
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY},
    where="header",
    description="Same key and body within 24 h replays the first answer; another body "
                "with the key answers 400; 409 while the first is still running.",
)


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": REF.format(name=cls.__name__)}


def _content(cls: type[Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": _ref(cls)}}


def _param(q: Query) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": q.name, "in": q.where, "required": False, "schema": q.schema}
    if q.description:
        doc["description"] = q.description
    return doc


def _path_param(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = (
        {"type": "integer", "minimum": 1} if name.endswith("_id") else {"type": "string"}
    )
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _errors(e: Endpoint) -> tuple[int, ...]:
    if e.errors is not None:
        return e.errors
    if e.scope == PUBLIC:
        return ()
    return TOKEN_ERRORS + (BODY_ERRORS if e.request is not None else ())


def operation(e: Endpoint) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": ANSWER_TEXTS.get(e.status, "OK")}
    if e.response is not None:
        answer["content"] = _content(e.response, e.media_type)
    responses: dict[str, Any] = {str(e.status): answer}
    for status, (cls, text) in e.other_responses.items():
        responses[str(status)] = {"description": text, "content": _content(cls)}
    for code in _errors(e):
        responses[str(code)] = {"description": ERROR_TEXTS[code],
                                "content": _content(r.ErrorEnvelope)}
    params = [_path_param(n) for n in e.path_params] + [_param(q) for q in e.query]
    if e.idempotent:
        params.append(_param(IDEMPOTENCY_KEY))
    doc: dict[str, Any] = {"summary": e.summary, "responses": responses}
    if e.description:
        doc["description"] = e.description
    if params:
        doc["parameters"] = params
    if e.request is not None:
        doc["requestBody"] = {"required": e.request_required,
                              "content": _content(e.request)}
    if e.scope == PUBLIC:
        doc["security"] = []
    return doc


def _types(table: Iterable[Endpoint]) -> list[type[Any]]:
    found: dict[str, type[Any]] = {"ErrorEnvelope": r.ErrorEnvelope}
    for e in table:
        for cls in (e.request, e.response, *(c for c, _ in e.other_responses.values())):
            if cls is not None:
                found.setdefault(cls.__name__, cls)
    return list(found.values())


def build(table: Iterable[Endpoint]) -> dict[str, Any]:
    rows = list(table)
    _, components = msgspec.json.schema_components(_types(rows), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in rows:
        paths.setdefault(e.path, {})[e.method.lower()] = operation(e)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Server snapshots API", "version": "1.0.0"},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
