"""uvicorn's HTTP protocol with deadlines for slow clients (``--http api.httpguard:DeadlineHttp``).

uvicorn bounds only the idle time *between* requests (``--timeout-keep-alive``): a
connection that opens and sends nothing, trickles its headers a byte at a time
(slowloris), or sends a chunked body that never ends is held open for as long as the
client likes, and each one costs a socket and memory. This subclass of uvicorn's
httptools protocol adds what nginx calls ``client_header_timeout`` and
``client_body_timeout``, and a cap on the size of the headers:

- the request line and headers must be complete within ``SNAPSHOTS_HEADER_TIMEOUT``
  seconds of the connection opening (or of the previous response ending);
- the body within ``SNAPSHOTS_BODY_TIMEOUT`` (plus a grace of ``BODY_GRACE``, so that an
  app reading the body answers ``408`` first, see ``api/inputs.py``) of the headers;
- the headers may not exceed ``MAX_HEADER_BYTES`` (``431``).

Past a deadline the connection is closed. The timers are one per connection, armed and
cancelled at the parser's callbacks; requests that arrive whole never see them.

It sends a response's status line and headers in the same write as its body: uvicorn
writes them as soon as the app sends ``http.response.start``, then the body on its own,
two send(2) calls per answer where one does (on loopback a send costs more than all of
uvicorn's header building). ``_Corked`` holds the first write of each response until the
next one (or the end of the loop iteration, for a response whose body comes later).

It offers a response a way to write a chunk of its body without a coroutine step
(``BODY_WRITER`` in the scope's ``extensions``, see ``BodyWriter``): an event stream's
frame goes out from the event hub's own loop step to every idle stream, instead of a
task woken per stream to send it through the ASGI layers.

It also ends endless responses at shutdown: uvicorn's graceful shutdown waits for every
response in flight, and an event stream never finishes by itself, so one open stream held
every deploy and Ctrl-C for the whole ``--timeout-graceful-shutdown``. A response whose
app put ``ENDLESS`` in the request's ``state`` has its connection closed at once instead
(the client reconnects with ``Last-Event-ID``, to a process that is not stopping).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Final, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shared.settings import Settings

log = logging.getLogger("api")

# The request-state key by which an app marks its response as one that never ends.
ENDLESS: Final = "endless_response"
# The scope["extensions"] key of a GET's BodyWriter.
BODY_WRITER: Final = "snapshots.body_writer"
MAX_HEADER_BYTES: Final = 64 * 1024
BODY_GRACE: Final = 2.0
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_TOO_LARGE_BODY: Final = (
    b'{"error": {"code": "invalid_request", "message": "The request headers are larger '
    b'than 64 KiB."}}'
)


# Bodies up to this size go out joined to their headers; bigger ones beside them.
_JOIN_MAX: Final = 4096


@functools.cache
def _timeouts() -> tuple[float, float]:
    settings = Settings.from_env()
    return settings.header_timeout, settings.body_timeout + BODY_GRACE


class _Corked:
    """One response's view of the connection's transport: its first write (the status line
    and headers) waits for the second (the body) and both go out as one. A response that
    sends nothing more in this loop iteration (an event stream waiting for its first
    event) has its headers written at the iteration's end; one that ends without a body
    (204, HEAD) when it completes; a close writes what is held first."""

    __slots__ = ("_held", "_loop", "_on_response", "_open", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 on_response: Callable[[], None]) -> None:
        self._transport = transport
        self._loop = loop
        self._on_response = on_response
        self._held: bytes | None = None
        self._open = True  # still holding writes

    def write(self, data: bytes) -> None:
        if not self._open:
            self._transport.write(data)
        elif self._held is None:
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            held, self._held, self._open = self._held, None, False
            if len(data) > _JOIN_MAX:
                # One writev rather than a copy of a big body behind the headers (the
                # copy, into fresh pages, cost more than the syscall saved).
                self._transport.writelines((held, data))
            else:
                self._transport.write(held + data)

    def flush(self) -> None:
        held, self._held, self._open = self._held, None, False
        if held is not None:
            self._transport.write(held)

    def response_complete(self) -> None:
        self.flush()
        self._on_response()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BodyWriter:
    """Writes one more chunk of a started, chunked response at once, when the connection
    takes it without waiting (not paused by flow control, not closing): answers whether
    it did. When it answers False the app sends the chunk the ASGI way, which waits for
    the client to drain what is buffered. What it writes is exactly what uvicorn's
    ``send`` writes for a ``http.response.body`` with ``more_body``."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    def __call__(self, body: bytes) -> bool:
        cycle = self._cycle
        if (cycle.disconnected or not cycle.response_started or cycle.response_complete
                or not cycle.chunked_encoding or cycle.flow.write_paused or not body):
            return False
        transport = cycle.transport
        if transport.is_closing():
            return False
        transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        return True


class DeadlineHttp(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout, self.body_timeout = _timeouts()
        self._deadline: asyncio.TimerHandle | None = None
        self._due: float | None = None  # loop time of the armed deadline
        self._what = ""
        self._header_bytes = 0
        self._refused = False

    # ------------------------------------------------------------ deadlines

    # One lazy timer per connection, not one per deadline: a request arms the body's and
    # then the next request's deadline, and a timer made and cancelled for each costs more
    # than the rest of the deadline keeping. Arming only moves ``_due``; the timer, when it
    # fires early, waits again for what is due then (a new timer only when a deadline
    # comes sooner than the pending one).

    def _arm(self, seconds: float, what: str) -> None:
        due = self.loop.time() + seconds
        self._due, self._what = due, what
        timer = self._deadline
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._deadline = self.loop.call_at(due, self._check)

    def _disarm(self) -> None:
        self._due = None

    def _check(self) -> None:
        self._deadline = None
        due = self._due
        if due is None:
            return
        if due > self.loop.time():
            self._deadline = self.loop.call_at(due, self._check)
            return
        self._due = None
        self._expire(self._what)

    def _expire(self, what: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.info("closing a connection from %s: its %s did not arrive in time",
                     self.client[0] if self.client else "?", what)
            self.transport.close()

    # ------------------------------------------------------------ uvicorn's callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "request headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted here, not in a helper: this runs for every header of every request.
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse()
        if not self._refused:
            super().on_header(name, value)

    def _refuse(self) -> None:
        if not self._refused:
            self._refused = True
            self._disarm()
            self.transport.write(_TOO_LARGE % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY))
            self.transport.close()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._arm(self.body_timeout, "request body")
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            cork = _Corked(self.transport, self.loop, cycle.on_response)
            cycle.transport = cast(asyncio.Transport, cork)
            cycle.on_response = cork.response_complete
            if cycle.scope["method"] == "GET":
                extensions: dict[str, Any] = cycle.scope.setdefault(
                    "extensions", {})
                extensions[BODY_WRITER] = BodyWriter(cycle)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        super().on_message_complete()

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete \
                and cycle.scope.get("state", {}).get(ENDLESS):
            self.transport.close()
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            # The next request's headers (or the rest of a body the app did not read).
            self._arm(self.header_timeout, "next request")
