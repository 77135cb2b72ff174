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
from shared.async_store import AsyncStore
from shared.responses import ListLinks, ListMeta, OperationList
from shared.schemas import OperationStatus

STATUSES = get_args(OperationStatus)


async def get_one(request: Request) -> Response:
    op_id = path_id(request, "operation_id")
    rec = await services(request).store.get_operation(op_id)
    who = principal(request)
    if rec is None or (not who.is_admin and rec.account != who.account):
        raise NotFound(f"Operation {op_id} not found.")
    return JSON(operation_view(rec))


async def _server_is_theirs(store: AsyncStore, account: str, server_id: int) -> bool:
    """Whether a server's operations are the account's. Operations outlive their server,
    so this asks its newest operation, not its record (all of a server's operations are
    of its account). Checked before the page is read: a page showing none of another
    account's operations (a cursor past them) still answered their count in meta.total."""
    newest = await store.list_operations(account=account, server_id=server_id, limit=1)
    return bool(newest.items) and newest.items[0].account == account


async def list_all(request: Request) -> Response:
    who = principal(request)
    server_id = query_id(request, "server_id")
    status = query_choice(request, "status", STATUSES)
    limit = query_limit(request)
    cursor = query_id(request, "cursor")
    svc = services(request)
    account = who.account_filter
    if account is not None and server_id is not None and not await _server_is_theirs(
        svc.store, account, server_id
    ):
        empty = OperationList(operations=[], meta=ListMeta(total=0), links=ListLinks(next=None))
        return JSON(empty)
    page = await svc.store.list_operations(
        account=account, server_id=server_id, status=status, cursor=cursor, limit=limit
    )
    link = next_link(request, page.next_cursor, server_id=server_id, status=status, limit=limit)
    return JSON(
        OperationList(
            operations=[operation_view(r) for r in page.items],
            meta=ListMeta(total=page.total),
            links=ListLinks(next=link if page.items else None),
        )
    )
