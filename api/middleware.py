"""Pure ASGI middleware: request ids on every response, and errors as the SPEC's JSON.

It sits outside auth and the router, so whatever goes wrong below (an ApiError, Redis
down, a bug) still answers the one error shape with an ``X-Request-Id``, never a trace.
"""

from __future__ import annotations

import logging
import os
import re

import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import (
    ApiError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from shared.logs import log_context

log = logging.getLogger("api")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_REDIS_DOWN = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    OSError,
)


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
    if isinstance(exc, _REDIS_DOWN):
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


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        path: str = scope["path"]
        if not path.endswith("/"):
            # SPEC: a path without its trailing slash answers the same; routes all end in "/".
            scope["path"] = path + "/"
        header = (b"x-request-id", request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with log_context(request_id=scope["state"]["request_id"]):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                err = to_api_error(exc)
                if started:
                    # Too late for an error body; the client sees a cut response.
                    log.error("error after the response started: %r", exc)
                    return
                await send_error(send_with_id, err)
