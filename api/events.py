"""``GET /api/v1/events/``: the caller's events as Server-Sent Events.

A stream holds no Redis connection: the process's ``EventHub`` (``api/eventhub.py``)
reads the ``events`` stream once for every stream and queues each one its frames. The
response is a small ASGI callable rather than Starlette's StreamingResponse so the ways a
stream ends are explicit: the client disconnects (a task watching ``receive()`` cancels
the pump), the hub ends it (its token was revoked, the process shuts down, or the client
took no data for ``WRITE_TIMEOUT``). Either way the ``finally`` leaves the hub. Keep-alives
and that timeout come from the hub's one ticker, so a waiting stream holds no timer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.auth import principal
from api.errors import InvalidRequest
from api.eventhub import EventHub, Subscription, id_key
from api.httpguard import BODY_WRITER, ENDLESS
from api.inputs import query_id
from api.services import services
from shared import events

RETRY_MS: Final = 3000
KEEPALIVE: Final = b": keep-alive\n\n"


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
    # Registered before the headers go out: whatever happens after the client sees the
    # 200 is in the stream, so a client may subscribe first and read state second.
    sub = await svc.events.subscribe(who, server_id, start)
    return EventStream(svc.events, sub)


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, hub: EventHub, sub: Subscription) -> None:
        super().__init__(
            status_code=200,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=self.media_type,
        )
        # Response computes a Content-Length of 0 for the empty body; a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.hub = hub
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub
        sub.task = asyncio.current_task()
        # Tells the server this response never ends (api/httpguard.py cuts it at shutdown).
        scope.setdefault("state", {})[ENDLESS] = True
        # The server's way to write a frame without waking this task (the hub uses it
        # while the pump is parked); absent on other servers, where the pump sends all.
        direct = scope.get("extensions", {}).get(BODY_WRITER)

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            sub.end("disconnected")

        watcher = asyncio.get_running_loop().create_task(until_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await self._write(send, b"retry: %d\n\n" % RETRY_MS)
            sub.direct = direct
            await self._pump(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (OSError, redis.exceptions.RedisError):
            # The client went away, or a catch-up read failed (the client reconnects after
            # retry: and resumes from its last id).
            pass
        except asyncio.CancelledError:
            if sub.ended != "stuck":
                raise
            # The hub's ticker gave up on a client that stopped reading: return without
            # finishing the response, and uvicorn closes the connection.
        finally:
            sub.direct = None
            watcher.cancel()
            self.hub.unsubscribe(sub)

    async def _write(self, send: Send, body: bytes) -> None:
        sub = self.sub
        sub.writing_since = time.monotonic()
        await send({"type": "http.response.body", "body": body, "more_body": True})
        sub.last_sent = time.monotonic()
        sub.writing_since = None

    async def _pump(self, send: Send) -> None:
        sub = self.sub
        while True:
            if sub.ended is not None:
                if sub.ended != "disconnected":
                    await self._write(send, b": %s\n\n" % sub.ended.encode())
                return
            if sub.resync:
                await self._catch_up(send, self.hub.start_resync(sub))
                continue
            chunks: list[bytes] = []
            frames = sub.frames
            while frames:
                key, entry_id, frame = frames.popleft()
                if key > sub.last_key:  # not already sent by a catch-up
                    chunks.append(frame)
                    sub.delivered(entry_id, key)
            if chunks:
                await self._write(send, b"".join(chunks))
            elif sub.keepalive_due:
                sub.keepalive_due = False
                await self._write(send, KEEPALIVE)
            else:
                # No await between the empty queue and the wait: the hub cannot slip in.
                await sub.wait()
    async def _catch_up(self, send: Send, upto: str) -> None:
        """Everything the caller may see after its last id up to ``upto``, from Redis."""
        sub = self.sub
        while sub.last_key < id_key(upto):
            entries = await self.hub.read_range(sub.last_id, upto)
            if not entries:
                return
            chunks = []
            for entry_id, fields in entries:
                event = events.from_entry(entry_id, fields)
                if event is not None and events.visible(event, sub.account, sub.server_id):
                    chunks.append(events.sse_frame(event))
            sub.delivered(entries[-1][0])
            if chunks:
                await self._write(send, b"".join(chunks))
