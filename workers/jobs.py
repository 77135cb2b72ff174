"""What a worker does for each operation: the bridge between the state store and the engine.

Every job starts with `Store.begin_operation`, which is a compare-and-set: a message that
arrives twice, or after its operation ended, finds nothing to do. Every job is safe to run
again from the top after a kill: the engine's capture resumes without re-storing chunks, a
restore rebuilds in a staging area and swaps atomically, and delete is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared import logs, metrics
from shared.hosts import DEFAULT_HOST
from shared.records import OperationRecord
from shared.schemas import PowerNone
from shared.store import Store
from workers import heap
from workers.capturing import MIB, Capturer, SafetyFailed
from workers.catalog import PLACEHOLDER_PREFIX
from workers.engine import (
    Cancelled,
    Engine,
    EngineError,
    StateSpec,
    StorageFull,
    TransientEngineError,
)
from workers.giveup import GiveUp
from workers.hooks import HookFailed, HookRunner
from workers.power import PowerError, PowerFactory, PowerStatus, settle
from workers.powerhold import POWER_HOLD_S, PowerHold, settled
from workers.reporting import CancelCheck, ProgressReporter
from workers.retention import retention_drop

log = logging.getLogger(__name__)

# Sends an operation's message to the queue of its host: (type, operation id).
Enqueue = Callable[[str, int], None]


@dataclass(frozen=True)
class Lease:
    """Who runs an operation: this worker process (its broker heartbeat id) and thread.

    An operation held by a live owner is not run again by a duplicate message; an owner
    whose heartbeat went stale is dead, and its operation is taken over.
    """

    process_id: str
    heartbeats_key: str
    timeout_ms: int
    # The worker's host (SNAPSHOTS_HOST): it claims only operations of this host.
    host: str = DEFAULT_HOST

    def owner(self) -> str:
        return f"{self.process_id}/{threading.get_ident()}"


class Jobs:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        power_for: PowerFactory,
        max_attempts: int,
        lease: Lease | None = None,
        enqueue: Enqueue | None = None,
    ):
        self.store = store
        self.engine = engine
        self.power_for = power_for
        self.max_attempts = max_attempts
        self.lease = lease
        self.enqueue = enqueue
        self.hooks = HookRunner(store)
        self.capturer = Capturer(engine, self.hooks)
        self.power = PowerHold(store)
        self.give_up = GiveUp(store, engine, self.hooks, power_for, self.power)
        # Operations this process's threads are running now: the reaper of this process
        # releases a lease it holds in Redis for an operation none of them runs (a job
        # that died while Redis was away and could neither release it nor be retried).
        # A count, not a set: a duplicate message may be refused ("busy") on one thread
        # while another thread of this process runs the same operation.
        self.running: Counter[int] = Counter()
        self._running_lock = threading.Lock()

    # -- entry points -------------------------------------------------------------------

    def run(self, operation_id: int) -> None:
        # Registered before the claim, so the reaper never sees our fresh lease as stale.
        with self._running_lock:
            self.running[operation_id] += 1
        try:
            self._claim_and_run(operation_id)
        finally:
            with self._running_lock:
                self.running[operation_id] -= 1
                if self.running[operation_id] <= 0:
                    del self.running[operation_id]
                idle = not self.running
            if idle:  # no operation of this process runs: what they freed goes back
                heap.release()

    def is_running(self, operation_id: int) -> bool:
        with self._running_lock:
            return self.running[operation_id] > 0

    def _claim_and_run(self, operation_id: int) -> None:
        if self.lease is None:
            op = self.store.begin_operation(operation_id)
            code = "terminal"
        else:
            owner = self.lease.owner()
            code, op = self.store.claim_operation(
                operation_id,
                owner,
                self.lease.process_id,
                self.lease.heartbeats_key,
                self.lease.timeout_ms,
                self.lease.host,
            )
        if code == "wrong_host":
            self._forward(operation_id)
            return
        if op is None:
            # terminal: a redelivered or duplicate message after the end; busy: a live
            # worker runs it now, and if that worker dies its own message comes back.
            log.info("operation %s: nothing to do here (%s)", operation_id, code)
            return
        # Every line of this job names its account and server too (shared/logs.py).
        logs.bind(account=op.account, server_id=op.server_id)
        try:
            self._run(op)
        except BaseException:
            # Interrupted (shutdown) or failed in a way that will be retried: give the lease
            # back so the retry may start at once, on this worker or another.
            if self.lease is not None:
                with contextlib.suppress(redis.RedisError):
                    self.store.release_operation(op.id, owner)
            raise

    def _forward(self, operation_id: int) -> None:
        """A message of another host's operation reached this host's queue (sent by hand,
        or by an older version to a shared queue): it is not ours to touch, so it goes to
        its own host's queue, where it waits for that host's workers."""
        op = self.store.get_operation(operation_id)
        if op is None or self.enqueue is None:
            return
        log.warning(
            "operation %s runs on host %r, not on this worker's; sent to that host's queue",
            op.id, op.host,
        )
        self.enqueue(op.type, op.id)

    def _run(self, op: OperationRecord) -> None:
        if op.attempts > self.max_attempts:
            self.give_up(op)
            return
        handler = {
            "snapshot.create": self._create,
            "snapshot.restore": self._restore,
            "snapshot.delete": self._delete,
        }[op.type]
        if op.snapshot_id is None:
            self.store.fail_operation(op.id, "internal_error", "The operation names no snapshot.")
            return
        try:
            handler(op, op.snapshot_id)
        except Exception as exc:
            # Transient failures are retried by Dramatiq; the last attempt records why it died
            # so that nothing stays `running` forever.
            if op.attempts >= self.max_attempts:
                log.exception("operation %s failed for good", op.id)
                # A restore's attempts stopped its server (an OSError of the engine's, e.g.
                # an immutable file of the state, left it stopped and said "running")
                status = self.give_up.restore_back(op) if op.type == "snapshot.restore" else None
                self.store.fail_operation(op.id, "internal_error", f"The job failed: {exc}",
                                          server_status=status, power_settled=True)
                return
            raise

    def _report(self, op_id: int, percent: int) -> None:
        # Progress is best effort: a Redis outage must not kill an hours-long capture.
        with contextlib.suppress(redis.RedisError):
            self.store.report_progress(op_id, percent)

    def _cancelled(self, op_id: int) -> bool:
        """Stop the capture when its operation is no longer ours to finish: cancelled by a
        delete, or ended by the reaper (deadline)."""
        try:
            return self.store.is_cancelled(op_id) or not self._still_running(op_id)
        except redis.RedisError:
            return False  # asked again a second later; a delete waits for us anyway

    @staticmethod
    def _transient(exc: EngineError) -> bool:
        """Worth a retry (the message is delivered again): a TransientEngineError, e.g. "a
        capture worker process died", which is what a SIGTERM to the whole process group
        looks like from here. The others (storage_full, snapshot_corrupt, ...) are final."""
        return isinstance(exc, TransientEngineError)

    # -- create -------------------------------------------------------------------------

    def _create(self, op: OperationRecord, snapshot_id: int) -> None:
        snap = self.store.get_snapshot(snapshot_id)
        server = self.store.get_server(op.server_id)
        if snap is None or server is None or snap.deleted or snap.status != "in_progress":
            return
        driver = self.power_for(server)
        stopped_here = False
        warnings: list[str] = []
        failure: EngineError | PowerError | HookFailed | None = None
        try:
            if op.stop_server and driver.status() == "running":
                # Noted before the stop, so a retry after a kill knows to start it again.
                self.store.note_server_stopped(op.id, POWER_HOLD_S)
                driver.stop()
                stopped_here = True
                self.store.set_server_power(server.id, "stopped")
            elif op.stop_server and self.store.server_stopped_by(op.id):
                stopped_here = True  # an earlier attempt stopped it, then died
            result, captured_warnings = self.capturer.capture(
                op.id, snap, server,
                progress=lambda p: self._report(op.id, p),
                should_stop=lambda: self._cancelled(op.id),
            )
        except Cancelled:
            log.info("snapshot %s: deleted or ended while it was being created", snap.id)
            return
        except (EngineError, PowerError, HookFailed) as exc:
            if isinstance(exc, EngineError) and self._transient(exc):
                raise
            # failed once the server is started again (below): failed first, a client that
            # saw it and at once asked for another snapshot took the server before the start,
            # which was then left to that operation, and it found the server stopped
            failure = exc
        finally:
            if stopped_here:
                warnings += self.power.start_again(op.id, server, driver)
            # Ended meanwhile (deleted, the deadline) between its hooks, the operation held
            # the server for its post hook (shared/lua/_lib.lua hold_for_owed_work), which
            # has run by now: free (a no-op for a capture still ours). Best effort: the
            # hold expires by itself, and a Redis outage here must not fail the capture.
            with contextlib.suppress(redis.RedisError):
                self.store.end_power_hold(server.id, op.id)
        if failure is not None:
            # (a start that failed too says so: the snapshot's warnings are never shown)
            self.store.fail_operation(op.id, failure.code, " ".join([str(failure), *warnings]),
                                      power_settled=True)
            if isinstance(failure, StorageFull):
                # Free what the capture stored before it hit the wall (nothing references
                # it); if another capture is under way, the reaper's reclaim will later.
                self.reclaim()
            return
        warnings += captured_warnings
        size_mb = round(result.size_bytes / MIB, 2)
        drop = retention_drop(self.store, snap.id, server.id) if snap.origin == "schedule" else []
        deletes = self.store.complete_scheduled(op.id, size_mb, warnings, drop)
        for delete_id in deletes or []:
            if self.enqueue is not None:  # else the reaper sends it (requeue_after)
                self.enqueue("snapshot.delete", delete_id)
        if deletes is not None:
            # Per engine, not per capture: with two captures at once on this process's
            # threads, "read" may be the other's (the totals still add up over time).
            with contextlib.suppress(redis.RedisError):  # best effort, after the commit
                metrics.record_capture(self.store.redis, read=self.engine.last_bytes_read,
                                       stored=result.stored_bytes, captured=result.size_bytes)
        else:
            current = self.store.get_snapshot(snap.id)
            if current is not None and not current.deleted and current.status == "available":
                # A duplicate delivery committed and completed the same snapshot: it is the
                # same manifest, so keep it (deleting it here would lose a good snapshot).
                return
            # Deleted (or reaped) while the capture committed: the delete job may already
            # have run, so this job removes what it committed itself.
            self.engine.delete(snap.id)
            self.reclaim()

    # -- restore ------------------------------------------------------------------------

    def _restore(self, op: OperationRecord, snapshot_id: int) -> None:
        server = self.store.get_server(op.server_id)
        if server is None:
            self.store.fail_operation(op.id, "not_found", "The server no longer exists.")
            return
        if server.state.path.startswith(PLACEHOLDER_PREFIX):
            self.store.fail_operation(
                op.id,
                "state_invalid",
                "The server was rebuilt from the repository without its state path; "
                "an admin must set it before restoring.",
            )
            return
        state = StateSpec(kind=server.state.kind, path=server.state.path)
        driver = self.power_for(server)
        prior: PowerStatus = "stopped" if server.prior_status == "stopped" else "running"
        should_run = op.start_after if op.start_after is not None else prior == "running"
        try:
            if driver.status() == "running":
                driver.stop()
            if not self._still_running(op.id):
                # The reaper ended it while the stop hung (deadline): restore nothing, and
                # leave the server as it was before, its status saying what it really is.
                self.power.put_back(op.id, server, driver, prior == "running")
                return
            if op.safety_snapshot_id is not None:
                self.capturer.safety(self.store, op.id, op.safety_snapshot_id, server,
                                     lambda: not self._still_running(op.id))
            self.engine.recover(state)
            self.engine.restore(
                snapshot_id,
                state,
                progress=ProgressReporter(lambda p: self._report(op.id, p)),
                live=isinstance(server.power, PowerNone),  # nothing stopped it: leased patch
                # ended by the reaper (deadline) meanwhile: the state is left as it was.
                # Written on to its end, it was swapped in after the operation had failed
                # and the server was free again (a capture may have been reading it).
                should_stop=CancelCheck(lambda: self._cancelled(op.id)),  # once a second
            )
        except Cancelled:
            # The reaper ended the operation while its safety snapshot was being captured,
            # or while it restored: what a restore process killed at its stop grace left
            # half done (a patch's renames) is put back before the server may start.
            with contextlib.suppress(EngineError, OSError):
                self.engine.recover(state)
            self.power.put_back(op.id, server, driver, prior == "running")
            return
        except (EngineError, PowerError, HookFailed, SafetyFailed) as exc:
            if isinstance(exc, EngineError) and self._transient(exc):
                raise
            # The engine left the previous state intact; put the power back as it was.
            status = settled(driver, prior == "running")
            self.store.fail_operation(op.id, exc.code, str(exc), server_status=status)
            # ended meanwhile between its safety capture's hooks, it held the server for
            # the post hook (hold_for_owed_work), which has run by now
            with contextlib.suppress(redis.RedisError):
                self.store.end_power_hold(server.id, op.id)
            return
        if not self.power.may_power(op.id, server):
            return  # the reaper ended it meanwhile, and the server is another operation's
        status, why = settle(driver, should_run)
        try:
            if should_run and status != "running":
                self.store.fail_operation(
                    op.id,
                    "power_failed",
                    "The state was restored, but the server did not start again"
                    + (f": {why}" if why else "."),
                    server_status=status,
                    power_settled=True,
                )
            else:
                self.store.complete_restore(op.id, status)
        finally:
            # Ends the power hold (and says what the server is, if the reaper ended it).
            self.store.set_server_power(server.id, status, held_by=op.id)

    def _still_running(self, op_id: int) -> bool:
        current = self.store.get_operation(op_id)
        return current is not None and current.status == "running"

    # -- delete -------------------------------------------------------------------------

    def _delete(self, op: OperationRecord, snapshot_id: int) -> None:
        self.engine.delete(snapshot_id)
        if not self.reclaim():
            log.info("reclaim deferred to the reaper: a capture is under way")
        self.store.complete_delete(op.id)

    def reclaim(self) -> bool:
        """Sweeps unreferenced data unless a capture is queued or running (whose chunks,
        or those of its killed previous attempt, no manifest references yet: a capture
        resumes from them). False when deferred; the reaper's periodic reclaim catches up."""
        if self.store.captures_active():
            return False
        stats = self.engine.reclaim()
        if not stats.skipped_locked:
            metrics.record_repository_size(self.store.redis, stats.bytes_kept)
        return not stats.skipped_locked
