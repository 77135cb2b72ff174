"""Stored records → response bodies, and the JSON response class that encodes them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.services import services
from shared.hosts import ANY_HOST
from shared.records import OperationRecord, ServerRecord, SnapshotRecord
from shared.schemas import (
    CREATE_MESSAGE,
    ErrorInfo,
    LastRun,
    Operation,
    Schedule,
    Server,
    ServerRef,
    Snapshot,
    SnapshotStatus,
    rfc3339,
)

_encode = msgspec.json.Encoder().encode

# Keyed by the status Literal, so a status the schema does not have is a type error.
SNAPSHOT_MESSAGES: dict[SnapshotStatus, str] = {
    "in_progress": CREATE_MESSAGE,
    "available": "Snapshot is available and can be restored.",
    "failed": "Snapshot creation failed; see error for the reason.",
}


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


def snapshot_view(rec: SnapshotRecord) -> Snapshot:
    return Snapshot(
        id=rec.id,
        server=ServerRef(id=rec.server_id, name=rec.server_name),
        name=rec.name,
        description=rec.description,
        status=rec.status,
        size_mb=rec.size_mb if rec.status == "available" else None,
        progress=rec.progress,
        created_at=rfc3339(rec.created_at) or "",
        completed_at=rfc3339(rec.completed_at),
        message=SNAPSHOT_MESSAGES[rec.status],
        error=ErrorInfo(rec.error.code, rec.error.message) if rec.error else None,
        operation_id=rec.operation_id,
        protected=rec.protected,
        origin=rec.origin,
    )


def operation_view(rec: OperationRecord) -> Operation:
    return Operation(
        id=rec.id,
        type=rec.type,
        status=rec.status,
        progress=rec.progress,
        snapshot_id=rec.snapshot_id,
        server_id=rec.server_id,
        created_at=rfc3339(rec.created_at) or "",
        started_at=rfc3339(rec.started_at),
        finished_at=rfc3339(rec.finished_at),
        error=rec.error,
        source_server_id=rec.source_server_id,
        safety_snapshot_id=rec.safety_snapshot_id,
        hooks=rec.hooks,
        host=None if rec.host == ANY_HOST else rec.host,
    )


def schedule_view(rec: ServerRecord) -> Schedule | None:
    sched = rec.schedule
    if sched is None:
        return None
    last = rec.last_run
    return Schedule(
        server_id=rec.id,
        cron=sched.cron,
        timezone=sched.timezone,
        retention=sched.retention,
        stop_server=sched.stop_server,
        next_run_at=rfc3339(rec.schedule_next),
        last_run=None if last is None else LastRun(
            at=rfc3339(last.at) or "", status=last.status, snapshot_id=last.snapshot_id,
            error=last.error,
        ),
        created_at=rfc3339(sched.created_at) or "",
        updated_at=rfc3339(sched.updated_at) or "",
    )


def server_view(rec: ServerRecord, admin: bool) -> Server:
    view = Server(
        id=rec.id, name=rec.name, status=rec.status, created_at=rfc3339(rec.created_at) or "",
        schedule=schedule_view(rec),
    )
    if admin:
        view.account = rec.account
        view.state = rec.state
        view.power = rec.power
        view.host = rec.host
        view.hooks = rec.hooks
    return view


def next_link(request: Request, cursor: int | None, **filters: object) -> str | None:
    """The next page, keeping the caller's filters and limit: a path such as
    ``/api/v1/snapshots/?limit=50&cursor=7``, or an absolute URL under
    ``SNAPSHOTS_PUBLIC_URL`` when that is set. Never built from the request's ``Host``
    header, which the caller controls (a link to ``http://evil.example/...`` handed to a
    script or a console would carry its token to whoever answers there)."""
    if cursor is None:
        return None
    query = {k: v for k, v in filters.items() if v is not None}
    query["cursor"] = cursor
    # The matched route's own path (RequestContext gave it its trailing slash).
    path = request.scope.get("root_path", "") + request.scope["path"]
    base = services(request).settings.public_url or ""
    return f"{base}{path}?{urlencode(query)}"
