"""The operation endpoints: what the workers are doing (or did) for the caller."""

from __future__ import annotations

from typing import get_args

from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.errors import NotFound
from api.inputs import path_id, query_choice, query_id, query_limit
from api.services import services
from api.views import JSON, next_link, operation_view
from shared.schemas import ListLinks, ListMeta, OperationList, OperationStatus

STATUSES = get_args(OperationStatus)


async def get_one(request: Request) -> Response:
    op_id = path_id(request, "operation_id")
    rec = await services(request).store.get_operation(op_id)
    who = principal(request)
    if rec is None or (not who.is_admin and rec.account != who.account):
        raise NotFound(f"Operation {op_id} not found.")
    return JSON(operation_view(rec))


async def list_all(request: Request) -> Response:
    who = principal(request)
    server_id = query_id(request, "server_id")
    status = query_choice(request, "status", STATUSES)
    limit = query_limit(request)
    cursor = query_id(request, "cursor")
    svc = services(request)
    account = who.account_filter
    # Operations outlive their server, so the server filter goes through the account's
    # own index intersection rather than a server ownership check.
    page = await svc.store.list_operations(
        account=account, server_id=server_id, status=status, cursor=cursor, limit=limit
    )
    items = page.items
    total = page.total
    if account is not None and server_id is not None and any(r.account != account for r in items):
        items, total = [], 0
    link = next_link(request, page.next_cursor, server_id=server_id, status=status, limit=limit)
    return JSON(
        OperationList(
            operations=[operation_view(r) for r in items],
            meta=ListMeta(total=total),
            links=ListLinks(next=link if items else None),
        )
    )
