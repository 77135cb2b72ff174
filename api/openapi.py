"""The OpenAPI 3.1 document, generated from the same msgspec types the API uses."""

from __future__ import annotations

from typing import Any

import msgspec

from shared import events as ev
from shared import schemas as s
from shared import webhooks as wh

REF = "#/components/schemas/{name}"
_TYPES: tuple[Any, ...] = (
    s.SnapshotCreate,
    s.RestoreRequest,
    s.ServerCreate,
    s.TokenCreate,
    s.Snapshot,
    s.SnapshotList,
    s.RestoreAccepted,
    s.Operation,
    s.OperationList,
    s.Server,
    s.ServerList,
    s.Token,
    s.ErrorEnvelope,
    s.Health,
    s.Readiness,
    ev.Event,
    wh.WebhookCreate,
    wh.Webhook,
    wh.WebhookList,
    wh.DeliveryList,
)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Invalid request or refused transition",
        401: "Missing or invalid token",
        403: "Scope does not allow this call",
        404: "Not found (or not yours)",
        413: "Body over 64 KiB",
        415: "Body is not application/json",
        503: "Redis unavailable",
    }
    return {str(c): _json("ErrorEnvelope", texts[c]) for c in codes}


def _body(name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _list_params(statuses: list[str]) -> list[dict[str, Any]]:
    return [
        _query("server_id", {"type": "integer", "minimum": 1}),
        _query("status", {"type": "string", "enum": statuses}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
        _query("cursor", {"type": "integer", "minimum": 1}),
    ]


# Same key + same body within 24 h answers the first answer and starts nothing new.
IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Same key and body within 24 h replays the first answer; another body "
                   "with the key answers 400; 409 while the first is still running.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def build() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(_TYPES, ref_template=REF)
    snap_id = [_id("snapshot_id")]
    std = (400, 401, 403, 404, 503)
    body_errors = (*std, 413, 415)
    paths: dict[str, Any] = {
        "/api/v1/snapshots/": {
            "post": {"summary": "Create a snapshot", "requestBody": _body("SnapshotCreate"),
                     "parameters": [IDEMPOTENCY_KEY],
                     "responses": {"201": _json("Snapshot", "Creation accepted"),
                                   **_errors(*body_errors)}},
            "get": {"summary": "List snapshots, newest first",
                    "parameters": _list_params(["in_progress", "available", "failed"]),
                    "responses": {"200": _json("SnapshotList", "A page"), **_errors(*std)}},
        },
        "/api/v1/snapshots/{snapshot_id}/": {
            "parameters": snap_id,
            "get": {"summary": "Get a snapshot",
                    "responses": {"200": _json("Snapshot", "The snapshot"), **_errors(*std)}},
            "delete": {"summary": "Delete a snapshot",
                       "responses": {"204": {"description": "Deleted"}, **_errors(*std)}},
        },
        "/api/v1/snapshots/{snapshot_id}/restore/": {
            "parameters": snap_id,
            "post": {"summary": "Restore the server from a snapshot",
                     "parameters": [IDEMPOTENCY_KEY],
                     "requestBody": _body("RestoreRequest", required=False),
                     "responses": {"200": _json("RestoreAccepted", "Restore accepted"),
                                   **_errors(*body_errors)}},
        },
        "/api/v1/operations/": {
            "get": {"summary": "List operations, newest first",
                    "parameters": _list_params(
                        ["queued", "running", "succeeded", "failed", "cancelled"]),
                    "responses": {"200": _json("OperationList", "A page"), **_errors(*std)}},
        },
        "/api/v1/operations/{operation_id}/": {
            "parameters": [_id("operation_id")],
            "get": {"summary": "Get an operation",
                    "responses": {"200": _json("Operation", "The operation"), **_errors(*std)}},
        },
        "/api/v1/servers/": {
            "post": {"summary": "Register a server (admin)", "requestBody": _body("ServerCreate"),
                     "responses": {"201": _json("Server", "Registered"), **_errors(*body_errors)}},
            "get": {"summary": "List servers",
                    "responses": {"200": _json("ServerList", "A page"), **_errors(*std)}},
        },
        "/api/v1/servers/{server_id}/": {
            "parameters": [_id("server_id")],
            "get": {"summary": "Get a server",
                    "responses": {"200": _json("Server", "The server"), **_errors(*std)}},
            "delete": {"summary": "Delete a server and its snapshots (admin)",
                       "responses": {"204": {"description": "Deleted"}, **_errors(*std)}},
        },
        "/api/v1/tokens/": {
            "post": {"summary": "Make a token (admin); shown once",
                     "requestBody": _body("TokenCreate"),
                     "responses": {"201": _json("Token", "The token"), **_errors(*body_errors)}},
        },
        "/api/v1/tokens/{token_id}/": {
            "parameters": [_id("token_id")],
            "delete": {"summary": "Revoke a token (admin)",
                       "responses": {"204": {"description": "Revoked"}, **_errors(*std)}},
        },
        "/api/v1/events/": {
            "get": {"summary": "The caller's events as Server-Sent Events (text/event-stream)",
                    "description": "Each message has `id:` (the Redis stream id, resumable "
                                   "with `Last-Event-ID`), `event:` (the type) and `data:` "
                                   "(an Event as JSON); a `: keep-alive` comment every 15 s.",
                    "parameters": [
                        _query("server_id", {"type": "integer", "minimum": 1}),
                        _query("last_event_id", {"type": "string"}),
                        {"name": "Last-Event-ID", "in": "header", "required": False,
                         "schema": {"type": "string", "pattern": r"^\d+-\d+$"}},
                    ],
                    "responses": {"200": {"description": "An endless event stream",
                                          "content": {"text/event-stream": {
                                              "schema": _ref("Event")}}},
                                  **_errors(400, 401, 503)}},
        },
        "/api/v1/webhooks/": {
            "post": {"summary": "Register a webhook for an account (admin); the secret is "
                                "shown once", "requestBody": _body("WebhookCreate"),
                     "responses": {"201": _json("Webhook", "Registered, with its secret"),
                                   **_errors(*body_errors)}},
            "get": {"summary": "List webhooks (admin)",
                    "responses": {"200": _json("WebhookList", "A page"), **_errors(*std)}},
        },
        "/api/v1/webhooks/{webhook_id}/": {
            "parameters": [_id("webhook_id")],
            "get": {"summary": "Get a webhook (admin)",
                    "responses": {"200": _json("Webhook", "The webhook"), **_errors(*std)}},
            "delete": {"summary": "Delete a webhook (admin)",
                       "responses": {"204": {"description": "Deleted"}, **_errors(*std)}},
        },
        "/api/v1/webhooks/{webhook_id}/deliveries/": {
            "parameters": [_id("webhook_id")],
            "get": {"summary": "A webhook's deliveries, newest first, with every attempt",
                    "parameters": [_query("limit", {"type": "integer", "minimum": 1,
                                                    "maximum": 200, "default": 50})],
                    "responses": {"200": _json("DeliveryList", "Deliveries"), **_errors(*std)}},
        },
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": _json("Health", "Alive")}}},
        "/readyz": {"get": {"summary": "Readiness", "security": [],
                            "responses": {"200": _json("Readiness", "Ready"),
                                          "503": _json("Readiness", "Not ready")}}},
    }
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
