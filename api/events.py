"""``GET /api/v1/events/``: the caller's events as Server-Sent Events.

Each client gets its own Redis connection blocked in ``XREAD BLOCK`` on the ``events``
stream: a blocked connection cannot be shared, and one per client means a client that
goes away takes exactly its own connection with it. The response is a small ASGI
callable rather than Starlette's StreamingResponse so the two ways a stream ends are
explicit: the client disconnects (a task watching ``receive()`` cancels the read) or
Redis fails (the stream ends; the client resumes with ``Last-Event-ID``). Either way the
``finally`` closes the connection.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Final

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.auth import principal
from api.errors import InvalidRequest
from api.inputs import query_id
from api.services import services
from shared import events

log = logging.getLogger("api.events")

# Client name of the per-stream connections, so tests and operators can count them.
CLIENT_NAME: Final = "snapshots-sse"
BATCH: Final = 100
RETRY_MS: Final = 3000


def _resume_from(request: Request) -> str | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not events.valid_stream_id(raw):
        raise InvalidRequest(
            "Last-Event-ID: must be an event id as sent in the stream's id: lines "
            "(like 1700000000000-0)"
        )
    return raw


async def stream(request: Request) -> Response:
    who = principal(request)
    server_id = query_id(request, "server_id")
    start = _resume_from(request)
    svc = services(request)
    if start is None:
        # Pin "now" before the headers go out: whatever happens after the client sees
        # the 200 is in the stream, so a client may subscribe first and read state second
        # without a gap (XREAD's "$" would be resolved later, at the first read).
        last = await svc.store.redis.xrevrange(events.STREAM, count=1)
        start = str(last[0][0]) if last else "0-0"
    return EventStream(
        url=svc.settings.effective_redis_url,
        start=start,
        account=who.account_filter,
        server_id=server_id,
        keepalive=svc.settings.events_keepalive,
    )


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(
        self,
        url: str,
        start: str,
        account: str | None,
        server_id: int | None,
        keepalive: float,
    ) -> None:
        super().__init__(
            status_code=200,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=self.media_type,
        )
        # Response computes a Content-Length of 0 for the empty body; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.url = url
        self.last_id = start
        self.account = account
        self.server_id = server_id
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            single_connection_client=True,
            client_name=CLIENT_NAME,
            socket_connect_timeout=5,
            # XREAD blocks at most one keep-alive interval; anything longer is a hang.
            socket_timeout=self.keepalive + 10,
        )
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"retry: %d\n\n" % RETRY_MS,
                        "more_body": True})
            async with anyio.create_task_group() as tg:

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(until_disconnect)
                await self._pump(conn, send)
                tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote; nothing left to tell it
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    async def _pump(self, conn: aioredis.Redis, send: Send) -> None:
        last_sent = time.monotonic()
        while True:
            wait = max(0.0, last_sent + self.keepalive - time.monotonic())
            try:
                answer: Any = await conn.xread(
                    {events.STREAM: self.last_id}, count=BATCH, block=max(1, math.ceil(wait * 1000))
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                # The client reconnects (retry: above) and resumes from its last id.
                log.warning("event stream ends: redis failed: %s", exc)
                return
            chunks: list[bytes] = []
            for _stream, entries in answer or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    event = events.from_entry(entry_id, fields)
                    if event is not None and events.visible(event, self.account, self.server_id):
                        chunks.append(events.sse_frame(event))
            now = time.monotonic()
            if not chunks and now - last_sent >= self.keepalive:
                chunks.append(b": keep-alive\n\n")
            if chunks:
                await send({"type": "http.response.body", "body": b"".join(chunks),
                            "more_body": True})
                last_sent = now
