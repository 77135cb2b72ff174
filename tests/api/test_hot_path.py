"""The list's per-request path cut further (issue 12) without changing what it does: the
text access line formatted without a record is the record's text, the router without its
coroutines picks what Starlette's picks, a kept token check still ends at revocation and
after CACHE_TTL, and the hot-read connection's one watchdog still times out a hung Redis
but never a busy one."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.routing import Route, Router
from starlette.testclient import TestClient

from api.app import Dispatch, routes
from api.auth import CACHE_TTL, Principal, TokenCache
from api.routes import TABLE
from shared import logs
from shared.fastread import FastReads
from tests.support.api import ApiHelper
from tests.support.redis_proc import RedisProcess


def _text_logger(name: str) -> tuple[logging.Logger, io.StringIO, logs.LineHandler]:
    stream = io.StringIO()
    handler = logs.LineHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers[:] = [handler]
    return logger, stream, handler


def _record_text(handler: logs.LineHandler, logger: logging.Logger, msg: str,
                 args: tuple[Any, ...], fields: dict[str, Any]) -> str:
    """What the LogRecord path writes for the same line (as Logger.handle would)."""
    record = logs.hot_record(logger.name, logging.INFO, __file__, msg, args)
    record.__dict__.update(fields, method="GET", duration_ms=1.0)
    for f in handler.filters:
        assert isinstance(f, logging.Filter) and f.filter(record)
    return handler.format(record)


@pytest.mark.parametrize(("msg", "args", "fields", "context"), [
    ("%s %s %d %.1fms", ("GET", "/api/v1/snapshots/", 200, 1.234),
     {"method": "GET", "status": 200, "request_id": "r1", "account": "acme"},
     {"request_id": "r1", "account": "acme"}),
    # A 401: no account in the fields nor in the context.
    ("%s %s %d %.1fms", ("GET", "/api/v1/snapshots/", 401, 0.5), {"request_id": "r2"},
     {"request_id": "r2"}),
    # The context's ids the fields do not carry, in CONTEXT_FIELDS order, fields first.
    ("%s", ("x",), {"request_id": "r3", "account": None},
     {"server_id": 7, "operation_id": 9, "account": "ctx", "request_id": "old"}),
    # A path that decoded to a newline: the ids stay on the first line, as format() does.
    ("%s %s %d %.1fms", ("GET", "/a\nb/", 404, 2.0), {"request_id": "r4"}, {}),
])
def test_hot_line_writes_the_text_the_record_would(
    msg: str, args: tuple[Any, ...], fields: dict[str, Any], context: dict[str, Any],
) -> None:
    logger, stream, handler = _text_logger(f"test.hot.{len(msg)}.{args[0]!r}")
    with logs.log_context(**context):
        expected = _record_text(handler, logger, msg, args, fields)
        logs.hot_line(logger, logging.INFO, __file__, msg, args, fields,
                      lambda: {"method": "GET", "duration_ms": 1.0})
    written = stream.getvalue()
    assert written.endswith("\n") and written.count("\n") == expected.count("\n") + 1
    # The same text but for the clock's second (HH:MM:SS), which may have turned.
    assert written[8:-1] == expected[8:]


def test_hot_line_gives_a_record_to_any_other_set_up() -> None:
    logger, stream, handler = _text_logger("test.hot.other")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.addHandler(Keep())  # a second handler (caplog's, say): records for both
    logs.hot_line(logger, logging.INFO, __file__, "%s", ("two",), {"request_id": "r"},
                  lambda: {"status": 200})
    assert [r.getMessage() for r in seen] == ["two"] and seen[0].__dict__["request_id"] == "r"
    assert seen[0].__dict__["status"] == 200
    assert stream.getvalue().endswith("two request_id=r\n")
    handler.setFormatter(logs.json_formatter())  # JSON: the record, formatted by it
    logger.handlers[:] = [handler]
    logs.hot_line(logger, logging.INFO, __file__, "%s", ("three",), {}, lambda: {"route": "/x/"})
    assert '"message": "three"' in stream.getvalue() and '"route": "/x/"' in stream.getvalue()


def _recording_router() -> Router:
    router = Router(routes=routes(TABLE))
    for route in router.routes:
        async def reached(scope: Any, receive: Any, send: Any, route: Any = route) -> None:
            scope["reached"] = route
        assert isinstance(route, Route)
        route.app = reached
    return router


@pytest.mark.parametrize("path", [
    "/api/v1/snapshots/", "/api/v1/snapshots/12/", "/api/v1/snapshots/12/restore/",
    "/api/v1/servers/3/schedule/", "/healthz/", "/api/v1/openapi.json/", "/api/v1/nowhere/",
    "/console/", "/console/app.js/", "/api/v1/snapshots/x/",
])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "DELETE", "PUT"])
@pytest.mark.parametrize("root_path", ["", "/behind"])
def test_dispatch_picks_what_starlettes_router_picks(path: str, method: str,
                                                     root_path: str) -> None:
    router = _recording_router()
    dispatch = Dispatch(router)

    def run(call: Any) -> tuple[Any, ...]:
        scope = {"type": "http", "method": method, "path": root_path + path,
                 "root_path": root_path, "headers": [], "app": object()}
        try:
            asyncio.run(call(scope))
        except HTTPException as exc:
            return ("refused", exc.status_code, exc.headers)
        return (scope["reached"], scope["route"], scope["endpoint"], scope["path_params"])

    async def starlette(scope: Any) -> None:
        await router.app(scope, None, None)  # type: ignore[arg-type]

    async def ours(scope: Any) -> None:
        await dispatch(scope, None, None)  # type: ignore[arg-type]

    assert run(ours) == run(starlette)


def test_kept_token_check_ends_after_its_ttl_and_at_revocation() -> None:
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0])
    who = Principal(account="acme", scope="read", token_digest="d1")
    cache.put(b"Bearer snp_a", who)
    cache.put(b"bearer  snp_a", who)  # the same token spelled otherwise: its own entry
    cache.put(b"Bearer snp_b", Principal(account="acme", scope="read", token_digest="d2"))
    now[0] += CACHE_TTL - 0.1
    assert cache.get(b"Bearer snp_a") is who
    cache.drop("d1")  # revoked: every spelling of it goes, the other token stays
    assert cache.get(b"Bearer snp_a") is None and cache.get(b"bearer  snp_a") is None
    assert cache.get(b"Bearer snp_b") is not None
    now[0] += 0.2  # past CACHE_TTL: looked up again
    assert cache.get(b"Bearer snp_b") is None


def test_revoked_token_is_refused_at_once_however_it_is_spelled(
    client: TestClient, api: ApiHelper,
) -> None:
    made = client.post("/api/v1/tokens/", json={"account": "acme", "scope": "read"},
                       headers=api.admin).json()
    spellings = [f"Bearer {made['token']}", f"bearer {made['token']}",
                 f"Bearer {made['token']} "]
    for header in spellings:  # each one checked once, then kept
        assert client.get("/api/v1/snapshots/", headers={"Authorization": header}
                          ).status_code == 200
    assert client.delete(f"/api/v1/tokens/{made['id']}/", headers=api.admin).status_code == 204
    for header in spellings:
        r = client.get("/api/v1/snapshots/", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_busy_connection_outlives_its_timeout_and_keeps_no_marks(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "r").start()
    try:
        reads = FastReads(server.url, timeout=0.2)

        async def main() -> None:
            await reads.command("SET", "k", "v")
            proto = reads._proto
            assert proto is not None
            end = time.monotonic() + 0.8  # four timeouts of steady traffic
            while time.monotonic() < end:
                assert await asyncio.gather(*[reads.get("k") for _ in range(8)]) == ["v"] * 8
                await asyncio.sleep(0.01)
            assert reads._proto is proto and not proto.closed  # never dropped
            assert not proto.marks and proto.answered == proto.queued
            await asyncio.sleep(0.3)  # idle past the timeout: still fine
            assert await reads.command("PING") == "PONG" and reads._proto is proto

        asyncio.run(main())
    finally:
        server.close()


def test_gets_of_one_iteration_share_one_command_and_see_every_earlier_write(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path / "r").start()
    try:
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        reads = FastReads(server.url)

        def gets() -> int:
            return int(sync.info("commandstats").get("cmdstat_get", {}).get("calls", 0))

        async def main() -> None:
            assert await reads.get("v") is None  # connected
            before = gets()
            sync.set("v", "1")  # finished before any of the callers asks
            many = [reads.get("v") for _ in range(10)]
            cancelled = asyncio.ensure_future(many.pop())
            got = asyncio.gather(*many)
            await asyncio.sleep(0)
            cancelled.cancel()
            assert await got == ["1"] * 9  # one cancelled caller leaves the others
            assert gets() == before + 1
            sync.set("v", "2")
            assert await reads.get("v") == "2"  # a later iteration: a command of its own
            assert gets() == before + 2
            with pytest.raises(redis.exceptions.ResponseError):  # WRONGTYPE, for each
                sync.delete("v")
                sync.hset("v", "f", "x")
                await asyncio.gather(reads.get("v"), reads.get("v"))
            assert await reads.command("PING") == "PONG"  # still in step

        asyncio.run(main())
        sync.close()
    finally:
        server.close()
