"""Response bodies of the HTTP API (SPEC section 2), each defined once; the requests and
the types both share are in shared/schemas.py.

The API encodes responses with these types, and the OpenAPI document is generated from
them, so the contract and the code cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import UNSET, Struct, UnsetType

from shared.schemas import (
    Hooks,
    OperationStatus,
    OperationType,
    Power,
    Retention,
    ServerState,
    ServerStatus,
    SnapshotOrigin,
    SnapshotStatus,
    TokenScope,
)


class ErrorInfo(Struct):
    code: str
    message: str


class ErrorBody(Struct, omit_defaults=True):
    code: str
    message: str
    details: dict[str, Any] | UnsetType = UNSET


class ErrorEnvelope(Struct):
    error: ErrorBody


class ServerRef(Struct):
    id: int
    name: str


class Snapshot(Struct):
    id: int
    server: ServerRef
    name: str
    description: str | None
    status: SnapshotStatus
    size_mb: float | None
    progress: int
    created_at: str
    completed_at: str | None
    message: str
    error: ErrorInfo | None
    operation_id: int | None
    protected: bool = False
    origin: SnapshotOrigin = "manual"


class ListMeta(Struct):
    total: int


class ListLinks(Struct):
    next: str | None


class SnapshotList(Struct):
    snapshots: list[Snapshot]
    meta: ListMeta
    links: ListLinks


class RestoreSnapshotRef(Struct):
    id: int
    name: str
    created_at: str


class RestoreServerRef(Struct):
    id: int
    name: str
    status: ServerStatus


class RestoreAccepted(Struct):
    status: Literal["success"]
    message: str
    snapshot: RestoreSnapshotRef
    server: RestoreServerRef
    operation_id: int


class HookRun(Struct):
    hook: Literal["pre_snapshot", "post_snapshot"]
    exit_code: int | None
    timed_out: bool
    seconds: float
    output: str


class Operation(Struct):
    id: int
    type: OperationType
    status: OperationStatus
    progress: int
    snapshot_id: int | None
    server_id: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: ErrorInfo | None
    # The host whose workers run it (its server's host): an operation that stays queued
    # names the host that has no live worker (see GET /hosts/). null: any host's worker
    # runs it (a snapshot's deletion on s3://, where the repository is shared).
    host: str | None
    # A restore into another server (a clone): the snapshot's own server.
    source_server_id: int | None = None
    # A restore that first captured the target: that safety snapshot.
    safety_snapshot_id: int | None = None
    # The server's hooks as they ran for this capture (exit code, last 4 KiB of output).
    hooks: list[HookRun] | None = None


class OperationList(Struct):
    operations: list[Operation]
    meta: ListMeta
    links: ListLinks


class Server(Struct, omit_defaults=True):
    """A server as an account sees it; the admin-only fields are left out for others."""

    id: int
    name: str
    status: ServerStatus
    created_at: str
    account: str | UnsetType = UNSET
    state: ServerState | UnsetType = UNSET
    power: Power | UnsetType = UNSET
    host: str | UnsetType = UNSET
    hooks: Hooks | UnsetType | None = UNSET
    # Always present (null without a schedule); UNSET only so omit_defaults keeps a None.
    schedule: Schedule | UnsetType | None = UNSET


class LastRun(Struct):
    at: str
    status: Literal["succeeded", "failed"]
    snapshot_id: int | None
    error: ErrorInfo | None


class Schedule(Struct):
    server_id: int
    cron: str
    timezone: str
    retention: Retention
    stop_server: bool
    next_run_at: str | None
    last_run: LastRun | None
    created_at: str
    updated_at: str


class ServerList(Struct):
    servers: list[Server]
    meta: ListMeta
    links: ListLinks


class Token(Struct):
    id: int
    account: str
    scope: TokenScope
    token: str
    created_at: str


class TokenInfo(Struct):
    """A token as a listing shows it: never its value (only its hash is kept)."""

    id: int
    account: str
    scope: TokenScope
    created_at: str


class TokenList(Struct):
    tokens: list[TokenInfo]
    meta: ListMeta
    links: ListLinks


class Health(Struct):
    status: str


class Host(Struct):
    """A host of the fleet (GET /hosts/): its live worker processes, their newest heartbeat,
    its servers and the operations queued for it (a host with servers and no live worker
    keeps them queued until one comes back)."""

    name: str
    workers: int
    last_seen: str | None
    servers: int
    queued: int


class HostList(Struct):
    hosts: list[Host]


class Readiness(Struct):
    status: str
    redis: bool
    storage: bool
    storage_error: str | None = None  # why storage is not ready (names the bucket on s3://)
