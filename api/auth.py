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

    Keyed by the presented token itself (process memory only, like the request that
    carried it), so a hit costs one dict lookup and no hashing.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(token, None)
            return None
        return entry[1]

    def put(self, token: str, value: Principal) -> None:
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[token] = (time.monotonic() + CACHE_TTL, value)

    def drop(self, token_digest: str) -> None:
        """Forget a revoked token (known here only by its digest)."""
        for token in [t for t, e in self._entries.items() if e[1].token_digest == token_digest]:
            self._entries.pop(token, None)


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(self.prefix) and path not in self.public:
                found = await self.authenticate(scope)
                scope["principal"] = found
                logs.bind(account=found.account)
        await self.app(scope, receive, send)

    async def authenticate(self, scope: Scope) -> Principal:
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if not header:
            raise Unauthorized("Missing Authorization header; send 'Bearer <token>'.")
        try:
            kind, _, token = header.decode("latin-1").partition(" ")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise Unauthorized("Malformed Authorization header.") from None
        token = token.strip()
        if kind.lower() != "bearer" or not _TOKEN_SHAPE.match(token):
            raise Unauthorized("Malformed Authorization header; send 'Bearer <token>'.")
        if self.admin_token is not None and hmac.compare_digest(
            token.encode(), self.admin_token
        ):
            return ENV_ADMIN
        found = self.cache.get(token)
        if found is not None:
            return found
        key = digest(token)
        record = await self.store.get_token(key)
        if record is None:
            raise Unauthorized("Unknown or revoked token.")
        found = Principal(account=record.account, scope=record.scope, token_digest=key)
        self.cache.put(token, found)
        return found
