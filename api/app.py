"""The ASGI application: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from api import events, health, openapi, operations, servers, snapshots, tokens, webhooks
from api.auth import BearerAuth, TokenCache
from api.idempotency import idempotent
from api.middleware import RequestContext
from api.services import Services
from shared.async_store import AsyncStore
from shared.broker import make_broker
from shared.settings import ADMIN_TOKEN_FILE, Settings

OPENAPI_PATH = "/api/v1/openapi.json"
Handler = Callable[[Request], Awaitable[Response]]


def _route(path: str, **handlers: Handler) -> BaseRoute:
    """One route per path, dispatching on the method, so a 405 lists every allowed one.

    Every route is registered with a trailing slash; RequestContext adds a missing one,
    so both spellings answer the same without a redirect or a second route to match.
    """
    by_method = {m.upper(): h for m, h in handlers.items()}
    if "GET" in by_method:
        by_method["HEAD"] = by_method["GET"]
    if len(handlers) == 1:
        endpoint = next(iter(handlers.values()))
    else:

        async def endpoint(request: Request) -> Response:
            response: Response = await by_method[request.method](request)
            return response

    return Route(path.rstrip("/") + "/", endpoint, methods=list(by_method))


def routes(openapi_body: bytes) -> list[BaseRoute]:
    async def openapi_doc(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    v1 = "/api/v1"
    # The hottest routes first: the router tries them in order.
    return [
        _route(f"{v1}/snapshots/{{snapshot_id}}/", get=snapshots.get_one,
               delete=snapshots.delete),
        _route(f"{v1}/snapshots/", get=snapshots.list_all,
               post=idempotent(snapshots.create)),
        _route(f"{v1}/operations/{{operation_id}}/", get=operations.get_one),
        _route(f"{v1}/snapshots/{{snapshot_id}}/restore/",
               post=idempotent(snapshots.restore)),
        _route(f"{v1}/operations/", get=operations.list_all),
        _route(f"{v1}/servers/", get=servers.list_all, post=servers.create),
        _route(f"{v1}/servers/{{server_id}}/", get=servers.get_one, delete=servers.delete),
        _route(f"{v1}/tokens/", post=tokens.create),
        _route(f"{v1}/tokens/{{token_id}}/", delete=tokens.revoke),
        _route(f"{v1}/events/", get=events.stream),
        _route(f"{v1}/webhooks/", get=webhooks.list_all, post=webhooks.create),
        _route(f"{v1}/webhooks/{{webhook_id}}/", get=webhooks.get_one, delete=webhooks.delete),
        _route(f"{v1}/webhooks/{{webhook_id}}/deliveries/", get=webhooks.deliveries),
        _route("/healthz", get=health.healthz),
        _route("/readyz", get=health.readyz),
        _route(OPENAPI_PATH, get=openapi_doc),
    ]


class SnapshotsApp(Starlette):
    """Starlette with our own, shorter middleware stack.

    Starlette's ServerErrorMiddleware and ExceptionMiddleware are left out: RequestContext
    already turns every exception (the router's 404/405 included) into the SPEC's error
    shape, and two fewer layers are measurable on the hot GET paths.
    """

    auth_options: dict[str, Any]

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(BearerAuth(self.router, **self.auth_options))


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

    app = SnapshotsApp(routes=routes(openapi_body), lifespan=lifespan)
    app.auth_options = {
        "store": store,
        "admin_token": settings.admin_token,
        "cache": cache,
        "public": frozenset({OPENAPI_PATH + "/"}),
    }
    app.router.redirect_slashes = False
    app.state.services = svc
    return app
