"""The asyncio state store the API uses: same scripts and key layout as ``Store``.

Every read is one round trip (one HGETALL); a listing is the list_page script, then one
pipelined read of the hashes it needs; every write is one
transition script. Refusals raise ``TransitionRefused`` with the SPEC error code.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
import redis.exceptions

from shared import keys, metrics
from shared.fastread import FastReads, pairs
from shared.hosts import HostSummary, workers_async
from shared.hosts import summary as host_summary
from shared.outage import STALE_CONNECTION
from shared.records import (
    OperationRecord,
    R,
    ServerRecord,
    SnapshotRecord,
    TokenRecord,
    decode_record,
)
from shared.schemas import ScheduleSet, ServerCreate, SnapshotCreate, SnapshotUpdate, TokenScope
from shared.scripts import (
    IdemClaim,
    Page,
    PageIndex,
    arg,
    create_server_arg,
    create_snapshot_arg,
    decoded_page,
    delete_snapshot_arg,
    hash_commands,
    page_index,
    result,
    script_sources,
    set_schedule_arg,
    start_restore_arg,
    text,
    update_snapshot_arg,
)
from shared.settings import Settings

log = logging.getLogger("operations")
# Set once the tokens made before token listings existed are in idx:tokens:*.
TOKENS_INDEXED = "idx:tokens:built"

# The web process's connections for scripts (hot reads go over FastReads' one connection).
POOL_CONNECTIONS: Final = 4
# Seconds a request waits for a free connection before it answers 503.
POOL_WAIT: Final = 5.0


class CreatedSnapshot(msgspec.Struct):
    snapshot_id: int
    operation_id: int
    created_at: int
    server_name: str
    host: str


class StartedRestore(msgspec.Struct):
    operation_id: int
    server_id: int
    server_name: str
    snapshot_id: int
    snapshot_name: str
    snapshot_created_at: int
    host: str
    safety_snapshot_id: int | None = None


class QueuedOperation(msgspec.Struct):
    """An operation a transition queued, and the host whose queue it goes to."""

    operation_id: int
    host: str


class CreatedToken(msgspec.Struct):
    token_id: int
    created_at: int


class AsyncStore:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        # Hot reads (record by id, token lookup) go through one pipelined connection.
        self.reads = FastReads(settings.effective_redis_url)
        self._scripts = {
            name: client.register_script(source) for name, source in script_sources().items()
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncStore:
        # A small pool that makes a burst wait its turn (each script is well under a
        # millisecond) instead of opening a connection per concurrent request: a web
        # process holds a handful of Redis connections however many clients it serves.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.effective_redis_url,
            max_connections=POOL_CONNECTIONS,
            timeout=POOL_WAIT,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=30,
            # A pooled connection to a Redis that restarted is dead: one immediate retry
            # on a fresh one, so the first requests after a restart do not answer 503.
            retry_on_error=list(STALE_CONNECTION),
        )
        return cls(aioredis.Redis(connection_pool=pool), settings)

    async def close(self) -> None:
        await self.reads.close()
        await self.redis.aclose()

    async def _run(self, name: str, *args: Any) -> Any:
        return await self._scripts[name](args=list(args))

    async def _get(self, key: str, cls: type[R]) -> R | None:
        return decode_record(await self.reads.hgetall(key), cls)

    async def _index(self, key: str, prefix: str, cursor: int | None, limit: int,
                     version: tuple[str, str] | None = None) -> PageIndex:
        args: tuple[str | int, ...] = (key, prefix, "" if cursor is None else cursor, limit)
        if version is not None:
            args += version
        try:
            # Listing is a hot read too: EVALSHA over the pipelined connection.
            raw = await self.reads.command("EVALSHA", self._scripts["list_page"].sha, 0, *args)
        except redis.exceptions.NoScriptError:
            raw = await self._run("list_page", *args)  # loads the script, for next time
        return page_index(raw)

    async def rows(self, prefix: str, members: list[str]) -> list[list[str]]:
        """The hashes of these members as Redis sends them, pipelined in one round trip
        (empty for one that is gone)."""
        replies: list[list[str]] = await self.reads.batch(hash_commands(prefix, members))
        return replies

    async def _page(
        self, key: str, prefix: str, cursor: int | None, limit: int, cls: type[R]
    ) -> Page[R]:
        index = await self._index(key, prefix, cursor, limit)
        return decoded_page(index, await self.rows(prefix, index.members), cls)

    # ------------------------------------------------------------ reads

    async def ping(self) -> bool:
        return bool(await self.reads.command("PING")) and bool(await self.redis.ping())

    async def now(self) -> float:
        """The Redis server's clock (epoch s), as Store.now: the one the scheduler and the
        Lua scripts go by."""
        seconds, micros = await self.redis.time()
        return float(seconds) + float(micros) / 1_000_000

    async def get_token(self, digest: str) -> TokenRecord | None:
        return await self._get(keys.token(digest), TokenRecord)

    async def get_server(self, server_id: int) -> ServerRecord | None:
        return await self._get(keys.server(server_id), ServerRecord)

    async def get_snapshot(self, snapshot_id: int) -> SnapshotRecord | None:
        return await self._get(keys.snapshot(snapshot_id), SnapshotRecord)

    async def snapshot_hash(self, snapshot_id: int) -> dict[str, str]:
        """A snapshot's hash as Redis holds it (empty when there is none): GET one renders
        it through the web process's views, by (id, rev), without decoding it each time."""
        # The reply's future awaited here, not through hgetall's coroutine: GET one's path.
        return pairs(await self.reads.command("HGETALL", keys.snapshot(snapshot_id)))

    async def get_operation(self, operation_id: int) -> OperationRecord | None:
        return await self._get(keys.operation(operation_id), OperationRecord)

    async def hosts(self) -> list[HostSummary]:
        """Every host with a server, a live worker or a queued operation (shared/hosts.py)."""
        seen = await workers_async(self.redis, self.settings.heartbeat_timeout)
        counts = result(await self._run("host_counts"))
        # cjson encodes an empty Lua table as [] or {}: either means no host.
        return host_summary(seen, counts["servers"] or {}, counts["queued"] or {})

    async def list_servers(
        self, *, account: str | None, cursor: int | None = None, limit: int = 50
    ) -> Page[ServerRecord]:
        key = f"idx:servers:account:{account}" if account is not None else "idx:servers:all"
        return await self._page(key, "server:", cursor, limit, ServerRecord)

    async def list_snapshots(
        self,
        *,
        account: str | None,
        server_id: int | None = None,
        status: str | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> PageIndex:
        """A page of snapshots: ids and revs only, and the listing's version; the API reads
        the hashes it has not rendered at that rev (``rows``, api/views.py RowViews)."""
        return await self.snapshot_page(account=account, server_id=server_id, status=status,
                                        cursor=cursor, limit=limit, known_version="")

    def listing_version(self, account: str | None) -> Awaitable[str | None]:
        """The version of the account's snapshot listings now (of every account's for
        None): one GET, what a kept page is checked against (api/views.py
        RowViews.kept_page). A plain GET, not the list script: a kept page is the common
        answer, and an EVALSHA costs Redis several times a GET (the helpers' prelude)."""
        return self.reads.get(keys.snapshot_listing_version(account))

    async def snapshot_page(
        self,
        *,
        account: str | None,
        server_id: int | None,
        status: str | None,
        cursor: int | None,
        limit: int,
        known_version: str,
    ) -> PageIndex:
        """``list_snapshots``, or, when the listing is still at ``known_version`` (the
        version a page was kept under), only ``unchanged``: the script reads the version
        and the page together, atomically."""
        version_key = keys.snapshot_listing_version(account)
        key = keys.index("snapshots", account, server_id, status)
        return await self._index(key, "snapshot:", cursor, limit, (version_key, known_version))

    async def list_operations(
        self,
        *,
        account: str | None,
        server_id: int | None = None,
        status: str | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> Page[OperationRecord]:
        key = keys.index("operations", account, server_id, status)
        return await self._page(key, "operation:", cursor, limit, OperationRecord)

    # ------------------------------------------------------------ transitions
    # ``account`` None means an admin acting across accounts.

    async def _started(self, name: str, payload: bytes, idem: IdemClaim | None) -> dict[str, Any]:
        """A start transition's answer: the one already committed under ``idem``'s key when
        there is one (the request that ran the script died before it answered), else the
        script's, run under the key's claim."""
        if idem is not None and idem.answer is not None:
            return result(idem.answer)
        return result(await self._run(name, payload))

    async def create_snapshot(
        self, *, account: str | None, body: SnapshotCreate, idem: IdemClaim | None = None
    ) -> CreatedSnapshot:
        payload = create_snapshot_arg(account, body, self.settings.max_per_server, idem)
        answer = await self._started("create_snapshot", payload, idem)
        made = msgspec.convert(answer, CreatedSnapshot)
        self._queued(made.operation_id, "snapshot.create", made.snapshot_id)
        return made

    async def start_restore(
        self,
        *,
        account: str | None,
        snapshot_id: int,
        start_after: bool | None = None,
        target_id: int | None = None,
        safety: bool = False,
        idem: IdemClaim | None = None,
    ) -> StartedRestore:
        payload = start_restore_arg(account, snapshot_id, start_after, target_id, safety,
                                    self.settings.max_per_server, idem)
        answer = await self._started("start_restore", payload, idem)
        started = msgspec.convert(answer, StartedRestore, strict=False)
        self._queued(started.operation_id, "snapshot.restore", snapshot_id)
        return started

    async def delete_snapshot(
        self, *, account: str | None, snapshot_id: int
    ) -> QueuedOperation:
        payload = delete_snapshot_arg(account, snapshot_id, self.settings.deletes_anywhere)
        answer = result(await self._run("delete_snapshot", payload))
        if answer.get("cancelled_operation_id"):
            cancelled = int(answer["cancelled_operation_id"])
            log.info("operation %d cancelled: snapshot.create", cancelled,
                     extra={"operation_id": cancelled, "snapshot_id": snapshot_id,
                            "status": "cancelled"})
            await metrics.record_operation_async(self.redis, "snapshot.create", "cancelled")
        queued = msgspec.convert(answer, QueuedOperation)
        self._queued(queued.operation_id, "snapshot.delete", snapshot_id)
        return queued

    @staticmethod
    def _queued(op_id: int, op_type: str, snapshot_id: int) -> int:
        log.info("operation %d queued: %s", op_id, op_type,
                 extra={"operation_id": op_id, "type": op_type, "snapshot_id": snapshot_id,
                        "status": "queued"})
        return op_id

    async def settle_idempotency(
        self, idem: IdemClaim, record: bytes | None, ttl: int
    ) -> None:
        """Ends ``idem``'s claim: with ``record`` (the answer to replay, kept ``ttl`` s),
        else released, unless a transition committed under it (settle_idempotency.lua)."""
        await self._run("settle_idempotency", arg({
            "key": idem.key, "claim": idem.claim, "ttl": ttl,
            "record": None if record is None else record.decode()}))

    async def update_snapshot(
        self, *, account: str | None, snapshot_id: int, body: SnapshotUpdate
    ) -> None:
        result(await self._run("update_snapshot", update_snapshot_arg(account, snapshot_id, body)))

    async def set_schedule(
        self, *, account: str | None, server_id: int, body: ScheduleSet, next_at: int
    ) -> None:
        payload = set_schedule_arg(account, server_id, body, next_at)
        result(await self._run("set_schedule", payload))

    async def delete_schedule(self, *, account: str | None, server_id: int) -> None:
        result(await self._run("delete_schedule", arg({
            "server_id": str(server_id), "account": account,
        })))

    async def create_server(self, body: ServerCreate, status: str = "running") -> int:
        answer = result(await self._run("create_server", create_server_arg(body, status)))
        return int(answer["server_id"])

    async def delete_server(
        self, *, account: str | None, server_id: int
    ) -> list[QueuedOperation]:
        """Deletes the server; returns the delete operations queued for its snapshots."""
        answer = result(await self._run("delete_server", arg({
            "server_id": str(server_id), "account": account,
            "anywhere": True if self.settings.deletes_anywhere else None,
        })))
        ops = answer.get("delete_operation_ids") or []
        # cjson encodes an empty Lua table as {}, not [].
        host = str(answer["host"])
        return [QueuedOperation(int(o), host) for o in ops] if isinstance(ops, list) else []

    async def create_token(self, digest: str, account: str, scope: TokenScope) -> CreatedToken:
        answer = result(await self._run("create_token", arg({
            "sha": digest, "account": account, "scope": scope,
        })))
        return msgspec.convert(answer, CreatedToken)

    async def list_tokens(
        self, *, account: str | None, cursor: int | None = None, limit: int = 50
    ) -> Page[TokenRecord]:
        await self._index_old_tokens()
        key = f"idx:tokens:account:{account}" if account is not None else "idx:tokens:all"
        return await self._page(key, "token:", cursor, limit, TokenRecord)

    async def _index_old_tokens(self) -> None:
        """Tokens made before listings existed are indexed once (create_token indexes
        every new one), so GET /tokens/ shows them too."""
        if await self.redis.exists(TOKENS_INDEXED):
            return
        async for key in self.redis.scan_iter(match="token_id:*", count=1000):
            token_id, sha = int(text(key).split(":", 1)[1]), await self.redis.get(key)
            if sha is None:
                continue
            owner = await self.redis.hget(f"token:{text(sha)}", "account")
            if owner is not None:
                await self.redis.zadd("idx:tokens:all", {text(sha): token_id})
                await self.redis.zadd(f"idx:tokens:account:{text(owner)}", {text(sha): token_id})
        await self.redis.set(TOKENS_INDEXED, "1")

    async def revoke_token(self, token_id: int) -> str:
        """Revokes; returns the digest so caches can drop it. Raises if unknown."""
        answer = result(await self._run("revoke_token", str(token_id)))
        return str(answer["sha"])
