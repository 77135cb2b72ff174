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
from typing import Any, Final

import redis

from shared import keys
from shared.broker import NAMESPACE
from shared.hosts import ANY_HOST, ANY_HOST_QUEUE, WORKERS_KEY, parse_workers, queue_name

KEY: Final = "metrics"
# Seconds: from a small delete to a capture of hours.
DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
# The queues every worker consumes whatever its host (each also has its ".DQ": retries
# waiting); the operations' queues are one per host.
HOST_FREE_QUEUES: Final = ("webhooks", ANY_HOST_QUEUE)
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


async def snapshot_async(client: Any, heartbeat_timeout: float) -> dict[str, Any]:
    """Everything GET /metrics reports from Redis (redis.asyncio, the web process).

    Queue depths are per host (``host.<name>`` and its ``.DQ``, see shared/hosts.py) for
    every host a worker beat from in the last week or an active operation runs on (so a
    host nobody consumes still shows its waiting messages), plus the host-free queues.
    Live workers are counted per host, zeros included: a host whose workers died (within
    the week), or whose operations wait with no worker ever seen, reads 0 (the alert
    SnapshotHostWithoutLiveWorker); a host with neither is not reported.
    """
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(KEY)
    pipe.time()
    pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
    for status in ("queued", "running"):
        pipe.zrange(keys.index("operations", None, None, status), 0, -1)
    fields, now, beats, queued, running = await pipe.execute()
    seen = parse_workers(beats, int(now[0]) * 1000 + int(now[1]) // 1000,
                         int(heartbeat_timeout * 1000))
    pipe = client.pipeline(transaction=False)
    for op_id in {*queued, *running}:
        pipe.hget(keys.operation(int(op_id)), "host")
    op_hosts = {_s(h) for h in await pipe.execute() if h} if queued or running else set()
    op_hosts.discard(ANY_HOST)  # its queue is one of HOST_FREE_QUEUES
    hosts = sorted({*seen, *op_hosts})
    queues = [q for h in hosts for q in (queue_name(h), f"{queue_name(h)}.DQ")]
    queues += [q for free in HOST_FREE_QUEUES for q in (free, f"{free}.DQ")]
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(f"{NAMESPACE}:{queue}")
    depths = dict(zip(queues, (int(n) for n in await pipe.execute()), strict=True))
    return {
        "fields": {_s(k): _s(v) for k, v in fields.items()},
        "queues": depths,
        "live_workers": {h: seen[h].live if h in seen else 0 for h in hosts},
    }


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
