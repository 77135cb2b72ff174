"""The reaper: what makes "no status stays in_progress, running or restoring forever" true.

One runs as a thread in every worker process (started by `workers.periodic.Periodic` when
the worker boots), so it needs no process of its own and no one to call it. Each pass:

1. sends again the message of an operation that is queued, or running without a live
   owner, and that nothing happened to for ``requeue_after`` seconds: the web process died
   between its state write and its enqueue, an enqueue failed, or a message was lost. Jobs
   are idempotent and leased, so a message too many costs nothing. The message goes to the
   queue of the operation's host, whichever host's reaper sends it;
2. ends as failed (``deadline_exceeded``) an operation that started more than
   ``operation_deadline`` seconds ago; the same Lua script puts its snapshot to ``failed``
   and its server out of ``restoring``, to the power status the driver reports. Only the
   operation's own host asks the driver (no host touches another host's servers); the
   operation of a host with no live worker is ended by any reaper, the server keeping the
   power status it had before; an operation of any host (a delete on s3://) by any reaper;
3. at most once per ``reclaim_interval`` across all workers, removes the manifests of
   deleted snapshots whose delete operation failed for good, then sweeps the repository of
   data no committed snapshot references (a delete whose reclaim was skipped because a
   capture held the repository, the leftovers of a failed capture).

Several reapers at once are harmless: every change is a compare-and-set in Lua
(`mark_requeue`, `fail_operation` with its deadline guard), and reclaim takes the
repository's exclusive lock.
"""

from __future__ import annotations

import logging
import time

from dramatiq.brokers.redis import RedisBroker

from shared import metrics
from shared.broker import HEARTBEATS_KEY, enqueue_operation
from shared.hosts import ANY_HOST, live_workers
from shared.records import OperationRecord
from shared.scripts import text
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.jobs import Jobs
from workers.power import PowerError, PowerFactory

log = logging.getLogger(__name__)

RECLAIM_KEY = "reaper:reclaim"


class Reaper:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        broker: RedisBroker,
        power_for: PowerFactory,
        settings: Settings,
        jobs: Jobs | None = None,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.engine = engine
        self.broker = broker
        self.power_for = power_for
        self.settings = settings
        self.timeout_ms = int(settings.heartbeat_timeout * 1000)

    def tick(self) -> None:
        """One pass over every active operation, then maybe a reclaim."""
        live: dict[str, int] | None = None  # read once a pass, and only when needed
        ids = self.store.active_operation_ids()
        # Redis's clock, which stamped the operations' times: by this host's, one a few
        # minutes ahead ended operations that many minutes before their deadline.
        now = self.store.now() if ids else 0.0
        for op_id in ids:
            op = self.store.get_operation(op_id)
            if op is None:
                continue
            if not self._ours(op) and self._overdue(op, now) and live is None:
                live = live_workers(self.store.redis, self.settings.heartbeat_timeout)
            self._look_at(op, live or {}, now)
        self._maybe_reclaim()

    def _ours(self, op: OperationRecord) -> bool:
        """Of this worker's host, or of any host (a delete on s3://)."""
        return op.host in (self.settings.worker_host, ANY_HOST)

    def _overdue(self, op: OperationRecord, now: float) -> bool:
        return now - (op.started_at or op.created_at) > self.settings.operation_deadline

    def _look_at(self, op: OperationRecord, live: dict[str, int], now: float) -> None:
        if self._overdue(op, now):
            own = self._ours(op)
            if own or not live.get(op.host):
                self._expire(op, int(now - self.settings.operation_deadline), own)
            return  # else: the reapers of its own host end it
        if op.status == "running":
            self._release_if_stale(op.id)
        resend = self.store.mark_requeue(
            op.id, self.settings.requeue_after, HEARTBEATS_KEY, self.timeout_ms
        )
        if resend is not None:
            op_type, host = resend
            log.warning(
                "operation %s (%s, host %r) looked stuck; sending it again",
                op.id, op.status, host,
            )
            enqueue_operation(self.broker, op_type, op.id, host)

    def _release_if_stale(self, op_id: int) -> None:
        """A lease this very process holds while none of its threads runs the operation:
        the job died while Redis was away, so neither its release nor its retry message
        got through, and this process's heartbeat keeps the lease looking alive. Release
        it; the requeue below sends the message again ``requeue_after`` seconds later."""
        if self.jobs is None or self.jobs.lease is None:
            return
        owner, process = self.store.redis.hmget(f"operation:{op_id}", ["owner", "owner_process"])
        if process is None or text(process) != self.jobs.lease.process_id:
            return
        if not self.jobs.is_running(op_id) and self.store.release_operation(op_id, text(owner)):
            log.warning("operation %s: released the lease of a job that is gone", op_id)

    def _expire(self, op: OperationRecord, started_before: int, own_host: bool) -> None:
        hours = self.settings.operation_deadline / 3600
        message = (
            f"The operation did not finish within its deadline of {hours:g} h "
            f"(SNAPSHOTS_OPERATION_DEADLINE); it was {op.status} and is ended as failed."
        )
        if not own_host:
            message += f" Host {op.host!r} has no live worker (see GET /api/v1/hosts/)."
        ask = own_host and op.type == "snapshot.restore"
        status = self._power_status(op) if ask else None
        if self.store.fail_operation(
            op.id, "deadline_exceeded", message, status, started_before=started_before
        ):
            log.warning("operation %s ended: deadline exceeded", op.id)

    def _power_status(self, op: OperationRecord) -> str | None:
        """What the server really is now, so its status is truthful; None: its prior one."""
        server = self.store.get_server(op.server_id)
        if server is None:
            return None
        try:
            return self.power_for(server).status()
        except PowerError:
            return None

    def _delete_manifests_of_deleted(self) -> None:
        """Removes the manifest of every snapshot whose record says deleted. Its delete
        operation removes it, unless that failed for good (the store away through all its
        attempts): the snapshot was gone from every listing, and the manifest, which
        nothing else removes, kept its data from every reclaim for ever. Nothing reads a
        deleted snapshot (a delete waits for its restores), and a capture that commits
        one after its delete removes it itself; no capture runs now (the caller checked).
        A manifest without a record (Redis lost it) is left for catalog rebuild."""
        for snapshot_id in self.engine.snapshot_ids():
            rec = self.store.get_snapshot(snapshot_id)
            if rec is not None and rec.deleted:
                log.warning("snapshot %s: deleted, yet its manifest was left; removing it",
                            snapshot_id)
                self.engine.delete(snapshot_id)

    def _maybe_reclaim(self) -> None:
        ttl = max(1, int(self.settings.reclaim_interval))
        if self.store.captures_active():
            # A killed capture resumes from the chunks it stored, which no manifest
            # references yet: sweeping them now would make it store them again.
            return
        if not self.store.redis.set(RECLAIM_KEY, str(time.time()), nx=True, ex=ttl):
            return  # another reaper reclaimed within the interval
        self._delete_manifests_of_deleted()
        stats = self.engine.reclaim()
        if stats.skipped_locked:
            # A capture or restore holds the repository: try again at the next pass.
            self.store.redis.delete(RECLAIM_KEY)
            return
        # Reclaim listed every object: the repository's true size for GET /metrics.
        metrics.record_repository_size(self.store.redis, stats.bytes_kept)
        if stats.objects_removed:
            log.info("reclaimed %d objects (%d bytes)", stats.objects_removed, stats.bytes_removed)
