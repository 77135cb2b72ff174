"""Snapshot engine: exact, deduplicated capture and restore of a server's state.

Modules (restic's split): model (public types, errors), backend (object store; LocalBackend
for file://), repository (keyed BLAKE3 ids, zstd, verify-on-read, manifests, commit
barrier), manifest (msgpack+zstd format with a cheap header), locks (capture/restore vs
reclaim), chunker (FastCDC over data extents), archiver (directory capture), procpool and
procworker (capture worker processes), restorer (staged, atomic directory restore),
packcache and blocks (small files read back out of tiny packs, compressed in 1 MiB blocks),
statecache (trusted record that lets restore skip re-reading files), image (block images
with a redo journal), progress, fsutil (symlink-safe fd helpers), engine (the facade).
"""

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
