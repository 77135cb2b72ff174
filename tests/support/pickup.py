"""How long an idle worker takes to start an operation, and what an idle worker costs Redis.

Both read Redis itself: a POST's transition (``snapshot.created``, ``restore.started``...) and
the worker's claim (``operation.started``) each append to the ``events`` stream, whose entry
ids are the Redis server's clock in milliseconds, so the difference is the pick-up latency
(enqueue, the consumer noticing, the claim) with no client-side polling in it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

import redis

from shared.keys import EVENTS

STARTED = "operation.started"


def _ms(entry_id: Any) -> int:
    return int(bytes(entry_id).split(b"-", 1)[0])


def pickup_latencies_ms(client: redis.Redis, operation_ids: Iterable[int]) -> list[int]:
    """For each operation, the milliseconds from its first event (the POST's) to its first
    ``operation.started`` (the worker's claim)."""
    wanted = {str(op_id).encode() for op_id in operation_ids}
    first: dict[bytes, int] = {}
    started: dict[bytes, int] = {}
    entries: Any = client.xrange(EVENTS)
    for entry_id, fields in entries:
        op = fields.get(b"operation_id", b"")
        if op not in wanted:
            continue
        first.setdefault(op, _ms(entry_id))
        if fields.get(b"type") == STARTED.encode():
            started.setdefault(op, _ms(entry_id))
    missing = wanted - started.keys()
    if missing:
        raise AssertionError(f"operations never started: {sorted(int(m) for m in missing)}")
    return [started[op] - first[op] for op in sorted(wanted, key=int)]


def percentiles(values: list[int]) -> dict[str, float]:
    """p50, p90, p99 and max (p99 is the max below 100 samples)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": float(max(values))}


def commands_per_second(client: redis.Redis, seconds: float = 10.0) -> float:
    """Commands the Redis server processed per second over ``seconds`` (``INFO stats``
    ``total_commands_processed``), not counting the two INFO calls of this measurement."""
    before = int(client.info("stats")["total_commands_processed"])
    time.sleep(seconds)
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 1) / seconds


def commands_by_name(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats``: calls per command since the server started (or CONFIG RESETSTAT)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
