"""The ASGI application: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api import health, openapi, operations, servers, snapshots, tokens
from api.auth import BearerAuth, TokenCache
from api.errors import ApiError, InternalError, MethodNotAllowed, NotFound
from api.middleware import RequestContext
from api.services import Services
from shared.async_store import AsyncStore
from shared.broker import make_broker
from shared.settings import ADMIN_TOKEN_FILE, Settings

OPENAPI_PATH = "/api/v1/openapi.json"
Handler = Callable[[Request], Any]


def _route(path: str, endpoint: Handler, methods: Sequence[str]) -> BaseRoute:
    # Every route is registered with a trailing slash; RequestContext adds a missing one,
    # so both spellings answer the same without a redirect or a second route to match.
    return Route(path.rstrip("/") + "/", endpoint, methods=list(methods))


def routes(openapi_body: bytes) -> list[BaseRoute]:
    async def openapi_doc(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    v1 = "/api/v1"
    # The hottest routes first: the router tries them in order.
    return [
        _route(f"{v1}/snapshots/{{snapshot_id}}/", snapshots.get_one, ["GET"]),
        _route(f"{v1}/snapshots/", snapshots.list_all, ["GET"]),
        _route(f"{v1}/operations/{{operation_id}}/", operations.get_one, ["GET"]),
        _route(f"{v1}/snapshots/", snapshots.create, ["POST"]),
        _route(f"{v1}/snapshots/{{snapshot_id}}/", snapshots.delete, ["DELETE"]),
        _route(f"{v1}/snapshots/{{snapshot_id}}/restore/", snapshots.restore, ["POST"]),
        _route(f"{v1}/operations/", operations.list_all, ["GET"]),
        _route(f"{v1}/servers/", servers.list_all, ["GET"]),
        _route(f"{v1}/servers/", servers.create, ["POST"]),
        _route(f"{v1}/servers/{{server_id}}/", servers.get_one, ["GET"]),
        _route(f"{v1}/servers/{{server_id}}/", servers.delete, ["DELETE"]),
        _route(f"{v1}/tokens/", tokens.create, ["POST"]),
        _route(f"{v1}/tokens/{{token_id}}/", tokens.revoke, ["DELETE"]),
        _route("/healthz", health.healthz, ["GET"]),
        _route("/readyz", health.readyz, ["GET"]),
        _route(OPENAPI_PATH, openapi_doc, ["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (unknown route, wrong method) in the SPEC's error shape.
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    err: ApiError
    if status == 404:
        err = NotFound("No such route.")
    elif status == 405:
        err = MethodNotAllowed()
    else:
        err = InternalError()
    headers = dict(err.headers)
    if isinstance(exc, HTTPException) and exc.headers and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    return Response(err.body(), err.status, headers=headers, media_type="application/json")


def create_app(settings: Settings | None = None) -> Starlette:
    if settings is None:
        settings, generated = Settings.from_env().with_admin_token()
        if generated:
            # SPEC: generated at first start and printed (shown once; kept 0600 on disk).
            print(
                f"Generated admin token: {settings.admin_token} "
                f"(saved in {settings.data_dir / ADMIN_TOKEN_FILE})",
                file=sys.stderr,
                flush=True,
            )
    store = AsyncStore.from_settings(settings)
    cache = TokenCache()
    svc = Services(settings=settings, store=store, broker=make_broker(settings), tokens=cache)
    openapi_body = msgspec.json.encode(openapi.build())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.close()

    app = Starlette(
        routes=routes(openapi_body),
        middleware=[
            Middleware(RequestContext),
            Middleware(
                BearerAuth,
                store=store,
                admin_token=settings.admin_token,
                cache=cache,
                public=frozenset({OPENAPI_PATH + "/"}),
            ),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.services = svc
    return app
