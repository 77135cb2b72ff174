"""Public value types and errors of the snapshot engine.

These are the names the API and the actors code against; keep them stable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import msgspec

ProgressFn = Callable[[int, int], None]  # (bytes_done, bytes_total)


class StateSpec(msgspec.Struct, frozen=True):
    kind: Literal["directory", "image"]
    path: str


class SnapshotMeta(msgspec.Struct, frozen=True):
    """Stored inside the manifest so the repository describes itself (catalog rebuild)."""

    snapshot_id: int
    server_id: int
    server_name: str
    account: str
    name: str
    description: str | None
    created_at: str  # RFC3339 'Z'
    # The server's state, power and host as the service registered them, so a catalog
    # rebuild brings the server back usable; the engine itself never reads it.
    server_spec: dict[str, Any] | None = None


class StorageOptions(msgspec.Struct, frozen=True):
    """How to reach an s3:// repository (file:// needs none) and the timings of the
    fleet-wide lock and reclaim protocol (repository/s3reclaim.py). The service fills it
    from its settings (AWS_* and SNAPSHOTS_* variables); the engine reads no environment."""

    endpoint: str | None = None  # AWS_ENDPOINT_URL; None: AWS itself
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None
    cache_dir: str | None = None  # this host's listing cache and per-state locks
    lock_settle: float = 5.0  # seconds a new lock waits before looking for the others
    lock_stale: float = 1800.0  # a lock not refreshed this long is dead (restic: 30 min)
    reclaim_margin: float = 3600.0  # nothing younger is deleted; condemn-to-sweep minimum


class CaptureResult(msgspec.Struct, frozen=True):
    snapshot_id: int
    size_bytes: int  # apparent size of all files / the image
    stored_bytes: int  # new bytes written to the repository by this capture (compressed)
    files: int
    warnings: list[str]
    completed_at: str


class RestoreResult(msgspec.Struct, frozen=True):
    snapshot_id: int
    bytes_written: int
    files_reused: int
    files_written: int


class VerifyReport(msgspec.Struct, frozen=True):
    snapshot_id: int
    ok: bool
    errors: list[str]


class ReclaimStats(msgspec.Struct, frozen=True):
    objects_removed: int
    bytes_removed: int
    skipped_locked: bool
    bytes_kept: int = 0  # the data objects left: the repository's size, less manifests


class CommittedSnapshot(msgspec.Struct, frozen=True):
    meta: SnapshotMeta
    state_kind: str
    size_bytes: int
    completed_at: str


class EngineError(Exception):
    """Base of the engine's errors. The subclasses below are final for the operation (each
    has its SPEC code); TransientEngineError says the same call may succeed if run again."""

    code: ClassVar[str] = "engine_error"


class TransientEngineError(EngineError):
    """Worth retrying as it is: a worker process died (a SIGTERM to the whole process group
    looks like that), another restore of the same state still runs, a manifest header could
    not be read (it may be written by a newer engine that another worker runs). A manifest
    whose tree fails treecheck.check_tree() is not: it never will pass (SnapshotCorrupt).
    The job layer (workers/jobs.py) lets the message be delivered again instead of failing
    the operation; after the last attempt the operation fails."""


class StorageUnavailable(TransientEngineError):
    """The object store cannot be used: wrong credentials, no such bucket, or down longer
    than the retry window (transient errors are retried until then). The message names
    the bucket. Transient: the job is delivered again (the store may be back by then)."""

    code: ClassVar[str] = "storage_unavailable"


class StorageFull(EngineError):
    """ENOSPC/EDQUOT while writing the repository; nothing was committed."""

    code: ClassVar[str] = "storage_full"


class StateFull(EngineError):
    """ENOSPC/EDQUOT on the server's state filesystem during a restore; the state is as it
    was before (the message names the free and the needed space)."""

    code: ClassVar[str] = "state_full"


class SnapshotCorrupt(EngineError):
    """A stored object fails its id check; the message names the snapshot and the object."""

    code: ClassVar[str] = "snapshot_corrupt"


class SnapshotNotFound(EngineError):
    code: ClassVar[str] = "snapshot_not_found"


class StateInvalid(EngineError):
    """The state path is missing, of the wrong kind, or unsafe."""

    code: ClassVar[str] = "state_invalid"


class Cancelled(EngineError):
    """should_stop() returned True."""

    code: ClassVar[str] = "cancelled"
