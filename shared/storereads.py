"""The state store's reads, for workers (and tests), beside the Redis connection and the
patience (shared/outage.py) every call of Store goes through; Store (shared/store.py)
adds the transitions, through the same scripts as AsyncStore."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self, TypeVar

import redis

from shared import keys
from shared.outage import Attempt, Patience
from shared.records import (
    OperationRecord,
    R,
    ServerRecord,
    SnapshotRecord,
    TokenRecord,
    decode_record,
)
from shared.scripts import (
    Page,
    as_dict,
    decoded_page,
    hash_commands,
    page_index,
    script_sources,
    text,
)
from shared.settings import Settings

T = TypeVar("T")


class StoreReads:
    def __init__(self, redis: redis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._scripts = {
            name: redis.register_script(source) for name, source in script_sources().items()
        }
        # Every call below but progress and ping waits out a Redis restart (shared/outage.py).
        self.patience = Patience(settings.redis_outage_wait)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        client = redis.Redis.from_url(settings.effective_redis_url, decode_responses=True)
        return cls(client, settings)

    def _run(self, name: str, *args: Any, attempt: Attempt | None = None) -> Any:
        script = self._scripts[name]
        return self.patience.call(name, lambda: script(args=list(args)), attempt)

    def _patient(self, fn: Callable[..., T], *args: Any) -> T:
        return self.patience.call(getattr(fn, "__name__", "read"), lambda: fn(*args))

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def preload(self, *names: str) -> None:
        """Loads these scripts into Redis now (SCRIPT LOAD; a connection opened too), so
        their first call does not pay it: each is _lib.lua and its own, ~15 KB, 4-12 ms to
        compile (the claim, a worker's first pick-up: 20 ms against 3-7 after)."""
        for name in names:
            self.redis.script_load(self._scripts[name].script)

    def get_operation(self, operation_id: int) -> OperationRecord | None:
        raw = self._patient(self.redis.hgetall, keys.operation(operation_id))
        return decode_record(as_dict(raw), OperationRecord)

    def get_snapshot(self, snapshot_id: int) -> SnapshotRecord | None:
        raw = self._patient(self.redis.hgetall, keys.snapshot(snapshot_id))
        return decode_record(as_dict(raw), SnapshotRecord)

    def get_server(self, server_id: int) -> ServerRecord | None:
        raw = self._patient(self.redis.hgetall, keys.server(server_id))
        return decode_record(as_dict(raw), ServerRecord)

    def get_token(self, digest: str) -> TokenRecord | None:
        return decode_record(as_dict(self.redis.hgetall(keys.token(digest))), TokenRecord)

    def is_cancelled(self, op_id: int) -> bool:
        # Not patient: a capture asks every second and goes on while Redis is away.
        status = self.redis.hget(keys.operation(op_id), "status")
        # A vanished operation cannot be finished either: treat it as cancelled.
        return status is None or text(status) == "cancelled"

    def list_snapshots(
        self,
        *,
        account: str | None,
        server_id: int | None = None,
        status: str | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> Page[SnapshotRecord]:
        key = keys.index("snapshots", account, server_id, status)
        return self._page(key, "snapshot:", cursor, limit, SnapshotRecord)

    def list_operations(
        self,
        *,
        account: str | None,
        server_id: int | None = None,
        status: str | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> Page[OperationRecord]:
        key = keys.index("operations", account, server_id, status)
        return self._page(key, "operation:", cursor, limit, OperationRecord)

    def _page(
        self, key: str, prefix: str, cursor: int | None, limit: int, cls: type[R]
    ) -> Page[R]:
        index = page_index(
            self._run("list_page", key, prefix, "" if cursor is None else cursor, limit))
        pipe = self.redis.pipeline(transaction=False)
        for command in hash_commands(prefix, index.members):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        # redis-py answers HGETALL as a dict; a row is the flat list Redis sends.
        rows = [[text(x) for kv in h.items() for x in kv] for h in pipe.execute()]
        return decoded_page(index, rows, cls)

    def hook_pending(self, op_id: int) -> bool:
        """A pre hook ran and its post hook has not yet (the worker may have been killed)."""
        return bool(self._patient(self.redis.hget, keys.operation(op_id), "hook_pending"))

    def now(self) -> float:
        """The Redis server's clock (epoch s): one clock for every worker on every host,
        the same the Lua scripts stamp their times with."""
        seconds, micros = self.redis.time()
        return float(seconds) + float(micros) / 1_000_000

    def due_schedules(self, now: float) -> list[int]:
        """Servers whose schedule's next slot is at or before ``now``, soonest first."""
        return [int(text(v)) for v in self.redis.zrangebyscore(keys.SCHEDULES_DUE, "-inf", now)]

    def server_snapshots(self, server_id: int) -> list[SnapshotRecord]:
        """Every listed snapshot of a server (a few: the limit bounds them, failed aside)."""
        key = keys.index("snapshots", None, server_id, None)
        ids = self._patient(self.redis.zrange, key, 0, -1)
        snaps = (self.get_snapshot(int(text(i))) for i in ids)
        return [s for s in snaps if s is not None]

    def active_operation_ids(self) -> list[int]:
        """Ids of every queued or running operation, oldest first."""
        out: list[int] = []
        for status in ("queued", "running"):
            key = keys.index("operations", None, None, status)
            out += [int(text(v)) for v in self._patient(self.redis.zrange, key, 0, -1)]
        return sorted(set(out))

    def captures_active(self) -> bool:
        """Whether a capture has started and not ended: its stored chunks are not referenced
        by any manifest yet, and a reclaim now would sweep what a killed capture resumes
        from. A capture still queued that no worker ever claimed (attempts 0: say, on a host
        with no live worker) has stored nothing, so it does not hold every host's reclaim
        back until its deadline."""
        for op_id in self.active_operation_ids():
            op_type, attempts = self._patient(
                self.redis.hmget, keys.operation(op_id), ["type", "attempts"])
            if op_type is not None and text(op_type) == "snapshot.create" and int(
                text(attempts or 0)
            ) > 0:
                return True
        return False

    def server_stopped_by(self, op_id: int) -> bool:
        return bool(self._patient(self.redis.hget, keys.operation(op_id), "server_stopped"))
