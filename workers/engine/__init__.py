"""Snapshot engine: exact, deduplicated capture and restore of a server's state.

Packages by concept (restic's `internal/` split); data flows down, never up:

    forked.py           ForkingEngine: a worker's engine, each capture and restore forked
      |
    engine.py           Engine: the facade (capture, restore, verify, delete, reclaim, recover)
      |
      +-- capture/      directory capture: archiver, reader worker processes
      +-- restore/      directory restore: patch or rebuild, tree writer, patch journal,
      |                 recovery, writer worker processes
      +-- image/        block images: capture, restore through a redo journal
      |       (these three never import each other)
      v
    blocks/             fixed blocks read, stored, fetched, written on every core (images
      v                 and the big files of directory states)
    repository/         chunk ids, compression, manifests, packs, backend, locks, chunker
      v
    fs/   workerproc/   filesystem primitives  |  worker processes: start, child side, frames
      v
    progress.py         the engine's byte meter and stop flag (Progress)
    model.py  tuning.py public types and errors  |  every threshold and tuning constant

Each package's __init__ names its modules. The rule is checked by import-linter in
`make lint` (pyproject.toml, [tool.importlinter]). Package __init__ files import nothing,
so each operation loads only the modules it uses.
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
    StateFull,
    StateInvalid,
    StateSpec,
    StorageFull,
    StorageOptions,
    StorageUnavailable,
    TransientEngineError,
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
    "StateFull",
    "StateInvalid",
    "StateSpec",
    "StorageFull",
    "StorageOptions",
    "StorageUnavailable",
    "TransientEngineError",
    "VerifyReport",
]
