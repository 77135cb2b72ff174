"""The per-request path made cheap (issue 12) keeps every feature: each access line has all
its fields (errors and unknown routes included), the metrics count by route template and
status, the log lines of a loop iteration are written together but all of them and in
order, and httpguard's corked transport sends headers and body in one write without ever
losing or reordering a byte."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
from typing import Any

import pytest
from starlette.testclient import TestClient

from api.httpguard import _Corked
from shared import logs
from shared.logs import LineHandler, TextFormatter, log_context
from tests.support.api import ApiHelper, bearer


def _access(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "api.access"]


def test_access_line_has_every_field(client: TestClient, api: ApiHelper,
                                     caplog: pytest.LogCaptureFixture) -> None:
    headers = api.headers("acme", "read")
    with caplog.at_level(logging.INFO, logger="api.access"):
        ok = client.get("/api/v1/snapshots", headers={**headers, "X-Request-Id": "rid-1"})
        missing = client.get("/api/v1/snapshots/999/", headers=headers)
        anonymous = client.get("/api/v1/snapshots/", headers=bearer("snp_no-such-token"))
        nowhere = client.get("/api/v1/nowhere/", headers=headers)
    assert [ok.status_code, missing.status_code, anonymous.status_code,
            nowhere.status_code] == [200, 404, 401, 404]
    # Only this test's four requests: the line of a request made before the capture began
    # (a fixture's) can still be written inside it, as lines go out once a response is sent.
    ours = {r.headers["x-request-id"] for r in (ok, missing, anonymous, nowhere)}
    lines = [r for r in _access(caplog) if r.__dict__.get("request_id") in ours]
    assert len(lines) == 4
    first, second, third, fourth = (r.__dict__ for r in lines)
    assert first["request_id"] == "rid-1" == ok.headers["x-request-id"]
    assert lines[0].getMessage().startswith("GET /api/v1/snapshots/ 200 ")
    for line, resp in zip((first, second, third, fourth),
                          (ok, missing, anonymous, nowhere), strict=True):
        assert line["method"] == "GET" and line["status"] == resp.status_code
        assert line["request_id"] == resp.headers["x-request-id"]
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert first["route"] == "/api/v1/snapshots/" and first["account"] == "acme"
    assert second["route"] == "/api/v1/snapshots/{snapshot_id}/"
    assert second["account"] == "acme"
    # Refused before the router: the route it would have matched, and no account.
    assert third["route"] == "/api/v1/snapshots/" and "account" not in third
    assert fourth["route"] == "unmatched"


def test_metrics_count_each_route_and_status(client: TestClient, api: ApiHelper) -> None:
    headers = api.headers("acme", "read")
    for _ in range(3):
        assert client.get("/api/v1/snapshots/", headers=headers).status_code == 200
    assert client.get("/api/v1/snapshots/5/", headers=headers).status_code == 404
    text = client.get("/metrics").text
    assert ('snapshots_http_requests_total{method="GET",route="/api/v1/snapshots/",'
            'status="200"} 3.0') in text
    assert ('snapshots_http_requests_total{method="GET",route="/api/v1/snapshots/'
            '{snapshot_id}/",status="404"} 1.0') in text
    assert ('snapshots_http_request_duration_seconds_count{method="GET",'
            'route="/api/v1/snapshots/"} 3.0') in text


class _Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def _handler() -> tuple[logging.Logger, _Stream]:
    stream = _Stream()
    handler = LineHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger(f"test.front.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger, stream


def test_line_handler_writes_a_loop_iteration_at_once_and_keeps_every_line() -> None:
    logger, stream = _handler()

    async def main() -> list[str]:
        with log_context(request_id="r1"):
            for i in range(3):
                logger.info("line %d", i)
        held = list(stream.writes)
        await asyncio.sleep(0)  # the iteration ends: its lines go out together
        await asyncio.sleep(0)
        logger.info("line 3")
        logger.warning("a warning goes at once")  # and takes the pending line with it
        return held

    held = asyncio.run(main())
    assert held == []
    assert len(stream.writes) == 2
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "line 0", "line 1", "line 2", "line 3", "a warning goes at once"]


def test_line_handler_outside_a_loop_writes_each_line_at_once() -> None:
    logger, stream = _handler()
    logger.info("main thread")
    done = threading.Thread(target=logger.info, args=("other thread",))
    done.start()
    done.join()
    assert len(stream.writes) == 2 and stream.getvalue().count("\n") == 2


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.vectored: list[int] = []  # writelines calls, by their number of parts
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        assert not self.closed
        self.vectored.append(len(parts))
        self.writes.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


def _corked() -> tuple[_Corked, _Transport, list[str], asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    transport = _Transport()
    completed: list[str] = []
    cork = _Corked(transport, loop, lambda: completed.append("done"))  # type: ignore[arg-type]
    return cork, transport, completed, loop


def test_corked_headers_and_body_in_one_write_then_direct() -> None:
    cork, transport, completed, loop = _corked()
    try:
        cork.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert transport.writes == []
        cork.write(b"body")
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        cork.write(b"more")  # a streamed body goes out as it comes
        assert transport.writes[-1] == b"more"
        cork.response_complete()
        assert completed == ["done"] and len(transport.writes) == 2
        assert cork.get_extra_info("peername") == "info:peername"
    finally:
        loop.close()


def test_corked_big_body_goes_out_beside_its_headers_in_one_call() -> None:
    cork, transport, _, loop = _corked()
    try:
        body = b"x" * 20_000  # a page of the list: not copied behind the headers
        cork.write(b"HTTP/1.1 200 OK\r\n\r\n")
        cork.write(body)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n" + body]
        assert transport.vectored == [2]
    finally:
        loop.close()


def test_corked_headers_alone_go_out_at_the_iteration_end_on_completion_or_close() -> None:
    cork, transport, completed, loop = _corked()
    try:
        cork.write(b"headers of an event stream")
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.writes == [b"headers of an event stream"]
        cork.write(b"data: 1\n\n")
        assert transport.writes[-1] == b"data: 1\n\n"
    finally:
        loop.close()
    cork, transport, completed, loop = _corked()
    try:
        cork.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows
        cork.response_complete()
        assert transport.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"] and completed
    finally:
        loop.close()
    cork, transport, completed, loop = _corked()
    try:
        cork.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
        cork.close()
        assert transport.writes == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"]
        assert transport.closed and cork.is_closing()
    finally:
        loop.close()


def test_hot_record_is_a_log_record_with_the_same_fields() -> None:
    made = logging.LogRecord("api.access", logging.INFO, "/x/observe.py", 0, "%s %d", ("a", 1),
                             None).__dict__
    hot = logs.hot_record("api.access", logging.INFO, "/x/observe.py", "%s %d", ("a", 1)).__dict__
    assert set(hot) == set(made)
    differ = {k for k in made if made[k] != hot[k]}
    assert differ <= {"created", "msecs", "relativeCreated"}
    assert 0 <= hot["created"] - made["created"] < 5


def test_hot_record_takes_the_thread_and_task_it_is_made_in() -> None:
    """The template is made once per process, in whichever thread and asyncio task logs
    first; each record still names its own thread and (Python 3.12+: taskName) task."""
    name = "tests.hot_record.tasks"  # a template of its own, first made inside a task
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def pair() -> None:
        made = logging.LogRecord(name, logging.INFO, "/x/observe.py", 0, "%s", ("a",), None)
        hot = logs.hot_record(name, logging.INFO, "/x/observe.py", "%s", ("a",))
        pairs.append((made.__dict__, hot.__dict__))

    async def in_tasks() -> None:
        async def logs_once() -> None:
            pair()

        await asyncio.create_task(logs_once(), name="request-1")
        await asyncio.create_task(logs_once(), name="request-2")
        pair()  # the loop's main task

    asyncio.run(in_tasks())
    pair()  # no event loop
    other = threading.Thread(target=pair, name="other-thread")
    other.start()
    other.join()
    for made, hot in pairs:
        assert set(hot) == set(made)
        assert {k for k in made if made[k] != hot[k]} <= {"created", "msecs", "relativeCreated"}
    assert [hot["threadName"] for _m, hot in pairs] == ["MainThread"] * 4 + ["other-thread"]
    if sys.version_info >= (3, 12):
        names = [hot["taskName"] for _m, hot in pairs]
        assert names[:2] == ["request-1", "request-2"] and names[3:] == [None, None]


def test_text_formatter_writes_what_logging_formatter_writes_then_the_ids() -> None:
    ours = logs.TextFormatter()
    theirs = logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")

    def both(msg: str, exc: bool = False, stack: str | None = None) -> tuple[str, str]:
        info = None
        if exc:
            try:
                raise ValueError("boom")
            except ValueError:
                info = sys.exc_info()
        pair = [logging.LogRecord("api", logging.ERROR, __file__, 1, msg, ("x",), info,
                                  sinfo=stack) for _ in range(2)]
        return ours.format(pair[0]), theirs.format(pair[1])

    for case in (both("a %s"), both("two\nlines %s"), both("ends %s\n"), both("e %s", exc=True),
                 both("s %s", stack="Stack (most recent call last):\n  here")):
        assert case[0] == case[1]
    record = logging.LogRecord("api.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    record.request_id, record.account = "r1", "acme"
    assert ours.format(record).endswith(": GET /x request_id=r1 account=acme")
