"""Records as the state store keeps them (one Redis hash each).

Hash fields are strings, so records decode with ``msgspec.convert(..., strict=False)``;
nested values (state, power, error) are JSON strings inside the hash. Times are epoch
seconds (ints) here and become RFC 3339 only in responses.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from shared.schemas import (
    ErrorInfo,
    OperationStatus,
    OperationType,
    Power,
    PowerNone,
    ServerState,
    ServerStatus,
    SnapshotOrigin,
    SnapshotStatus,
    TokenScope,
)

# Fields stored as JSON text inside a hash.
JSON_FIELDS = ("error", "state", "power")


class SnapshotRecord(Struct, kw_only=True):
    id: int
    server_id: int
    server_name: str = ""
    account: str
    name: str
    description: str | None = None
    status: SnapshotStatus
    size_mb: float | None = None
    progress: int = 0
    created_at: int
    completed_at: int | None = None
    error: ErrorInfo | None = None
    operation_id: int | None = None
    deleted: bool = False
    # Id of the restore operation reading this snapshot, while one runs.
    in_use_by: int | None = None
    protected: bool = False
    origin: SnapshotOrigin = "manual"


class OperationRecord(Struct, kw_only=True):
    id: int
    type: OperationType
    status: OperationStatus
    progress: int = 0
    snapshot_id: int | None = None
    server_id: int
    account: str
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    start_after: bool | None = None
    stop_server: bool = False


class ServerRecord(Struct, kw_only=True):
    id: int
    name: str
    account: str
    status: ServerStatus
    state: ServerState
    power: Power = msgspec.field(default_factory=PowerNone)
    host: str = "default"
    created_at: int
    # Power status before a restore began, so a failed restore can put it back.
    prior_status: str | None = None
    active_op: int | None = None


class TokenRecord(Struct, kw_only=True):
    id: int
    account: str
    scope: TokenScope
    created_at: int


R = TypeVar("R", SnapshotRecord, OperationRecord, ServerRecord, TokenRecord)


def decode_record(fields: dict[str, Any], cls: type[R]) -> R | None:
    """A record from an HGETALL answer; None when the hash does not exist."""
    if not fields:
        return None
    for name in JSON_FIELDS:
        raw = fields.get(name)
        if isinstance(raw, str):
            fields[name] = msgspec.json.decode(raw)
    return msgspec.convert(fields, cls, strict=False)
