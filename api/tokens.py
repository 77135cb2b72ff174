"""The token endpoints (admin): a token is shown once, when made; only its hash is kept."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.auth import digest, new_token
from api.errors import from_refusal
from api.inputs import path_id
from api.services import services
from api.views import JSON
from shared.schemas import Token, TokenCreate, rfc3339
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


async def revoke(request: Request) -> Response:
    token_id = path_id(request, "token_id")
    svc = services(request)
    try:
        sha = await svc.store.revoke_token(token_id)
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    svc.tokens.drop(sha)
    return Response(status_code=204)
