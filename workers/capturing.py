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
from workers.engine import CaptureResult, Engine, SnapshotMeta, StateSpec
from workers.hooks import HookRunner
from workers.reporting import CancelCheck, ProgressReporter


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
