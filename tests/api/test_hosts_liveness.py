"""shared/hosts.py: host names, their queues, and the live workers per host (real Redis)."""

from __future__ import annotations

import time

import pytest
import redis

from shared.hosts import (
    WORKERS_KEY,
    Heartbeat,
    live_workers,
    parse_workers,
    queue_name,
    valid_host,
    workers,
)


def test_host_names_and_queues() -> None:
    assert queue_name("default") == "host.default" and queue_name("hv-01.fra1") == "host.hv-01.fra1"
    for bad in ["", "HV-01", "hv 01", ".hv", "hv/1", "hv.DQ", "a" * 256]:
        assert not valid_host(bad)
        with pytest.raises(ValueError, match="host"):
            queue_name(bad)


def test_live_workers_counts_fresh_beats_per_host(redis_client: redis.Redis) -> None:
    for host, pid in [("a", "p1"), ("a", "p2"), ("b", "p3")]:
        Heartbeat(redis_client, host, pid).beat()
    now_ms = int(time.time() * 1000)
    # A process of host c that died two minutes ago: counted as seen, not as live.
    redis_client.zadd(WORKERS_KEY, {"c/p4": now_ms - 120_000})
    assert live_workers(redis_client, 30) == {"a": 2, "b": 1, "c": 0}
    seen = workers(redis_client, 30)
    assert abs(seen["c"].last_seen_ms - (now_ms - 120_000)) < 1000
    assert abs(seen["a"].last_seen_ms - now_ms) < 5000  # the Redis clock, near ours
    Heartbeat(redis_client, "a", "p2").leave()
    assert live_workers(redis_client, 30)["a"] == 1
    # Beats older than a week are dropped by the next beat of anyone.
    redis_client.zadd(WORKERS_KEY, {"d/p5": now_ms - 8 * 24 * 3600 * 1000})
    Heartbeat(redis_client, "a", "p1").beat()
    assert "d" not in live_workers(redis_client, 30)


def test_parse_workers_takes_bytes_members() -> None:
    got = parse_workers([(b"hv-01/x", 1000.0), (b"hv-01/y", 5000.0)], now_ms=6000, timeout_ms=3000)
    assert got["hv-01"].live == 1 and got["hv-01"].last_seen_ms == 5000
