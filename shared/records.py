"""Records as the state store keeps them (one Redis hash each).

Hash fields are strings, so records decode with ``msgspec.convert(..., strict=False)``;
nested values (state, power, error) are JSON strings inside the hash. Times are epoch
seconds (ints) here and become RFC 3339 only in responses.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec
from msgspec import Struct

from shared.hosts import DEFAULT_HOST
from shared.responses import ErrorInfo, HookRun
from shared.schemas import (
    Hooks,
    OperationStatus,
    OperationType,
    Power,
    PowerNone,
    Retention,
    ServerState,
    ServerStatus,
    SnapshotOrigin,
    SnapshotStatus,
    TokenScope,
)

# Fields stored as JSON text inside a hash.
JSON_FIELDS = ("error", "state", "power", "schedule", "last_run", "hooks")


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
    # A scheduled snapshot: when its run started (the scheduler's clock); retention's time.
    scheduled_at: int | None = None


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
    source_server_id: int | None = None
    safety_snapshot_id: int | None = None
    hooks: list[HookRun] | None = None
    # The host whose workers run it (set from its server when it is made).
    host: str = DEFAULT_HOST


class ScheduleRecord(Struct, kw_only=True):
    """A server's schedule, JSON inside the server's hash (so it goes with the server)."""

    cron: str
    timezone: str
    retention: Retention
    stop_server: bool = False
    created_at: int
    updated_at: int


class LastRunRecord(Struct, kw_only=True):
    at: int
    status: Literal["succeeded", "failed"]
    snapshot_id: int | None = None
    error: ErrorInfo | None = None


class ServerRecord(Struct, kw_only=True):
    id: int
    name: str
    account: str
    status: ServerStatus
    state: ServerState
    power: Power = msgspec.field(default_factory=PowerNone)
    host: str = DEFAULT_HOST
    hooks: Hooks | None = None
    created_at: int
    # Power status before a restore began, so a failed restore can put it back.
    prior_status: str | None = None
    active_op: int | None = None
    schedule: ScheduleRecord | None = None
    # Bumped by every PUT: a scheduler's claim names the revision it planned for.
    schedule_rev: int = 0
    # The slot the schedule runs at next (epoch s); the scheduler's compare-and-set field.
    schedule_next: int | None = None
    last_run: LastRunRecord | None = None


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
