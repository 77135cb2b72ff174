"""Capturing a server's state into a snapshot: the engine, between the server's hooks.

The create job and a restore's safety snapshot both capture through `Capturer`, so a
safety snapshot is made exactly like any other (same manifest header, same hooks, the
same incremental reuse of the server's previous snapshot).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from shared.records import ServerRecord, SnapshotRecord
from shared.schemas import rfc3339
from shared.store import Store
from workers.engine import (
    Cancelled,
    CaptureResult,
    Engine,
    EngineError,
    SnapshotMeta,
    StateSpec,
    TransientEngineError,
)
from workers.hooks import HookFailed, HookRunner
from workers.reporting import CancelCheck, ProgressReporter

MIB = 1024 * 1024


class SafetyFailed(Exception):
    """A restore's safety snapshot failed for good: the restore fails with its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def snapshot_meta(snap: SnapshotRecord, server: ServerRecord) -> SnapshotMeta:
    """The manifest's header: who the snapshot is of (the catalog rebuilds from it)."""
    return SnapshotMeta(
        snapshot_id=snap.id,
        server_id=server.id,
        server_name=server.name,
        account=server.account,
        name=snap.name,
        description=snap.description,
        created_at=rfc3339(snap.created_at) or "",
        server_spec={
            "state": msgspec.to_builtins(server.state),
            "power": msgspec.to_builtins(server.power),
            "host": server.host,
        },
    )


class Capturer:
    def __init__(self, engine: Engine, hooks: HookRunner) -> None:
        self.engine = engine
        self.hooks = hooks

    def capture(
        self,
        op_id: int,
        snap: SnapshotRecord,
        server: ServerRecord,
        progress: Callable[[int], None] | None,
        should_stop: Callable[[], bool],
    ) -> tuple[CaptureResult, list[str]]:
        """Captures ``server`` into ``snap`` (resuming a killed attempt): the result and its
        warnings (the engine's, and a failed post hook). Raises HookFailed when the pre
        hook fails, the engine's errors as they are."""
        warnings: list[str] = []
        state = StateSpec(kind=server.state.kind, path=server.state.path)
        with self.hooks.around(op_id, server, snap.id, warnings):
            result = self.engine.capture(
                snapshot_meta(snap, server),
                state,
                progress=None if progress is None else ProgressReporter(progress),
                should_stop=CancelCheck(should_stop),
            )
        return result, [*result.warnings, *warnings]

    def safety(self, store: Store, op_id: int, snap_id: int, server: ServerRecord,
               still_running: Callable[[], bool]) -> None:
        """A restore's safety snapshot: captures the server's current state (stopped, if it
        has a power driver), then makes it available; the restore goes on only after. Raises
        SafetyFailed (final), Cancelled (the restore ended meanwhile) or a transient error."""
        snap = store.get_snapshot(snap_id)
        if snap is None or snap.deleted or snap.status == "available":
            return  # an earlier attempt committed it (and its owner may have deleted it since)
        try:
            result, warnings = self.capture(op_id, snap, server, progress=None,
                                            should_stop=still_running)
        except (EngineError, HookFailed) as exc:
            if isinstance(exc, Cancelled | TransientEngineError):
                raise
            raise SafetyFailed(exc.code, "The safety snapshot could not be captured, so "
                               f"nothing was restored: {exc}") from exc
        if not store.complete_safety(op_id, round(result.size_bytes / MIB, 2), warnings):
            raise Cancelled("the restore ended while its safety snapshot was captured")
