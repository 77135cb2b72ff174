"""Per-token rate limits (SPEC section 7): a token bucket in Redis, shared by every web
process, so N processes give a token one budget, not N.

``SNAPSHOTS_RATE_LIMIT="<per second>[:<burst>]"``: the bucket holds ``burst`` requests
and refills at ``rate`` a second; a read costs 1, a write (POST, PUT, PATCH, DELETE)
``SNAPSHOTS_RATE_LIMIT_WRITE_COST`` (5). Admin tokens are exempt unless
``SNAPSHOTS_RATE_LIMIT_ADMIN=1``. Past the budget: ``429 rate_limited`` with
``Retry-After`` (whole seconds until the request would pass).

Why one Lua script and not the ``limits`` package: ``limits`` offers fixed, moving and
sliding windows, none of which is a token bucket (a rate with a burst, refilling
continuously), and it would bring its own Redis connections. The script is GCRA, the
token bucket kept as one timestamp per token: one round trip on the connection pool the
API already has, atomic across processes, exact Retry-After, and Redis's own clock, so
web processes with skewed clocks agree.
"""

from __future__ import annotations

import math
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Principal
from api.errors import RateLimited
from shared.async_store import AsyncStore
from shared.settings import RateLimit

READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

# KEYS[1]: the token's bucket. ARGV: ms per request (1000 / rate), burst, cost.
# The key holds the "theoretical arrival time" (ms): when the bucket will be full again.
# Answers {1, remaining} when the request passes, {0, ms until it would}.
GCRA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = math.min(tonumber(ARGV[3]), burst)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allowed_at = new_tat - interval * burst
if allowed_at > now then
  return {0, math.ceil(allowed_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return {1, math.floor((now + interval * burst - new_tat) / interval)}
"""


def bucket_key(principal: Principal) -> str:
    """The token names the bucket: its digest, which auth already made (the key must not
    hold a secret). Not the Authorization header, which spells one token many ways (the
    scheme in any case, any number of spaces), each of which would get a budget of its
    own. The environment's admin token has no digest; it has one bucket too."""
    return "ratelimit:" + (principal.token_digest or "env-admin")[:32]


class RateLimiter:
    """Pure ASGI, inside BearerAuth (it needs the caller) and outside the router."""

    def __init__(self, app: ASGIApp, store: AsyncStore, limit: RateLimit) -> None:
        self.app = app
        self.limit = limit
        self.interval = 1000.0 / limit.rate
        self.script = store.redis.register_script(GCRA)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal: Principal | None = scope.get("principal")
        if scope["type"] == "http" and principal is not None and (
            self.limit.limit_admin or not principal.is_admin
        ):
            cost = 1 if scope["method"] in READS else self.limit.write_cost
            passed, value = await self.script(
                keys=[bucket_key(principal)], args=[self.interval, self.limit.burst, cost]
            )
            if not int(passed):
                seconds = max(1, math.ceil(int(value) / 1000))
                raise RateLimited(
                    f"This token's rate limit ({self.limit.rate:g} requests/s, burst "
                    f"{self.limit.burst}; a write costs {self.limit.write_cost}) is spent; "
                    f"retry in {seconds} s.",
                    retry_after=seconds,
                )
        await self.app(scope, receive, send)
