"""``Idempotency-Key`` on the POSTs that start work (create and restore).

A script that timed out does not know whether its request started an operation; sending
it again with the same key answers the first answer (status, Location, body) and starts
nothing new. The key is claimed with ``SET NX`` before the handler runs, so of two
identical requests at once exactly one runs; the other waits for the first answer and
replays it. Keys belong to the account (two accounts may use the same key), an admin
token's to the admins of its account apart from its tenants (an admin's answer may show
other accounts' servers), and are kept 24 h after the first answer.

The create or restore script itself checks that the key still holds the request's claim
and records its answer under the key (``committed``), in the same transaction as the
operation it starts: a web process killed between the script and its answer leaves that
record, not a claim that lapses after PENDING_TTL and lets a retry start a second
operation. A retry that finds it answers from it (the handler runs again on the committed
answer, enqueueing the operation once more: a duplicate message is harmless, a missing one
waits for the reaper) and records the answer as ``done``.

What is remembered: successful answers and the state store's refusals (limit reached,
server busy, not found, ...), which are answers about the world. Not remembered: malformed
requests, auth failures and server errors, which say nothing happened; the key is released
so a corrected or later retry runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from api.auth import Principal, principal
from api.errors import ApiError, InvalidRequest, RequestInProgress
from api.inputs import read_body
from api.services import services
from shared.scripts import IdemClaim

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


# Where a claimed request's IdemClaim waits for its handler (an ASGI scope extension key).
SCOPE_KEY: Final = "snapshots.idempotency"


class Remembered(msgspec.Struct):
    """What a key holds: a request's claim (``pending``), the answer of the script it ran
    (``committed``, written by the script: _lib.lua idem_ok) or the answer sent (``done``).
    ``claim``: the request's own random id, so that only it settles the key."""

    fingerprint: str
    state: Literal["pending", "committed", "done"]
    claim: str = ""
    status: int = 0
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""
    answer: str = ""


def claim_of(request: Request) -> IdemClaim | None:
    """The Idempotency-Key claim the request's start transition runs under, if any."""
    claim: IdemClaim | None = request.scope.get(SCOPE_KEY)
    return claim


def _key(request: Request) -> str | None:
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY or not raw.isascii() or not raw.isprintable():
        raise InvalidRequest(f"{HEADER}: must be 1 to {MAX_KEY} printable ASCII characters")
    return raw


def _namespace(who: Principal) -> str:
    """Whose keys these are: the account's tenants, or its admins ("*" is no account name)."""
    return f"*admin:{who.account}" if who.is_admin else who.account


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
        store_key = f"idem:{_namespace(who)}:{hashlib.sha256(key.encode()).hexdigest()}"
        redis = services(request).store.redis
        mine = secrets.token_hex(16)
        pending = msgspec.json.encode(Remembered(fingerprint=fp, state="pending", claim=mine))
        deadline = time.monotonic() + WAIT
        while True:
            answered: Response | None = None
            if await redis.set(store_key, pending, nx=True, ex=PENDING_TTL):
                claim = IdemClaim(key=store_key, claim=mine, fingerprint=fp, ttl=TTL)
                answered = await _first(handler, request, body, claim)
                if answered is not None:
                    return answered
                continue  # our claim lapsed and another request ran first: its answer
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
            if seen.state == "committed":
                # Its request died between the script and the answer: answer from the
                # script's record, on behalf of that claim.
                claim = IdemClaim(key=store_key, claim=seen.claim, fingerprint=fp, ttl=TTL,
                                  answer=seen.answer)
                answered = await _first(handler, request, body, claim)
                if answered is not None:
                    answered.headers["Idempotent-Replayed"] = "true"
                    return answered
                continue
            if time.monotonic() > deadline:
                raise RequestInProgress()
            await asyncio.sleep(POLL)

    wrapper.__name__ = getattr(handler, "__name__", "idempotent")
    return wrapper


async def _first(
    handler: Handler, request: Request, body: bytes, claim: IdemClaim
) -> Response | None:
    """Runs the handler under ``claim`` and settles the key; None when the claim had
    lapsed and another request's script ran first (the caller waits for its answer)."""
    store = services(request).store
    sent = False

    async def receive() -> Message:
        # The body was read to fingerprint it; the handler reads it again from here.
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    request.scope[SCOPE_KEY] = claim
    try:
        response = await handler(Request(request.scope, receive))
    except RequestInProgress:
        return None
    except ApiError as err:
        if err.code not in REMEMBERED_CODES:
            await store.settle_idempotency(claim, None, TTL)
            raise
        response = Response(err.body(), status_code=err.status,
                             headers={**err.headers, "content-type": "application/json"})
    except BaseException:
        await asyncio.shield(store.settle_idempotency(claim, None, TTL))
        raise
    if response.status_code >= 500:
        await store.settle_idempotency(claim, None, TTL)
        return response
    done = Remembered(
        fingerprint=claim.fingerprint,
        state="done",
        claim=claim.claim,
        status=response.status_code,
        headers={k: v for k, v in response.headers.items() if k in KEPT_HEADERS},
        body=bytes(response.body).decode(),
    )
    await store.settle_idempotency(claim, msgspec.json.encode(done), TTL)
    return response
