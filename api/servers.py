"""The server endpoints: admins register and remove servers; every account reads its own."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.errors import NotFound, from_refusal
from api.inputs import path_id, query_id, query_limit
from api.services import services
from api.views import JSON, next_link, server_view
from shared.responses import ListLinks, ListMeta, ServerList
from shared.schemas import ServerCreate
from shared.scripts import TransitionRefused


async def create(request: Request, body: ServerCreate) -> Response:
    store = services(request).store
    server_id = await store.create_server(body)
    rec = await store.get_server(server_id)
    if rec is None:  # pragma: no cover - deleted between two calls
        raise NotFound(f"Server {server_id} not found.")
    return JSON(
        server_view(rec, admin=True), 201, headers={"Location": f"/api/v1/servers/{server_id}/"}
    )


async def get_one(request: Request) -> Response:
    server_id = path_id(request, "server_id")
    who = principal(request)
    rec = await services(request).store.get_server(server_id)
    if rec is None or (not who.is_admin and rec.account != who.account):
        raise NotFound(f"Server {server_id} not found.")
    return JSON(server_view(rec, admin=who.is_admin))


async def list_all(request: Request) -> Response:
    who = principal(request)
    limit = query_limit(request)
    cursor = query_id(request, "cursor")
    page = await services(request).store.list_servers(
        account=who.account_filter, cursor=cursor, limit=limit
    )
    return JSON(
        ServerList(
            servers=[server_view(r, admin=who.is_admin) for r in page.items],
            meta=ListMeta(total=page.total),
            links=ListLinks(next=next_link(request, page.next_cursor, limit=limit)),
        )
    )


async def delete(request: Request) -> Response:
    server_id = path_id(request, "server_id")
    svc = services(request)
    try:
        queued = await svc.store.delete_server(account=None, server_id=server_id)
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    for op in queued:
        await svc.enqueue("snapshot.delete", op.operation_id, op.host)
    return Response(status_code=204)
