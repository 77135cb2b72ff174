"""One HTTP endpoint as data: the row of the route table (``api/routes.py``).

A row says everything about an endpoint once: method, path, handler, the token scope it
needs, the request body it decodes, the response it answers, its query parameters and a
summary. ``api/app.py`` turns the rows into Starlette routes and ``api/openapi.py`` into
the OpenAPI paths, so the router and the document cannot disagree.

What a row does for its handler, in this order: the scope check (403 before anything is
read), the ``Idempotency-Key`` replay when ``idempotent``, then the body, decoded as
``request`` and passed as the handler's second argument (400/413/415 before the handler
runs). A handler without a ``request`` type takes the request only.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from starlette.requests import Request
from starlette.responses import Response

from api.auth import require
from api.idempotency import idempotent as with_idempotency
from api.inputs import decode_body
from shared.schemas import TokenScope

Handler = Callable[[Request], Awaitable[Response]]
B = TypeVar("B")
BodyHandler = Callable[[Request, B], Awaitable[Response]]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# A route without a token (outside /api/v1/ or listed as public to BearerAuth).
PUBLIC: Literal["public"] = "public"
RowScope = TokenScope | Literal["public"]

_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Query:
    """A query (or header) parameter, as the OpenAPI document shows it."""

    name: str
    schema: dict[str, Any]
    where: Literal["query", "header"] = "query"
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: Method
    path: str
    handler: Handler  # already wrapped: scope, idempotency and body decoding applied
    scope: RowScope
    summary: str
    request: type[Any] | None
    request_required: bool
    response: type[Any] | None
    status: int
    query: tuple[Query, ...]
    idempotent: bool
    description: str | None
    media_type: str
    # Error statuses the document lists; None means the usual ones for the row's shape.
    errors: tuple[int, ...] | None
    # Further documented answers besides the errors: status -> (schema, description).
    other_responses: dict[int, tuple[type[Any], str]] = field(default_factory=dict)

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


def _scoped(handler: Handler, scope: TokenScope) -> Handler:
    async def checked(request: Request) -> Response:
        require(request, scope)
        return await handler(request)

    return checked


def _decoding(handler: BodyHandler[B], cls: type[B], optional: bool) -> Handler:
    async def decoded(request: Request) -> Response:
        return await handler(request, await decode_body(request, cls, optional=optional))

    return decoded


@overload
def endpoint(
    method: Method, path: str, handler: Handler, *, scope: RowScope,
    summary: str, response: type[Any] | None, status: int = ..., request: None = None,
    request_required: bool = ..., query: tuple[Query, ...] = ..., idempotent: bool = ...,
    description: str | None = ..., media_type: str = ..., errors: tuple[int, ...] | None = ...,
    other_responses: dict[int, tuple[type[Any], str]] | None = ...,
) -> Endpoint: ...


@overload
def endpoint(
    method: Method, path: str, handler: BodyHandler[B], *, scope: RowScope,
    summary: str, response: type[Any] | None, status: int = ..., request: type[B],
    request_required: bool = ..., query: tuple[Query, ...] = ..., idempotent: bool = ...,
    description: str | None = ..., media_type: str = ..., errors: tuple[int, ...] | None = ...,
    other_responses: dict[int, tuple[type[Any], str]] | None = ...,
) -> Endpoint: ...


def endpoint(
    method: Method,
    path: str,
    handler: Any,
    *,
    scope: RowScope,
    summary: str,
    response: type[Any] | None,
    status: int = 200,
    request: type[Any] | None = None,
    request_required: bool = True,
    query: tuple[Query, ...] = (),
    idempotent: bool = False,
    description: str | None = None,
    media_type: str = "application/json",
    errors: tuple[int, ...] | None = None,
    other_responses: dict[int, tuple[type[Any], str]] | None = None,
) -> Endpoint:
    """A table row; mypy checks that ``handler`` takes the ``request`` type it is given."""
    wrapped: Handler = handler
    if request is not None:
        wrapped = _decoding(handler, request, optional=not request_required)
    if idempotent:
        wrapped = with_idempotency(wrapped)
    # Every token reaches "read", and BearerAuth already refused requests without one.
    if scope in ("write", "admin"):
        wrapped = _scoped(wrapped, scope)
    return Endpoint(
        method=method, path=path, handler=wrapped, scope=scope, summary=summary,
        request=request, request_required=request_required, response=response,
        status=status, query=query, idempotent=idempotent, description=description,
        media_type=media_type, errors=errors, other_responses=other_responses or {},
    )
