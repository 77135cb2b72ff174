"""Request bodies of the HTTP API (SPEC section 2) and the types its responses share
(shared/responses.py), each defined once.

The API decodes requests and encodes responses with these types, and the OpenAPI
document is generated from them, so the contract and the code cannot drift apart.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from shared import cron as cronexpr
from shared.hosts import DEFAULT_HOST, HOST_PATTERN

PositiveInt = Annotated[int, Meta(ge=1, le=2**53 - 1)]
HostName = Annotated[str, Meta(min_length=1, max_length=255, pattern=HOST_PATTERN)]
SnapshotStatus = Literal["in_progress", "available", "failed"]
# Who made a snapshot: a caller (manual), a schedule's run, or a restore's safety capture.
SnapshotOrigin = Literal["manual", "schedule", "safety"]
OperationType = Literal["snapshot.create", "snapshot.restore", "snapshot.delete"]
OperationStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ServerStatus = Literal["running", "stopped", "restoring"]
# What a token may do; each scope allows what the ones before it allow.
TokenScope = Literal["read", "write", "admin"]

CREATE_MESSAGE = "Snapshot is being created. This may take 3-10 minutes depending on server size."
RESTORE_MESSAGE = "Server is being restored from snapshot. This may take 5-15 minutes."


@lru_cache(maxsize=8192)
def _format_time(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def rfc3339(ts: int | None) -> str | None:
    """Epoch seconds → RFC 3339 UTC with Z, to the second (the SPEC's only time format).

    Cached: strftime is one of the larger costs of a GET, and the same few times repeat.
    """
    if ts is None:
        return None
    return _format_time(ts)


def _printable(field: str, value: str, allow_newlines: bool = False) -> None:
    # isprintable() rejects control characters, NUL and lone surrogates, which would
    # otherwise reach Redis, logs and terminals of the people reading listings.
    text = value.replace("\n", "").replace("\r", "").replace("\t", "") if allow_newlines else value
    if not text.isprintable():
        raise ValueError(f"{field}: must contain only printable characters")


# ---------------------------------------------------------------- requests


SnapshotName = Annotated[str, Meta(min_length=1, max_length=255)]
SnapshotDescription = Annotated[str, Meta(max_length=1000)]


class SnapshotCreate(Struct, forbid_unknown_fields=True):
    server_id: PositiveInt
    name: SnapshotName
    description: SnapshotDescription | None = None
    stop_server: bool = False

    def __post_init__(self) -> None:
        _printable("name", self.name)
        if not self.name.strip():
            raise ValueError("name: must not be blank")
        if self.description is not None:
            _printable("description", self.description, allow_newlines=True)


class SnapshotUpdate(Struct, forbid_unknown_fields=True):
    """PATCH body: any of the three; ``description: null`` clears the description."""

    name: SnapshotName | UnsetType = UNSET
    description: SnapshotDescription | UnsetType | None = UNSET
    protected: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.name is UNSET and self.description is UNSET and self.protected is UNSET:
            raise ValueError("body: give at least one of name, description, protected")
        if isinstance(self.name, str):
            _printable("name", self.name)
            if not self.name.strip():
                raise ValueError("name: must not be blank")
        if isinstance(self.description, str):
            _printable("description", self.description, allow_newlines=True)


class RestoreRequest(Struct, forbid_unknown_fields=True):
    start_after: bool | None = None
    # Another server of the caller's, same state kind: restore into it (a clone).
    server_id: PositiveInt | None = None
    # First capture the target's current state as a snapshot with origin "safety".
    safety_snapshot: bool = False


class ServerState(Struct, forbid_unknown_fields=True):
    kind: Literal["directory", "image"]
    path: Annotated[str, Meta(min_length=2, max_length=4096)]

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("state.path: must be an absolute path")
        _printable("state.path", self.path)


class PowerNone(Struct, forbid_unknown_fields=True, tag_field="kind", tag="none"):
    pass


Command = Annotated[str, Meta(min_length=1, max_length=4096)]


def _no_nul(field: str, command: str | None) -> None:
    # A shell command may hold newlines and tabs, never NUL: the worker's exec refuses it
    # (ValueError, not an OSError), so every stop, start or hook of the server raised.
    # Checked where a server is made (ServerCreate), not when its record is read.
    if command is not None and "\x00" in command:
        raise ValueError(f"{field}: must not contain NUL characters")


class PowerCommand(Struct, forbid_unknown_fields=True, tag_field="kind", tag="command"):
    stop: Command
    start: Command
    status: Command


class PowerSystemd(Struct, forbid_unknown_fields=True, tag_field="kind", tag="systemd"):
    unit: Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9:_.@\\-]+$")]


Power = PowerNone | PowerCommand | PowerSystemd


class Hooks(Struct, forbid_unknown_fields=True):
    """Commands run on the server's host around every capture (inside a stop_server stop)."""

    pre_snapshot: Command | None = None
    post_snapshot: Command | None = None
    timeout: Annotated[int, Meta(ge=1, le=3600)] = 60
AccountName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class ServerCreate(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=255)]
    account: AccountName
    state: ServerState
    power: Power = msgspec.field(default_factory=PowerNone)
    host: HostName = DEFAULT_HOST
    hooks: Hooks | None = None

    def __post_init__(self) -> None:
        _printable("name", self.name)
        _normal_path("state.path", self.state.path)
        if isinstance(self.power, PowerCommand):
            for verb in ("stop", "start", "status"):
                _no_nul(f"power.{verb}", getattr(self.power, verb))
        if self.hooks is not None:
            _no_nul("hooks.pre_snapshot", self.hooks.pre_snapshot)
            _no_nul("hooks.post_snapshot", self.hooks.post_snapshot)


def _normal_path(field: str, path: str) -> None:
    """A path that names its directory or file directly: "//" is the root itself (POSIX
    keeps two leading slashes through normpath, so it passed every later check and a
    capture took the whole machine), and "/srv/web-01/.." is /srv with every other
    server's state. Checked where a server is made, not when its record is read."""
    parts = path.rstrip("/").split("/")[1:]
    if path.startswith("//") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"{field}: must be a normal absolute path, without '.', '..' or '//' "
            "(like /srv/web-01)"
        )


KeepCount = Annotated[int, Meta(ge=0, le=10_000)]


class Retention(Struct, forbid_unknown_fields=True):
    """restic's ``forget --keep-last/-hourly/-daily/-weekly/-monthly``, in the schedule's
    zone; their sum is at least 1 and at most the per-server limit (checked by the API)."""

    last: KeepCount = 0
    hourly: KeepCount = 0
    daily: KeepCount = 0
    weekly: KeepCount = 0
    monthly: KeepCount = 0

    def total(self) -> int:
        return self.last + self.hourly + self.daily + self.weekly + self.monthly


class ScheduleSet(Struct, forbid_unknown_fields=True):
    """PUT /servers/{id}/schedule/."""

    cron: Annotated[str, Meta(min_length=1, max_length=255)]
    retention: Retention
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] = cronexpr.DEFAULT_ZONE
    stop_server: bool = False

    def __post_init__(self) -> None:
        cronexpr.check(self.cron)
        cronexpr.check_zone(self.timezone)
        if self.retention.total() < 1:
            raise ValueError("retention: the counts must add up to at least 1")


class TokenCreate(Struct, forbid_unknown_fields=True):
    account: AccountName
    scope: TokenScope
