"""The API's pipelined hot-read connection: auth, DB selection, hangs, reconnects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis
import redis.exceptions

from shared.fastread import FastReads
from tests.support.redis_proc import RedisProcess


def test_password_db_and_pipelining(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "r", password="s3cret").start()
    try:
        sync = redis.Redis.from_url(server.url_for_db(3), decode_responses=True)
        sync.hset("h", mapping={"a": "1"})
        reads = FastReads(server.url_for_db(3))

        async def main() -> list[dict[str, str]]:
            return await asyncio.gather(*[reads.hgetall("h") for _ in range(50)])

        assert asyncio.run(main()) == [{"a": "1"}] * 50
        # The same object works again from a new event loop (it reconnects).
        assert asyncio.run(main())[0] == {"a": "1"}
        with pytest.raises(redis.exceptions.ConnectionError):
            asyncio.run(FastReads(server.url_for_db(3).replace("s3cret", "wrong")).hgetall("h"))
        sync.close()
    finally:
        server.close()


def test_hung_redis_times_out_then_recovers(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "r").start()
    try:
        reads = FastReads(server.url, timeout=0.3)

        async def main() -> None:
            assert await reads.command("PING") == "PONG"
            server.pause()
            start = time.monotonic()
            results = await asyncio.gather(
                *[reads.command("PING") for _ in range(5)], return_exceptions=True
            )
            assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results), results
            assert time.monotonic() - start < 2
            server.resume()
            assert await reads.command("PING") == "PONG"
            with pytest.raises(redis.exceptions.ResponseError):
                await reads.command("NOSUCHCOMMAND")
            assert await reads.command("PING") == "PONG"

        asyncio.run(main())
    finally:
        server.close()


@pytest.mark.parametrize(("reply", "error"), [
    (b"-LOADING Redis is loading the dataset in memory\r\n", redis.exceptions.BusyLoadingError),
    (b"-READONLY You can't write against a read only replica.\r\n",
     redis.exceptions.ReadOnlyError),
    (b"-NOSCRIPT No matching script.\r\n", redis.exceptions.NoScriptError),
    (b"-ERR wrong number of arguments\r\n", redis.exceptions.ResponseError),
])
def test_error_replies_keep_redis_pys_classes(reply: bytes, error: type[Exception]) -> None:
    """A Redis restarted under `make run` answers LOADING while it reads its AOF: that
    must reach the API as Redis-unavailable (503), not as an unexpected error (500)."""
    from shared.fastread import _Protocol

    async def run() -> BaseException | None:
        proto = _Protocol()
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        proto.waiters.append(fut)
        proto.data_received(reply)
        return fut.exception()

    got = asyncio.run(run())
    assert type(got) is error, got


def test_batch_answers_in_order_and_an_error_keeps_the_connection_in_step(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path / "r").start()
    try:
        sync = redis.Redis.from_url(server.url, decode_responses=True)
        sync.hset("h1", mapping={"a": "1"})
        sync.set("s", "x")
        reads = FastReads(server.url)

        async def main() -> None:
            got = await reads.batch([("HGETALL", "h1"), ("HGETALL", "nope"), ("GET", "s")])
            assert got == [["a", "1"], [], "x"]
            # Concurrent batches and single commands share the one connection.
            many = await asyncio.gather(
                *[reads.batch([("GET", "s")] * 20) for _ in range(10)], reads.command("PING")
            )
            assert many[:10] == [["x"] * 20] * 10 and many[10] == "PONG"
            with pytest.raises(redis.exceptions.ResponseError):
                await reads.batch([("GET", "s"), ("HGETALL", "s"), ("GET", "s")])  # WRONGTYPE
            assert await reads.command("GET", "s") == "x"  # replies still matched in order
            assert await reads.batch([]) == []
            names = [c.get("name") for c in sync.client_list()]
            assert "snapshots-reads" in names

        asyncio.run(main())
        sync.close()
    finally:
        server.close()
