"""The snapshot endpoints: the seed's four plus GET one."""

from __future__ import annotations

from typing import get_args

from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.errors import NotFound, from_refusal
from api.idempotency import claim_of
from api.inputs import path_id, query_choice, query_id, query_limit
from api.services import services
from api.views import JSON, RawJSON, next_link, snapshot_list, snapshot_view
from shared.records import SnapshotRecord
from shared.responses import (
    ListLinks,
    ListMeta,
    RestoreAccepted,
    RestoreServerRef,
    RestoreSnapshotRef,
    ServerRef,
    Snapshot,
    SnapshotList,
)
from shared.schemas import (
    CREATE_MESSAGE,
    RESTORE_MESSAGE,
    RestoreRequest,
    SnapshotCreate,
    SnapshotStatus,
    SnapshotUpdate,
    rfc3339,
)
from shared.scripts import TransitionRefused

STATUSES = get_args(SnapshotStatus)


async def create(request: Request, body: SnapshotCreate) -> Response:
    who = principal(request)
    svc = services(request)
    try:
        made = await svc.store.create_snapshot(account=who.account_filter, body=body,
                                               idem=claim_of(request))
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    await svc.enqueue("snapshot.create", made.operation_id, made.host)
    view = Snapshot(
        id=made.snapshot_id,
        server=ServerRef(id=body.server_id, name=made.server_name),
        name=body.name,
        description=body.description,
        status="in_progress",
        size_mb=None,
        progress=0,
        created_at=rfc3339(made.created_at) or "",
        completed_at=None,
        message=CREATE_MESSAGE,
        error=None,
        operation_id=made.operation_id,
        protected=False,
        origin="manual",
    )
    return JSON(view, 201, headers={"Location": f"/api/v1/snapshots/{made.snapshot_id}/"})


async def _visible(request: Request, snapshot_id: int) -> SnapshotRecord:
    rec = await services(request).store.get_snapshot(snapshot_id)
    who = principal(request)
    if rec is None or rec.deleted or (not who.is_admin and rec.account != who.account):
        # Another account's snapshot answers exactly like one that does not exist.
        raise NotFound(f"Snapshot {snapshot_id} not found.")
    return rec


async def get_one(request: Request) -> Response:
    snapshot_id = path_id(request, "snapshot_id")
    who = principal(request)
    store = services(request).store
    fields = await store.snapshot_hash(snapshot_id)
    # The rendered view of this version of the hash (b"" when none or deleted), as the
    # list shows it; the tenant check on the hash's own account field, as _visible's.
    body = services(request).snapshot_views.snapshot_json(fields, store.reads.generation)
    if not body or (not who.is_admin and fields.get("account") != who.account):
        raise NotFound(f"Snapshot {snapshot_id} not found.")
    return RawJSON(body)


async def list_all(request: Request) -> Response:
    who = principal(request)
    server_id = query_id(request, "server_id")
    status = query_choice(request, "status", STATUSES)
    limit = query_limit(request)
    cursor = query_id(request, "cursor")
    svc = services(request)
    if server_id is not None and not who.is_admin:
        server = await svc.store.get_server(server_id)
        if server is None or server.account != who.account:
            empty = SnapshotList(snapshots=[], meta=ListMeta(total=0), links=ListLinks(next=None))
            return JSON(empty)
    store = svc.store
    views = svc.snapshot_views
    account = who.account_filter
    query = (account, server_id, status, cursor, limit)
    kept = views.kept_page(query, store.reads.generation)
    if kept is not None:
        version = await store.listing_version(account)
        if version == kept.version and kept.generation == store.reads.generation:
            # Nothing this listing shows changed since the page was kept.
            link = next_link(request, kept.next_cursor, server_id=server_id, status=status,
                             limit=limit)
            return kept.answer(link)
    page = await store.snapshot_page(
        account=account, server_id=server_id, status=status, cursor=cursor,
        limit=limit, known_version="" if kept is None else kept.version,
    )
    if page.unchanged:
        # Answered by a Redis connected since the page was kept: read it afresh.
        page = await store.list_snapshots(
            account=who.account_filter, server_id=server_id, status=status,
            cursor=cursor, limit=limit)
    generation = store.reads.generation

    async def fetch(ids: list[str]) -> list[list[str]]:
        return await store.rows("snapshot:", ids)

    items = await views.json_array(page, fetch, generation)
    views.keep_page(query, page, items, generation)
    link = next_link(request, page.next_cursor, server_id=server_id, status=status, limit=limit)
    return RawJSON(snapshot_list(items, page.total, link))


async def restore(request: Request, body: RestoreRequest) -> Response:
    who = principal(request)
    snapshot_id = path_id(request, "snapshot_id")
    svc = services(request)
    try:
        started = await svc.store.start_restore(
            account=who.account_filter, snapshot_id=snapshot_id, start_after=body.start_after,
            target_id=body.server_id, safety=body.safety_snapshot, idem=claim_of(request),
        )
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    # The operation is the target server's: its host runs it (a clone's, the other server's).
    await svc.enqueue("snapshot.restore", started.operation_id, started.host)
    return JSON(
        RestoreAccepted(
            status="success",
            message=RESTORE_MESSAGE,
            snapshot=RestoreSnapshotRef(
                id=started.snapshot_id,
                name=started.snapshot_name,
                created_at=rfc3339(started.snapshot_created_at) or "",
            ),
            server=RestoreServerRef(
                id=started.server_id, name=started.server_name, status="restoring"
            ),
            operation_id=started.operation_id,
        )
    )


async def update(request: Request, body: SnapshotUpdate) -> Response:
    """PATCH: rename, describe, protect or unprotect; answers the snapshot as it is now."""
    who = principal(request)
    snapshot_id = path_id(request, "snapshot_id")
    store = services(request).store
    try:
        await store.update_snapshot(
            account=who.account_filter, snapshot_id=snapshot_id, body=body
        )
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    return JSON(snapshot_view(await _visible(request, snapshot_id)))


async def delete(request: Request) -> Response:
    who = principal(request)
    snapshot_id = path_id(request, "snapshot_id")
    svc = services(request)
    try:
        queued = await svc.store.delete_snapshot(
            account=who.account_filter, snapshot_id=snapshot_id
        )
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    await svc.enqueue("snapshot.delete", queued.operation_id, queued.host)
    return Response(status_code=204)
