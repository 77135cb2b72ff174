"""Pure ASGI middleware, outermost: request ids on every response, errors as the SPEC's
JSON, one access-log line and the HTTP metrics per request.

It sits outside auth and the router, so whatever goes wrong below (an ApiError, Redis
down, a bug) still answers the one error shape with an ``X-Request-Id``, never a trace,
and the log line and the metrics see the final status of every answer, errors included.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Sequence

from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from api.observe import HttpMetrics, access_line, route_of
from shared import logs
from shared.outage import is_outage

log = logging.getLogger("api")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def _from_http(exc: HTTPException) -> ApiError:
    """Starlette's own errors (the router's unknown route / wrong method) in our shape."""
    if exc.status_code == 404:
        return NotFound("No such route.")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow")
        return MethodNotAllowed(headers={"Allow": allow} if allow else None)
    if 400 <= exc.status_code < 500:
        return InvalidRequest(str(exc.detail))
    return InternalError()


def to_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return _from_http(exc)
    # Redis away, loading, read-only or without its master: the workers' one definition.
    if isinstance(exc, OSError) or is_outage(exc):
        log.warning("redis unavailable: %s", exc)
        return ServiceUnavailable()
    log.exception("unhandled error", exc_info=exc)
    return InternalError()


async def send_error(send: Send, err: ApiError) -> None:
    body = err.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Front:
    """The one middleware outside auth and the router, for every HTTP request: its id (the
    caller's ``X-Request-Id`` if sane, else a new one) on the response and in the log
    context, the trailing slash, errors in the SPEC's shape, then the access-log line and
    the HTTP metrics with the final status.

    One layer, not two (request context inside observe, as before): each layer costs a
    coroutine, a send wrapper and its own try/finally on every request.
    """

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                # Honour a caller's id so logs correlate across hops, but only a sane one:
                # it is echoed into our headers and logs.
                if _SANE_ID.match(value):
                    request_id = value
                break
        if not request_id:
            request_id = os.urandom(12).hex().encode()
        rid = request_id.decode()
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope["path"]
        if not path.endswith("/"):
            # SPEC: a path without its trailing slash answers the same; routes all end in "/".
            scope["path"] = path + "/"
        header = (b"x-request-id", request_id)
        status = 0  # 0: nothing sent yet

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain call answering uvicorn's send coroutine: no coroutine of its own to
            # make and run for each of a response's two messages.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            return send(message)

        token = logs.enter(request_id=rid)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            err = to_api_error(exc)
            if status:
                # Too late for an error body; the client sees a cut response.
                log.error("error after the response started: %r", exc)
            else:
                await send_error(send_with_id, err)
        finally:
            seconds = time.perf_counter() - started
            # What the client saw if nothing was sent at all (a cancelled request).
            final = status or 500
            route = route_of(scope, self.routes)
            method: str = scope["method"]
            self.metrics.observe(method, route, final, seconds)
            principal = scope.get("principal")
            access_line(method, scope["path"], route, final, seconds, rid,
                        None if principal is None else principal.account)
            logs.leave(token)
