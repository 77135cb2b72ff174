"""The route table: every endpoint of the API, once.

Adding an endpoint is one row here (see ``api/endpoint.py`` for what a row does): the
router (``api/app.py``) and the OpenAPI document (``api/openapi.py``) are both built from
this list. The order is the router's: the hottest routes first.
"""

from __future__ import annotations

from typing import Any, Final, get_args

from api import (
    console,
    docs,
    events,
    health,
    hosts,
    metrics,
    operations,
    schedules,
    servers,
    snapshots,
    tokens,
    webhooks,
)
from api.endpoint import PUBLIC, Endpoint, Query, endpoint
from shared import events as ev
from shared import responses as r
from shared import schemas as s
from shared import webhooks as wh

V1: Final = "/api/v1"


def status_query(literal: Any) -> Query:
    """The ``status`` filter of a listing: the values of a status Literal of shared/schemas."""
    return Query("status", {"type": "string", "enum": list(get_args(literal))})


SERVER_ID = Query("server_id", {"type": "integer", "minimum": 1})
LIMIT = Query("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50})
CURSOR = Query("cursor", {"type": "integer", "minimum": 1})


def listing(status: Any) -> tuple[Query, ...]:
    """The query parameters of a filtered listing (server, status, page)."""
    return (SERVER_ID, status_query(status), LIMIT, CURSOR)


EVENTS_DESCRIPTION: Final = (
    "Each message has `id:` (the Redis stream id, resumable with `Last-Event-ID`), "
    "`event:` (the type) and `data:` (an Event as JSON); a `: keep-alive` comment every 15 s."
)

TABLE: Final[tuple[Endpoint, ...]] = (
    endpoint("GET", f"{V1}/snapshots/{{snapshot_id}}/", snapshots.get_one, scope="read",
             response=r.Snapshot, summary="Get a snapshot"),
    endpoint("DELETE", f"{V1}/snapshots/{{snapshot_id}}/", snapshots.delete, scope="write",
             response=None, status=204,
             summary="Delete a snapshot (400 snapshot_protected when protected)"),
    endpoint("PATCH", f"{V1}/snapshots/{{snapshot_id}}/", snapshots.update, scope="write",
             request=s.SnapshotUpdate, response=r.Snapshot,
             summary="Rename, describe, protect or unprotect a snapshot"),
    endpoint("GET", f"{V1}/snapshots/", snapshots.list_all, scope="read",
             response=r.SnapshotList, query=listing(s.SnapshotStatus),
             summary="List snapshots, newest first"),
    endpoint("POST", f"{V1}/snapshots/", snapshots.create, scope="write",
             request=s.SnapshotCreate, response=r.Snapshot, status=201, idempotent=True,
             summary="Create a snapshot"),
    endpoint("GET", f"{V1}/operations/{{operation_id}}/", operations.get_one, scope="read",
             response=r.Operation, summary="Get an operation"),
    endpoint("POST", f"{V1}/snapshots/{{snapshot_id}}/restore/", snapshots.restore,
             scope="write", request=s.RestoreRequest, request_required=False,
             response=r.RestoreAccepted, idempotent=True,
             summary="Restore the server from a snapshot"),
    endpoint("GET", f"{V1}/operations/", operations.list_all, scope="read",
             response=r.OperationList, query=listing(s.OperationStatus),
             summary="List operations, newest first"),
    endpoint("GET", f"{V1}/servers/", servers.list_all, scope="read",
             response=r.ServerList, query=(LIMIT, CURSOR), summary="List servers"),
    endpoint("POST", f"{V1}/servers/", servers.create, scope="admin",
             request=s.ServerCreate, response=r.Server, status=201,
             summary="Register a server (admin)"),
    endpoint("GET", f"{V1}/servers/{{server_id}}/", servers.get_one, scope="read",
             response=r.Server, summary="Get a server"),
    endpoint("PUT", f"{V1}/servers/{{server_id}}/schedule/", schedules.put, scope="write",
             request=s.ScheduleSet, response=r.Schedule,
             summary="Set (create or replace) the server's snapshot schedule"),
    endpoint("GET", f"{V1}/servers/{{server_id}}/schedule/", schedules.get_one, scope="read",
             response=r.Schedule, summary="The server's schedule, next run and last run"),
    endpoint("DELETE", f"{V1}/servers/{{server_id}}/schedule/", schedules.delete,
             scope="write", response=None, status=204, summary="Remove the server's schedule"),
    endpoint("DELETE", f"{V1}/servers/{{server_id}}/", servers.delete, scope="admin",
             response=None, status=204, summary="Delete a server and its snapshots (admin)"),
    endpoint("GET", f"{V1}/hosts/", hosts.list_all, scope="admin", response=r.HostList,
             summary="The fleet's hosts: live workers, servers, queued operations (admin)"),
    endpoint("GET", f"{V1}/tokens/", tokens.list_all, scope="admin", response=r.TokenList,
             query=(Query("account", {"type": "string"}), LIMIT, CURSOR),
             summary="List tokens, newest first (admin); never their values"),
    endpoint("POST", f"{V1}/tokens/", tokens.create, scope="admin",
             request=s.TokenCreate, response=r.Token, status=201,
             summary="Make a token (admin); shown once"),
    endpoint("DELETE", f"{V1}/tokens/{{token_id}}/", tokens.revoke, scope="admin",
             response=None, status=204, summary="Revoke a token (admin)"),
    endpoint("GET", f"{V1}/events/", events.stream, scope="read", response=ev.Event,
             media_type="text/event-stream", errors=(400, 401, 503),
             query=(SERVER_ID, Query("last_event_id", {"type": "string"}),
                    Query("Last-Event-ID", {"type": "string", "pattern": r"^\d+-\d+$"},
                          where="header")),
             summary="The caller's events as Server-Sent Events (text/event-stream)",
             description=EVENTS_DESCRIPTION),
    endpoint("GET", f"{V1}/webhooks/", webhooks.list_all, scope="admin",
             response=wh.WebhookList, query=(LIMIT, CURSOR), summary="List webhooks (admin)"),
    endpoint("POST", f"{V1}/webhooks/", webhooks.create, scope="admin",
             request=wh.WebhookCreate, response=wh.Webhook, status=201,
             summary="Register a webhook for an account (admin); the secret is shown once"),
    endpoint("GET", f"{V1}/webhooks/{{webhook_id}}/", webhooks.get_one, scope="admin",
             response=wh.Webhook, summary="Get a webhook (admin)"),
    endpoint("DELETE", f"{V1}/webhooks/{{webhook_id}}/", webhooks.delete, scope="admin",
             response=None, status=204, summary="Delete a webhook (admin)"),
    endpoint("GET", f"{V1}/webhooks/{{webhook_id}}/deliveries/", webhooks.deliveries,
             scope="admin", response=wh.DeliveryList, query=(LIMIT,),
             summary="A webhook's deliveries, newest first, with every attempt"),
    endpoint("GET", "/healthz", health.healthz, scope=PUBLIC, response=r.Health,
             summary="Liveness"),
    endpoint("GET", f"{V1}/docs/", docs.page, scope=PUBLIC, response=None,
             media_type="text/html", errors=(),
             summary="This reference as a page (Swagger UI over openapi.json)"),
    endpoint("GET", "/static/docs/{name}/", docs.asset, scope=PUBLIC, response=None,
             media_type="application/octet-stream", errors=(404,),
             summary="The reference page's scripts and styles (shipped in the package)"),
    endpoint("GET", console.CONSOLE_PATH, console.page, scope=PUBLIC, response=None,
             media_type="text/html", errors=(),
             summary="The web console: an account's servers and snapshots (paste a token)"),
    endpoint("GET", f"{console.CONSOLE_PATH}{{name}}/", console.asset, scope=PUBLIC,
             response=None, media_type="application/octet-stream", errors=(404,),
             summary="The console's scripts and styles (shipped in the package)"),
    endpoint("GET", "/metrics", metrics.endpoint, scope=PUBLIC, response=None,
             media_type="text/plain", errors=(401, 503),
             summary="Prometheus metrics (a bearer token when SNAPSHOTS_METRICS_TOKEN is set)"),
    endpoint("GET", "/readyz", health.readyz, scope=PUBLIC, response=r.Readiness,
             other_responses={503: (r.Readiness, "Not ready")}, summary="Readiness"),
)
