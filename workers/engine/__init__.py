"""Snapshot engine: exact, deduplicated capture and restore of a server's state."""

from .engine import Engine
from .model import (
    Cancelled,
    CaptureResult,
    CommittedSnapshot,
    EngineError,
    ProgressFn,
    ReclaimStats,
    RestoreResult,
    SnapshotCorrupt,
    SnapshotMeta,
    SnapshotNotFound,
    StateInvalid,
    StateSpec,
    StorageFull,
    VerifyReport,
)

__all__ = [
    "Cancelled",
    "CaptureResult",
    "CommittedSnapshot",
    "Engine",
    "EngineError",
    "ProgressFn",
    "ReclaimStats",
    "RestoreResult",
    "SnapshotCorrupt",
    "SnapshotMeta",
    "SnapshotNotFound",
    "StateInvalid",
    "StateSpec",
    "StorageFull",
    "VerifyReport",
]
