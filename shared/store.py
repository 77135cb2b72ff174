"""The synchronous state store, for workers (and tests): the same scripts as AsyncStore.
Its reads, the connection and the patience are StoreReads' (shared/storereads.py).

Worker-side transitions answer True/False instead of raising: a False means the state
moved on without this worker (cancelled, deleted, reaped), and the actor just stops.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import msgspec
import redis

from shared import keys, metrics
from shared.hosts import DEFAULT_HOST
from shared.outage import Attempt
from shared.records import (
    OperationRecord,
)
from shared.responses import HookRun
from shared.schemas import ScheduleSet, ServerCreate, SnapshotCreate, SnapshotUpdate
from shared.scripts import (
    IdemClaim,
    arg,
    create_server_arg,
    create_snapshot_arg,
    delete_snapshot_arg,
    ok,
    result,
    set_schedule_arg,
    start_restore_arg,
    text,
    update_snapshot_arg,
)
from shared.storereads import StoreReads

# Hook runs kept on an operation (a retried capture runs its hooks again).
HOOK_RUNS_KEPT = 12


def _ids(raw: Any) -> list[int]:
    # cjson encodes an empty Lua table as {}, not [].
    return [int(i) for i in raw] if isinstance(raw, list) else []


log = logging.getLogger("operations")


def operation_fields(op: OperationRecord, **more: Any) -> dict[str, Any]:
    """The ids a log line about an operation carries (see shared/logs.py)."""
    fields = {"operation_id": op.id, "type": op.type, "account": op.account,
              "server_id": op.server_id, "snapshot_id": op.snapshot_id, **more}
    return {k: v for k, v in fields.items() if v is not None}


class Store(StoreReads):
    def _transition(self, name: str, op_id: int, ends: str, *args: Any) -> dict[str, Any]:
        """A worker's transition of operation ``op_id`` into status ``ends``. Refused on a
        retry that found the operation already there: the first try applied before its
        answer was lost (the script's status guard refused the second), so it is done."""
        attempt = Attempt()
        answer: dict[str, Any] = msgspec.json.decode(
            self._run(name, op_id, *args, attempt=attempt))
        if not answer.get("ok") and attempt.retried:
            status = self._patient(self.redis.hget, keys.operation(op_id), "status")
            if status is not None and text(status) == ends:
                log.info("operation %d: %s had applied before Redis went away", op_id, name)
                return {"ok": True}
        return answer

    # ------------------------------------------------------------ API-side transitions
    # (the HTTP API uses AsyncStore; these let tools and tests drive the same scripts)

    def create_server(self, body: ServerCreate, status: str = "running") -> int:
        answer = result(self._run("create_server", create_server_arg(body, status)))
        return int(answer["server_id"])

    def _started(self, name: str, payload: bytes, idem: IdemClaim | None) -> dict[str, Any]:
        """As AsyncStore._started: the answer committed under ``idem``'s key, if any."""
        if idem is not None and idem.answer is not None:
            return result(idem.answer)
        return result(self._run(name, payload))

    def create_snapshot(
        self, *, account: str | None, body: SnapshotCreate, idem: IdemClaim | None = None
    ) -> tuple[int, int]:
        """(snapshot_id, operation_id); raises TransitionRefused like the API's call."""
        payload = create_snapshot_arg(account, body, self.settings.max_per_server, idem)
        answer = self._started("create_snapshot", payload, idem)
        return int(answer["snapshot_id"]), int(answer["operation_id"])

    def start_restore(
        self,
        *,
        account: str | None,
        snapshot_id: int,
        start_after: bool | None = None,
        target_id: int | None = None,
        safety: bool = False,
        idem: IdemClaim | None = None,
    ) -> int:
        payload = start_restore_arg(account, snapshot_id, start_after, target_id, safety,
                                    self.settings.max_per_server, idem)
        return int(self._started("start_restore", payload, idem)["operation_id"])

    def delete_snapshot(self, *, account: str | None, snapshot_id: int) -> int:
        payload = delete_snapshot_arg(account, snapshot_id, self.settings.deletes_anywhere)
        return int(result(self._run("delete_snapshot", payload))["operation_id"])

    def update_snapshot(
        self, *, account: str | None, snapshot_id: int, body: SnapshotUpdate
    ) -> None:
        result(self._run("update_snapshot", update_snapshot_arg(account, snapshot_id, body)))

    # ------------------------------------------------------------ worker-side transitions

    def begin_operation(self, op_id: int) -> OperationRecord | None:
        """queued|running → running. None when the operation is finished (or unknown)."""
        if not ok(self._run("begin_operation", op_id)):
            return None
        return self._running(self.get_operation(op_id))

    @staticmethod
    def _running(op: OperationRecord | None) -> OperationRecord | None:
        if op is not None:
            log.info("operation %d running: %s, attempt %d", op.id, op.type, op.attempts,
                     extra=operation_fields(op, status="running", attempt=op.attempts))
        return op

    def _ended(self, op_id: int, done: bool, status: str) -> bool:
        """One line and the fleet's counters for an operation this call ended."""
        if not done:
            return False
        op = self.get_operation(op_id)
        if op is None:
            return True
        seconds = None
        if op.started_at is not None and op.finished_at is not None:
            seconds = float(op.finished_at - op.started_at)
        error = f" ({op.error.code}: {op.error.message})" if op.error is not None else ""
        log.log(logging.WARNING if status == "failed" else logging.INFO,
                "operation %d %s: %s%s", op.id, status, op.type, error,
                extra=operation_fields(op, status=status, duration_s=seconds,
                                       error_code=op.error.code if op.error else None))
        try:
            metrics.record_operation(self.redis, op.type, status, seconds)
        except redis.RedisError as exc:  # best effort: the transition is what counts
            log.warning("operation %d: metrics not recorded (%s)", op.id, exc)
        return True

    def report_progress(self, op_id: int, progress: int) -> None:
        """One try: a progress update met by an outage is dropped (the next one says more),
        so a capture never waits on Redis."""
        self._scripts["report_progress"](args=[op_id, int(progress)])

    def complete_create(self, op_id: int, size_mb: float, warnings: list[str]) -> bool:
        return self.complete_scheduled(op_id, size_mb, warnings, []) is not None

    def complete_scheduled(
        self, op_id: int, size_mb: float, warnings: list[str], drop: list[int]
    ) -> list[int] | None:
        """complete_create that also drops what a scheduled snapshot's retention lets go;
        answers the delete operations it queued (None: the operation was not active)."""
        size = f"{round(max(size_mb, 0.0), 2):.2f}"
        answer = self._transition(
            "complete_create", op_id, "succeeded", size, msgspec.json.encode(list(warnings)),
            msgspec.json.encode(drop), "1" if self.settings.deletes_anywhere else "0",
        )
        if not answer.get("ok"):
            return None
        self._ended(op_id, True, "succeeded")
        return _ids(answer.get("delete_operation_ids"))

    def complete_restore(self, op_id: int, server_status: str) -> bool:
        if server_status not in ("running", "stopped"):
            raise ValueError(f"server_status must be running or stopped, not {server_status!r}")
        answer = self._transition("complete_restore", op_id, "succeeded", server_status)
        return self._ended(op_id, bool(answer.get("ok")), "succeeded")

    def complete_delete(self, op_id: int) -> bool:
        answer = self._transition("complete_delete", op_id, "succeeded")
        return self._ended(op_id, bool(answer.get("ok")), "succeeded")

    def fail_operation(
        self,
        op_id: int,
        code: str,
        message: str,
        server_status: str | None = None,
        *,
        started_before: int | None = None,
        power_settled: bool = False,
    ) -> bool:
        """Ends an active operation as failed; with ``started_before`` (epoch s) only if it
        started (or, never started, was created) at or before then: the reaper's deadline.
        ``power_settled``: the failing job put the power back itself (a restore's, or a
        stop_server capture's start): its power hold ends, and none is taken for it."""
        if server_status not in (None, "running", "stopped"):
            raise ValueError(f"server_status must be running, stopped or None: {server_status!r}")
        guard = "" if started_before is None else str(int(started_before))
        answer = self._transition("fail_operation", op_id, "failed", code, message,
                                  server_status or "", guard, "1" if power_settled else "")
        return self._ended(op_id, bool(answer.get("ok")), "failed")

    def complete_safety(self, op_id: int, size_mb: float, warnings: list[str]) -> bool:
        """A restore's safety snapshot is committed: it becomes available."""
        size = f"{round(max(size_mb, 0.0), 2):.2f}"
        return ok(self._run("complete_safety", op_id, size, msgspec.json.encode(warnings)))

    # Hooks' bookkeeping on the operation: plain fields (no status), written by the one
    # worker thread that holds the operation's lease.

    def add_hook_run(self, op_id: int, run: HookRun) -> None:
        key = keys.operation(op_id)
        raw = self._patient(self.redis.hget, key, "hooks")
        runs: list[Any] = msgspec.json.decode(text(raw)) if raw else []
        runs.append(msgspec.to_builtins(run))
        self._patient(self.redis.hset, key, "hooks", msgspec.json.encode(runs[-HOOK_RUNS_KEPT:]))

    def set_hook_pending(self, op_id: int, pending: bool) -> None:
        if pending:
            self._patient(self.redis.hset, keys.operation(op_id), "hook_pending", 1)
        else:
            self._patient(self.redis.hdel, keys.operation(op_id), "hook_pending")

    def set_server_power(self, server_id: int, status: str, held_by: int | None = None) -> None:
        """``held_by``: the operation whose power hold (hold_server_power) this ends."""
        if status not in ("running", "stopped"):
            raise ValueError(f"status must be running or stopped, not {status!r}")
        self._run("set_server_power", server_id, status, "" if held_by is None else held_by)

    def hold_server_power(self, server_id: int, op_id: int, seconds: int) -> bool:
        """Whether operation ``op_id`` may put the server's power back now (no other
        operation holds the server); then nothing starts on it for ``seconds`` or until
        set_server_power(held_by=op_id). See hold_server_power.lua."""
        return ok(self._run("hold_server_power", server_id, op_id, seconds))

    def end_power_hold(self, server_id: int, op_id: int) -> None:
        """Ends operation ``op_id``'s power hold on the server (if it still has it) without
        saying anything of its power (set_server_power does both)."""
        self._run("end_power_hold", server_id, op_id)

    # ------------------------------------------------------------ schedules

    def set_schedule(
        self, *, account: str | None, server_id: int, body: ScheduleSet, next_at: int
    ) -> None:
        result(self._run("set_schedule", set_schedule_arg(account, server_id, body, next_at)))

    def run_schedule(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One slot's claim and run; see run_schedule.lua. Answers its JSON (ok false:
        'claimed' or 'gone', nothing done)."""
        anywhere = True if self.settings.deletes_anywhere else None  # where deletes run
        answer: dict[str, Any] = msgspec.json.decode(
            self._run("run_schedule", arg({**payload, "anywhere": anywhere})))
        if answer.get("ok"):
            answer["delete_operation_ids"] = _ids(answer.get("delete_operation_ids"))
        return answer

    # ------------------------------------------------------------ leases, reaper, catalog

    def claim_operation(
        self,
        op_id: int,
        owner: str,
        owner_process: str,
        heartbeats_key: str,
        timeout_ms: int,
        host: str = DEFAULT_HOST,
    ) -> tuple[str, OperationRecord | None]:
        """begin_operation with a lease held by ``owner`` while ``owner_process`` heartbeats,
        for a worker of ``host``.

        Answers ("ok", record), or (code, None) with code "busy" (a live worker runs it),
        "terminal" (already finished), "wrong_host" (it runs on another host; nothing
        changed) or "not_found".
        """
        # A claim id of its own, so a claim retried after it applied changes nothing.
        answer: dict[str, Any] = msgspec.json.decode(self._run(
            "claim_operation", op_id, owner, owner_process, heartbeats_key, int(timeout_ms),
            host, secrets.token_hex(8),
        ))
        if not answer.get("ok"):
            return str(answer.get("code")), None
        return "ok", self._running(self.get_operation(op_id))

    def release_operation(self, op_id: int, owner: str) -> bool:
        """One try, not waited for: a job that stops (a shutdown: the platform kills the
        worker 30 s after SIGTERM) must not wait out an outage to give its lease back;
        unreleased, the lease goes stale with the worker and is taken over anyway."""
        raw = self._scripts["release_operation"](args=[op_id, owner])
        return bool(msgspec.json.decode(raw).get("released"))

    def mark_requeue(
        self, op_id: int, seconds: float, heartbeats_key: str, timeout_ms: int
    ) -> tuple[str, str] | None:
        """(type, host) of the operation when this caller should send its message again
        (to that host's queue), else None."""
        answer: dict[str, Any] = msgspec.json.decode(self._run(
            "mark_requeue", op_id, int(seconds), heartbeats_key, int(timeout_ms)
        ))
        return (str(answer["type"]), str(answer["host"])) if answer.get("ok") else None

    def note_server_stopped(self, op_id: int, start_hold_s: int) -> None:
        """A create job stopped the server (``stop_server``): a plain field, not a status,
        that lets a retry after a kill start the server again; and how long its start may
        take, for which a delete or the reaper ending the operation holds the server
        (_lib.lua hold_for_owed_work). Cleared by set_server_power(held_by=op_id)."""
        fields: list[str | int] = ["server_stopped", 1, "start_hold_s", int(start_hold_s)]
        self.patience.call("hset", lambda: self.redis.hset(keys.operation(op_id), items=fields))

    def rebuild_snapshot(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Puts back one committed snapshot (and its server if missing); see the script."""
        return result(self._run("rebuild_snapshot", arg(payload)))

