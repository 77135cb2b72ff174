"""``Idempotency-Key`` on the POSTs that start work (create and restore).

A script that timed out does not know whether its request started an operation; sending
it again with the same key answers the first answer (status, Location, body) and starts
nothing new. The key is claimed with ``SET NX`` before the handler runs, so of two
identical requests at once exactly one runs; the other waits for the first answer and
replays it. Keys belong to the account (two accounts may use the same key) and are kept
24 h after the first answer.

What is remembered: successful answers and the state store's refusals (limit reached,
server busy, not found, ...), which are answers about the world. Not remembered: malformed
requests, auth failures and server errors, which say nothing happened; the key is released
so a corrected or later retry runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from api.auth import principal
from api.errors import ApiError, InvalidRequest
from api.inputs import read_body
from api.services import services

Handler = Callable[[Request], Awaitable[Response]]

HEADER: Final = "Idempotency-Key"
TTL: Final = 24 * 3600
# A claimed key whose request died (process killed) frees itself after this long.
PENDING_TTL: Final = 60
# How long a duplicate waits for the first request's answer before giving up with 409.
WAIT: Final = 15.0
POLL: Final = 0.05
MAX_KEY: Final = 255
# Refusals of the state store are answers worth replaying; see the module docstring.
REMEMBERED_CODES: Final = frozenset(
    {"snapshot_limit_reached", "server_invalid_state", "snapshot_not_available",
     "snapshot_in_use", "not_found"}
)
KEPT_HEADERS: Final = ("location", "content-type")


class RequestInProgress(ApiError):
    status, code = 409, "request_in_progress"
    default_message = "A request with this Idempotency-Key is still being processed; retry."


class Remembered(msgspec.Struct):
    fingerprint: str
    state: Literal["pending", "done"]
    status: int = 0
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""


def _key(request: Request) -> str | None:
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY or not raw.isascii() or not raw.isprintable():
        raise InvalidRequest(f"{HEADER}: must be 1 to {MAX_KEY} printable ASCII characters")
    return raw


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request's identity: the same JSON with other spacing or key order is the same."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        # Not JSON, or nested deeper than json's recursion allows (a 64 KiB body of "["):
        # the handler refuses it with a 400, and the raw bytes identify it as well.
        canonical = body
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def _replay(done: Remembered) -> Response:
    headers = {**done.headers, "Idempotent-Replayed": "true"}
    return Response(done.body.encode(), status_code=done.status, headers=headers)


def idempotent(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        key = _key(request)
        if key is None:
            return await handler(request)
        who = principal(request)
        body = await read_body(request)
        fp = fingerprint(request.method, request.url.path, body)
        store_key = f"idem:{who.account}:{hashlib.sha256(key.encode()).hexdigest()}"
        redis = services(request).store.redis
        pending = msgspec.json.encode(Remembered(fingerprint=fp, state="pending"))
        deadline = time.monotonic() + WAIT
        while True:
            if await redis.set(store_key, pending, nx=True, ex=PENDING_TTL):
                return await _first(handler, request, body, store_key, fp)
            raw = await redis.get(store_key)
            if raw is None:
                continue  # released or expired between the two calls: claim it again
            seen = msgspec.json.decode(raw, type=Remembered)
            if seen.fingerprint != fp:
                raise InvalidRequest(
                    f"{HEADER} {key!r} was already used with a different request; "
                    "use a new key for a new request."
                )
            if seen.state == "done":
                return _replay(seen)
            if time.monotonic() > deadline:
                raise RequestInProgress()
            await asyncio.sleep(POLL)

    wrapper.__name__ = getattr(handler, "__name__", "idempotent")
    return wrapper


async def _first(
    handler: Handler, request: Request, body: bytes, store_key: str, fp: str
) -> Response:
    redis = services(request).store.redis
    sent = False

    async def receive() -> Message:
        # The body was read to fingerprint it; the handler reads it again from here.
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        response = await handler(Request(request.scope, receive))
    except ApiError as err:
        if err.code not in REMEMBERED_CODES:
            await redis.delete(store_key)
            raise
        response = Response(err.body(), status_code=err.status,
                             headers={**err.headers, "content-type": "application/json"})
    except BaseException:
        await asyncio.shield(redis.delete(store_key))
        raise
    if response.status_code >= 500:
        await redis.delete(store_key)
        return response
    done = Remembered(
        fingerprint=fp,
        state="done",
        status=response.status_code,
        headers={k: v for k, v in response.headers.items() if k in KEPT_HEADERS},
        body=bytes(response.body).decode(),
    )
    await redis.set(store_key, msgspec.json.encode(done), ex=TTL)
    return response
