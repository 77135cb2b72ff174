"""The token endpoints (admin): a token is shown once, when made; only its hash is kept."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.auth import digest, new_token
from api.errors import from_refusal
from api.inputs import path_id, query_id, query_limit
from api.services import services
from api.views import JSON, next_link
from shared.records import TokenRecord
from shared.responses import ListLinks, ListMeta, Token, TokenInfo, TokenList
from shared.schemas import TokenCreate, rfc3339
from shared.scripts import TransitionRefused


async def create(request: Request, body: TokenCreate) -> Response:
    token = new_token()
    made = await services(request).store.create_token(digest(token), body.account, body.scope)
    view = Token(
        id=made.token_id,
        account=body.account,
        scope=body.scope,
        token=token,
        created_at=rfc3339(made.created_at) or "",
    )
    return JSON(view, 201, headers={"Location": f"/api/v1/tokens/{made.token_id}/"})


def token_view(record: TokenRecord) -> TokenInfo:
    return TokenInfo(id=record.id, account=record.account, scope=record.scope,
                     created_at=rfc3339(record.created_at) or "")


async def list_all(request: Request) -> Response:
    """Every token (of ``?account=``), newest first; never their values."""
    limit = query_limit(request)
    account = request.query_params.get("account") or None
    page = await services(request).store.list_tokens(
        account=account, cursor=query_id(request, "cursor"), limit=limit
    )
    return JSON(TokenList(
        tokens=[token_view(r) for r in page.items],
        meta=ListMeta(total=page.total),
        links=ListLinks(next=next_link(request, page.next_cursor, account=account, limit=limit)),
    ))


async def revoke(request: Request) -> Response:
    token_id = path_id(request, "token_id")
    svc = services(request)
    try:
        sha = await svc.store.revoke_token(token_id)
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    svc.tokens.drop(sha)
    return Response(status_code=204)
