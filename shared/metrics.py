"""The fleet's job metrics, kept in Redis so that every web process reports the same.

Workers run on many hosts and come and go; what they did is written here as plain
counters (HINCRBY), one pipeline per finished operation or capture, and GET /metrics
(api/metrics.py) reads them back at scrape time together with what Redis knows live:
queue depths and live workers. Per-process HTTP metrics are prometheus_client's own.

Key ``metrics`` (a hash), fields:
- ``ops:{type}:{status}``: operations that ended (succeeded, failed, cancelled) by type;
- ``dur:{type}:{le}``, ``dur:{type}:sum``, ``dur:{type}:count``: the duration histogram
  of ended operations, seconds from start to end (cumulative buckets as Prometheus wants);
- ``bytes:{read,stored,captured,deduplicated}``: captures' totals;
- ``repository_bytes``: the repository's size, set by each reclaim (which lists every
  object) and moved by each capture's stored bytes and each reclaim's freed bytes between.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Final

import redis

from shared.broker import DEFAULT_HOST, NAMESPACE, WORKERS_KEY
from shared.messages import QUEUE_NAME

KEY: Final = "metrics"
# Seconds: from a small delete to a capture of hours.
DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# Every queue the workers consume, ready and delayed (Dramatiq's ".DQ": retries waiting).
QUEUES: Final = (QUEUE_NAME, f"{QUEUE_NAME}.DQ", "webhooks", "webhooks.DQ")
BYTE_KINDS: Final = ("read", "stored", "captured", "deduplicated")


def _operation_ended(pipe: Any, op_type: str, status: str, seconds: float | None) -> None:
    pipe.hincrby(KEY, f"ops:{op_type}:{status}", 1)
    if seconds is not None:
        seconds = max(seconds, 0.0)
        for le in DURATION_BUCKETS:
            if seconds <= le:
                pipe.hincrby(KEY, f"dur:{op_type}:{le:g}", 1)
        pipe.hincrbyfloat(KEY, f"dur:{op_type}:sum", seconds)
        pipe.hincrby(KEY, f"dur:{op_type}:count", 1)


def record_operation(
    client: redis.Redis, op_type: str, status: str, seconds: float | None
) -> None:
    """One operation ended; best effort (metrics never fail a job)."""
    pipe = client.pipeline(transaction=True)
    _operation_ended(pipe, op_type, status, seconds)
    with contextlib.suppress(redis.RedisError):
        pipe.execute()


async def record_operation_async(client: Any, op_type: str, status: str) -> None:
    """The same from the web process (redis.asyncio): a cancelled creation."""
    pipe = client.pipeline(transaction=True)
    _operation_ended(pipe, op_type, status, None)
    with contextlib.suppress(redis.RedisError):
        await pipe.execute()


def record_capture(client: redis.Redis, *, read: int, stored: int, captured: int) -> None:
    """A capture committed: what it read, newly stored, and what it did not have to store
    (captured bytes less stored bytes: deduplication and compression together)."""
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(KEY, "bytes:read", max(read, 0))
    pipe.hincrby(KEY, "bytes:stored", max(stored, 0))
    pipe.hincrby(KEY, "bytes:captured", max(captured, 0))
    pipe.hincrby(KEY, "bytes:deduplicated", max(captured - stored, 0))
    pipe.hincrby(KEY, "repository_bytes", max(stored, 0))
    with contextlib.suppress(redis.RedisError):
        pipe.execute()


def record_repository_size(client: redis.Redis, size: int) -> None:
    with contextlib.suppress(redis.RedisError):
        client.hset(KEY, "repository_bytes", max(size, 0))


def snapshot(client: Any, heartbeat_timeout: float) -> dict[str, Any]:
    """Everything GET /metrics reports from Redis, in one round trip (a sync client)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(KEY)
    for queue in QUEUES:
        pipe.llen(f"{NAMESPACE}:{queue}")
    pipe.zrangebyscore(WORKERS_KEY, int((time.time() - heartbeat_timeout) * 1000), "+inf")
    return _parse(pipe.execute())


async def snapshot_async(client: Any, heartbeat_timeout: float) -> dict[str, Any]:
    """The same, with redis.asyncio (the web process)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(KEY)
    for queue in QUEUES:
        pipe.llen(f"{NAMESPACE}:{queue}")
    pipe.zrangebyscore(WORKERS_KEY, int((time.time() - heartbeat_timeout) * 1000), "+inf")
    return _parse(await pipe.execute())


def _parse(answers: list[Any]) -> dict[str, Any]:
    raw = {_s(k): _s(v) for k, v in answers[0].items()}
    depths = dict(zip(QUEUES, (int(n) for n in answers[1:1 + len(QUEUES)]), strict=True))
    live: dict[str, int] = {DEFAULT_HOST: 0}
    for member in answers[-1]:
        host = _s(member).rpartition("/")[0] or DEFAULT_HOST
        live[host] = live.get(host, 0) + 1
    return {"fields": raw, "queues": depths, "live_workers": live}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
