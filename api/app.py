"""The ASGI application: ``uvicorn --factory api.app:create_app``."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any, cast

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from api import openapi
from api.auth import BearerAuth, TokenCache
from api.endpoint import PUBLIC, Endpoint, Handler
from api.eventhub import EventHub
from api.middleware import Front
from api.observe import HttpMetrics
from api.ratelimit import RateLimiter
from api.routes import TABLE
from api.services import Services
from api.views import snapshot_views
from shared import logs
from shared.async_store import AsyncStore
from shared.broker import make_broker
from shared.settings import ADMIN_TOKEN_FILE, RateLimit, Settings

OPENAPI_PATH = "/api/v1/openapi.json"


def _route(path: str, rows: list[Endpoint]) -> BaseRoute:
    """One route per path, dispatching on the method, so a 405 lists every allowed one.

    Every route is registered with a trailing slash; Front adds a missing one, so both
    spellings answer the same without a redirect or a second route to match.
    """
    by_method: dict[str, Handler] = {e.method: e.handler for e in rows}
    if "GET" in by_method:
        by_method["HEAD"] = by_method["GET"]

    async def endpoint(request: Request) -> Response:  # what Starlette's Route is given
        response: Response = await by_method[request.method](request)
        return response

    route = Route(path.rstrip("/") + "/", endpoint, methods=list(by_method))
    route.app = _asgi(by_method)
    return route


def _asgi(by_method: dict[str, Handler]) -> ASGIApp:
    """The route's handlers as one ASGI app, without Starlette's exception-handler layer
    around it (``request_response``): that layer looks up handlers this app never
    registers and wraps ``send`` once more on every request; every exception goes to
    Front anyway. The method picks the handler here, not in a coroutine of its own: the
    router only hands over a request whose method the route has (else 405)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await by_method[scope["method"]](Request(scope, receive, send))
        await response(scope, receive, send)

    return app


class Dispatch:
    """Starlette's ``Router.app`` for this app's routes, as a plain call that answers the
    matched route's coroutine instead of a coroutine that awaits it.

    Each layer between uvicorn and a handler is a coroutine frame that a request enters,
    leaves, and passes through again at every suspension (each Redis reply): Router's
    ``__call__``, its ``app`` and ``Route.handle`` were three of them. The matching is the
    router's own (``Route.matches``, the first full match, else the first partial one:
    405), and so is everything that is not an HTTP request (the lifespan).
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self.routes = router.routes
        # Paths of routes without parameters that no route before them matches (so the
        # router would pick them first for that path): found with one dict lookup.
        self.exact: dict[str, tuple[Route, set[str]]] = {}
        for i, route in enumerate(self.routes):
            before = self.routes[:i]
            if (isinstance(route, Route) and route.methods and not route.param_convertors
                    and all(isinstance(r, Route) and not r.path_regex.match(route.path)
                            for r in before)):
                self.exact.setdefault(route.path, (route, route.methods))

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.router(scope, receive, send)
        scope["router"] = self.router
        exact = self.exact.get(scope["path"])
        if exact is not None and scope["method"] in exact[1] and not scope.get("root_path"):
            # What Route.matches gives this path (no parameters) and the router then does.
            hit = exact[0]
            scope["route"] = hit
            scope["endpoint"] = hit.endpoint
            scope["path_params"] = dict(scope.get("path_params", {}))
            return hit.app(scope, receive, send)
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                # Route.handle would check the method again: a full match has it.
                return cast(Route, route).app(scope, receive, send)
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        if partial is not None:
            scope["route"] = partial[0]
            scope.update(partial[1])
            return partial[0].handle(scope, receive, send)  # 405, with Allow
        return self.router.default(scope, receive, send)  # 404 (Front's shape)


def routes(table: Iterable[Endpoint]) -> list[BaseRoute]:
    """The router's routes: the table's rows grouped by path (in the table's order), then
    the OpenAPI document built from the same rows."""
    rows = list(table)
    by_path: dict[str, list[Endpoint]] = {}
    for e in rows:
        by_path.setdefault(e.path, []).append(e)
    openapi_body = msgspec.json.encode(openapi.build(rows))

    async def openapi_doc(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    doc = Route(OPENAPI_PATH + "/", openapi_doc, methods=["GET", "HEAD"])
    return [*(_route(path, group) for path, group in by_path.items()), doc]


def public_paths(table: Iterable[Endpoint]) -> frozenset[str]:
    """Paths under /api/v1/ that need no token (as the router sees them: with a slash)."""
    public = {e.path.rstrip("/") + "/" for e in table if e.scope == PUBLIC}
    return frozenset({*public, OPENAPI_PATH + "/"})


class SnapshotsApp(Starlette):
    """Starlette with our own, shorter middleware stack.

    Outermost, Front gives each request its id, logs it and counts it in the metrics.
    Starlette's ServerErrorMiddleware and ExceptionMiddleware are left out (and its
    per-route exception layer, see ``_asgi``): Front already turns every exception (the
    router's 404/405 included) into the SPEC's error shape, and fewer layers are
    measurable on every request.
    """

    auth_options: dict[str, Any]
    http_metrics: HttpMetrics
    rate_limit: RateLimit | None = None

    def build_middleware_stack(self) -> ASGIApp:
        inner: ASGIApp = Dispatch(self.router)
        if self.rate_limit is not None:
            inner = RateLimiter(inner, self.auth_options["store"], self.rate_limit)
        return Front(BearerAuth(inner, **self.auth_options), self.http_metrics,
                     self.router.routes)


def create_app(settings: Settings | None = None) -> Starlette:
    # The process's own app (uvicorn's factory call), not one of a test's.
    served = settings is None
    if settings is None:
        settings, generated = Settings.from_env().with_admin_token()
        # The process's logging (uvicorn's loggers included); a test's app leaves it alone.
        logs.configure(settings.log_format)
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
    http_metrics = HttpMetrics(settings.prometheus_multiproc_dir)
    hub = EventHub(settings, cache)
    svc = Services(settings=settings, store=store, broker=make_broker(settings), tokens=cache,
                   http_metrics=http_metrics, events=hub, snapshot_views=snapshot_views())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The event reader starts now, not with the first stream: it also carries token
        # revocations from other processes to this one's token cache.
        hub.start()
        if served:
            # Everything loaded so far (modules, the app, its routes) lives as long as the
            # process: out of the collector's sight, so that its collections, which a
            # request's allocations trigger every few requests, scan only what requests
            # made. Measured under wrk on the list of 50: ~15-20 us less CPU per request.
            gc.collect()
            gc.freeze()
        yield
        await hub.close()
        await store.close()

    app = SnapshotsApp(routes=routes(TABLE), lifespan=lifespan)
    app.auth_options = {
        "store": store,
        "admin_token": settings.admin_token,
        "cache": cache,
        "public": public_paths(TABLE),
    }
    app.http_metrics = http_metrics
    app.rate_limit = settings.rate_limit
    app.router.redirect_slashes = False
    app.state.services = svc
    return app
