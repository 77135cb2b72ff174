"""Our API with its hot reads on redis-py's asyncio client instead of shared/fastread.py.

bench/api.py runs it beside the real API, on the same Redis and data, to measure what the
hand-written pipelined connection buys:

    .venv/bin/uvicorn --factory bench.redispy_app:create_app --port 8002   (from the root)

Everything else is the real application; only ``AsyncStore.reads`` changes: each read is one
redis-py call (hiredis parser, connection pool; EVALSHA for a listing page), which is what
AsyncStore would do without fastread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.utils
from starlette.applications import Starlette

from api.app import create_app as create_real_app
from shared.scripts import as_dict

if not redis.utils.HIREDIS_AVAILABLE:  # the comparison is against redis-py at its best
    raise SystemExit("hiredis is not installed: redis-py would use its pure-Python parser")


class RedisPyReads:
    """The interface of shared.fastread.FastReads, on one redis-py asyncio client."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=timeout
        )
        self._execute: Callable[..., Awaitable[Any]] = self.client.execute_command

    async def command(self, *args: str | bytes | int) -> Any:
        reply = await self._execute(*args)
        # redis-py answers HGETALL as a dict; FastReads as the flat list Redis sends.
        return [x for kv in reply.items() for x in kv] if isinstance(reply, dict) else reply

    async def get(self, key: str) -> str | None:
        reply: str | None = await self._execute("GET", key)
        return reply

    generation = 1  # one client for the process's life, as FastReads' connection count

    async def batch(self, commands: Sequence[tuple[str | bytes | int, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        # redis-py answers HGETALL as a dict; FastReads as the flat list Redis sends.
        return [[x for kv in r.items() for x in kv] if isinstance(r, dict) else r
                for r in await pipe.execute()]

    async def hgetall(self, key: str) -> dict[str, str]:
        return as_dict(await self.client.hgetall(key))

    async def close(self) -> None:
        await self.client.aclose()


def create_app() -> Starlette:
    app = create_real_app()
    store = app.state.services.store  # the one AsyncStore of the app (auth uses it too)
    # Swapped before the first request: FastReads connects lazily, so it never connected.
    store.reads = RedisPyReads(store.settings.effective_redis_url)
    return app
