"""Bearer-token authentication (pure ASGI) and the scope rules.

Tokens are ``snp_`` + ``secrets.token_urlsafe(32)``; only their SHA-256 is stored. A
lookup is cached in-process for a few seconds so a hot GET costs no extra round trip;
revoking drops the entry at once in this process and, through the ``token.revoked`` event
their event readers see, in every other web process within milliseconds (CACHE_TTL bounds
it should that reader be down).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import Forbidden, Unauthorized
from shared import logs
from shared.async_store import AsyncStore
from shared.schemas import TokenScope

TOKEN_PREFIX: Final = "snp_"
CACHE_TTL: Final = 5.0
CACHE_MAX: Final = 10_000
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=\-]{8,256}$")
# Each scope allows what the ones before it allow.
SCOPE_RANK: Final[dict[TokenScope, int]] = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Principal:
    account: str
    scope: TokenScope
    # SHA-256 of the token (what revoking names); None for the environment's admin token.
    token_digest: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @property
    def account_filter(self) -> str | None:
        """The account to restrict to; None for admins, who see every account."""
        return None if self.scope == "admin" else self.account


ENV_ADMIN = Principal(account="*", scope="admin")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def principal(request: Request) -> Principal:
    p: Principal = request.scope["principal"]
    return p


def require(request: Request, scope: TokenScope) -> Principal:
    """The caller, if its scope reaches ``scope``; else 403."""
    p = principal(request)
    if SCOPE_RANK[p.scope] < SCOPE_RANK[scope]:
        raise Forbidden(f"This call needs a token with {scope} scope; this one has {p.scope}.")
    return p


class TokenCache:
    """Recently seen tokens → principal, for CACHE_TTL seconds.

    Keyed by the ``Authorization`` header as the request sent it (process memory only,
    like the request that carried it), so a hit costs one dict lookup: no parsing, no
    hashing. Only a header whose token was well-formed and found in Redis gets here.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self.clock = clock
        # Counts the drops: a lookup that began before one may have read a token revoked
        # since, and its answer is then not kept (put's `seen`).
        self.drops = 0

    def get(self, header: bytes) -> Principal | None:
        entry = self._entries.get(header)
        if entry is None:
            return None
        if entry[0] < self.clock():
            self._entries.pop(header, None)
            return None
        return entry[1]

    def put(self, header: bytes, value: Principal, seen: int | None = None) -> None:
        """seen: ``drops`` when the lookup of ``value`` began; a drop since: not kept."""
        if seen is not None and seen != self.drops:
            return
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[header] = (self.clock() + CACHE_TTL, value)

    def drop(self, token_digest: str) -> None:
        """Forget a revoked token (known here only by its digest), however it was sent."""
        self.drops += 1
        for header in [h for h, e in self._entries.items() if e[1].token_digest == token_digest]:
            self._entries.pop(header, None)


class BearerAuth:
    """Puts ``scope["principal"]`` on every request under ``prefix`` except public paths."""

    def __init__(
        self,
        app: ASGIApp,
        store: AsyncStore,
        admin_token: str | None,
        cache: TokenCache,
        prefix: str = "/api/v1/",
        public: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.store = store
        self.admin_token = admin_token.encode() if admin_token else None
        self.cache = cache
        self.prefix = prefix
        self.public = public

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain call answering the inner app's coroutine, not a coroutine of its own,
        # when the token is known here (the common case): one layer less for a request to
        # pass through (see api/app.py Dispatch). Refusals raise from here, inside Front.
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root + "/"):
                # the path below it, as the router matches it (else no check, and a 500)
                path = path[len(root):]
            if path.startswith(self.prefix) and path not in self.public:
                header = authorization(scope)
                found = self.cache.get(header)
                if found is None:
                    token = bearer_token(header)
                    if self.admin_token is None or not hmac.compare_digest(
                        token.encode(), self.admin_token
                    ):
                        return self._looked_up(header, token, scope, receive, send)
                    found = ENV_ADMIN
                scope["principal"] = found
                logs.bind(account=found.account)
        return self.app(scope, receive, send)

    async def _looked_up(self, header: bytes, token: str, scope: Scope, receive: Receive,
                         send: Send) -> None:
        key = digest(token)
        seen = self.cache.drops
        record = await self.store.get_token(key)
        if record is None:
            raise Unauthorized("Unknown or revoked token.")
        found = Principal(account=record.account, scope=record.scope, token_digest=key)
        self.cache.put(header, found, seen)  # not if a revocation came meanwhile
        scope["principal"] = found
        logs.bind(account=found.account)
        await self.app(scope, receive, send)


def authorization(scope: Scope) -> bytes:
    """The request's Authorization header as sent (b"" when it has none)."""
    header: bytes
    for name, header in scope["headers"]:
        if name == b"authorization":
            return header
    return b""


def bearer_token(header: bytes) -> str:
    """The bearer token of an Authorization header, well-formed; else 401."""
    if not header:
        raise Unauthorized("Missing Authorization header; send 'Bearer <token>'.")
    kind, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not _TOKEN_SHAPE.match(token):
        raise Unauthorized("Malformed Authorization header; send 'Bearer <token>'.")
    return token
