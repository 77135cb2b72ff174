"""Hosts: where servers' states live and where workers run them (SPEC section 5).

Every server names its host; every worker process belongs to one (``SNAPSHOTS_HOST``).
An operation is sent to the Dramatiq queue of its server's host and only workers of that
host consume it: one queue per host (never per server: each queue costs consumer threads
and Redis polls in every worker that declares it). Work that needs no particular host
(webhooks) has queues of its own that every worker consumes.

A snapshot's deletion needs no particular host when the repository is shared (s3://): it
removes the manifest from the bucket and reclaims, touching nothing of the server's, so a
dead host must not hold it up. Such an operation names ``ANY_HOST`` and goes to
``ANY_HOST_QUEUE``, which every worker on s3:// consumes. On file:// the repository is a
directory of the host that holds it (its own disk: a fleet's hosts do not share one), so
there a delete stays on its server's host like every other operation.

A queue nobody consumes accepts messages silently, so the hosts must be visible: every
worker process writes a heartbeat naming its host into one sorted set, ``WORKERS_KEY``
(member ``<host>/<process id>``, score = the Redis server's clock in ms, so hosts whose
clocks disagree still agree on who is alive), and ``GET /api/v1/hosts/`` counts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.asyncio

DEFAULT_HOST: Final = "default"
# Lower case, like DNS names: no two spellings of one host, and a name can never end in
# Dramatiq's upper-case ".DQ"/".XQ" queue suffixes.
HOST_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,254}$"
HOST_RULE: Final = (
    "1-255 characters: lower-case letters, digits, '.', '_' and '-', starting with a "
    "letter or digit"
)
_HOST_RE: Final = re.compile(HOST_PATTERN)

QUEUE_PREFIX: Final = "host."
# The host of an operation any host's worker may run (see above); not a valid host name,
# so no host can be called so. The API shows it as "host": null.
ANY_HOST: Final = "*"
ANY_HOST_QUEUE: Final = "anyhost"
WORKERS_KEY: Final = "workers:heartbeats"
# Heartbeats of processes gone this long are dropped (a host's last_seen then reads null).
FORGET_AFTER_MS: Final = 7 * 24 * 3600 * 1000

# ARGV: member, forget-after (ms). Writes the member with the server's clock.
_BEAT_LUA: Final = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]))
return ms
"""


def valid_host(name: str) -> bool:
    return _HOST_RE.fullmatch(name) is not None


def queue_name(host: str) -> str:
    """The Dramatiq queue of a host's operations (of ANY_HOST's: ANY_HOST_QUEUE)."""
    if host == ANY_HOST:
        return ANY_HOST_QUEUE
    if not valid_host(host):
        raise ValueError(f"invalid host name {host!r}: {HOST_RULE}")
    return QUEUE_PREFIX + host


def _member(host: str, process_id: str) -> str:
    return f"{host}/{process_id}"


class Heartbeat:
    """A worker process's presence on its host (written by the broker heartbeat thread)."""

    def __init__(self, client: redis.Redis, host: str, process_id: str) -> None:
        self.member = _member(host, process_id)
        self.client = client
        self._script = client.register_script(_BEAT_LUA)

    def beat(self) -> None:
        self._script(keys=[WORKERS_KEY], args=[self.member, FORGET_AFTER_MS])

    def leave(self) -> None:
        """A clean shutdown: the host's count drops at once, not after the timeout."""
        self.client.zrem(WORKERS_KEY, self.member)


@dataclass(frozen=True, slots=True)
class HostWorkers:
    live: int  # worker processes whose heartbeat is fresh
    last_seen_ms: int  # the newest heartbeat of any of its processes


def parse_workers(
    entries: list[tuple[Any, float]], now_ms: int, timeout_ms: int
) -> dict[str, HostWorkers]:
    """Heartbeat entries (ZRANGE ... WITHSCORES) → per-host live count and last beat."""
    live: dict[str, int] = {}
    last: dict[str, int] = {}
    for raw, score in entries:
        member = raw.decode() if isinstance(raw, bytes) else str(raw)
        host, _, _ = member.partition("/")
        ms = int(score)
        live[host] = live.get(host, 0) + (1 if ms > now_ms - timeout_ms else 0)
        last[host] = max(last.get(host, 0), ms)
    return {h: HostWorkers(live=live[h], last_seen_ms=last[h]) for h in live}


def _now_ms(t: Any) -> int:
    return int(t[0]) * 1000 + int(t[1]) // 1000


def workers(client: redis.Redis, timeout_s: float) -> dict[str, HostWorkers]:
    """Every host some worker process beat from in the last week (sync client)."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
    now, entries = pipe.execute()
    return parse_workers(entries, _now_ms(now), int(timeout_s * 1000))


async def workers_async(client: redis.asyncio.Redis, timeout_s: float) -> dict[str, HostWorkers]:
    """`workers` for an asyncio client (the web process)."""
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.zrange(WORKERS_KEY, 0, -1, withscores=True)
    now, entries = await pipe.execute()
    return parse_workers(entries, _now_ms(now), int(timeout_s * 1000))


def live_workers(client: redis.Redis, timeout_s: float) -> dict[str, int]:
    """Live worker processes per host (hosts seen in the last week, zeros included)."""
    return {h: w.live for h, w in workers(client, timeout_s).items()}


async def live_workers_async(client: redis.asyncio.Redis, timeout_s: float) -> dict[str, int]:
    return {h: w.live for h, w in (await workers_async(client, timeout_s)).items()}


@dataclass(frozen=True, slots=True)
class HostSummary:
    name: str
    workers: int
    last_seen: int | None  # epoch seconds of its newest heartbeat
    servers: int
    queued: int


def summary(
    seen: dict[str, HostWorkers], servers: dict[str, int], queued: dict[str, int]
) -> list[HostSummary]:
    """Every host that has a server, a live worker or a queued operation, by name, from
    the heartbeats (`workers_async`) and the counts of ``shared/lua/host_counts.lua``."""
    names = {h for h, w in seen.items() if w.live} | set(servers) | set(queued)
    return [
        HostSummary(
            name=name,
            workers=seen[name].live if name in seen else 0,
            last_seen=seen[name].last_seen_ms // 1000 if name in seen else None,
            servers=servers.get(name, 0),
            queued=queued.get(name, 0),
        )
        for name in sorted(names)
    ]
