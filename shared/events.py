"""The public events: what the Lua scripts append to the ``events`` stream, as callers see it.

Every status change appends one entry to the Redis stream ``events`` inside the same
script that makes the change, so an event exists exactly when its transition happened.
The entry's stream id (``<ms>-<seq>``) is the event's id: the SSE ``id:`` line, the
``Last-Event-ID`` a client resumes from, and the ``id`` of a webhook delivery.

The stream also carries internal entries (``operation.started``, ``server.power``,
``snapshot.reclaimed``, ...); only ``PUBLIC_TYPES`` leave the service.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

import msgspec

from shared import keys
from shared.schemas import rfc3339

EventType = Literal[
    "snapshot.created",
    "snapshot.progress",
    "snapshot.available",
    "snapshot.failed",
    "snapshot.deleted",
    "snapshot.updated",
    "restore.started",
    "restore.progress",
    "restore.succeeded",
    "restore.failed",
    "schedule.run",
    "schedule.failed",
    "clone.started",
    "clone.succeeded",
    "clone.failed",
]
PUBLIC_TYPES: Final[frozenset[str]] = frozenset(EventType.__args__)  # type: ignore[attr-defined]

# Events after which an operation is over, for clients that wait on one (snapctl --wait).
TERMINAL_TYPES: Final = frozenset(
    {"snapshot.available", "snapshot.failed", "snapshot.deleted",
     "restore.succeeded", "restore.failed"}
)

STREAM: Final = keys.EVENTS
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

# Internal: revoke_token.lua appends it (data: {"sha": <token digest>}) so that every web
# process forgets the token at once and ends its event streams.
TOKEN_REVOKED: Final = "token.revoked"


class Event(msgspec.Struct):
    """One event, as the SSE ``data:`` line and a webhook's POST body carry it."""

    id: str
    type: EventType
    account: str
    server_id: int | None
    snapshot_id: int | None
    operation_id: int | None
    created_at: str
    data: dict[str, Any]


# Both parts of a Redis stream id are unsigned 64-bit: an id past that is no id at all.
_STREAM_ID_MAX = 2**64 - 1


def valid_stream_id(raw: str) -> bool:
    if not _STREAM_ID.match(raw):
        return False
    ms, _, seq = raw.partition("-")
    return int(ms) <= _STREAM_ID_MAX and int(seq) <= _STREAM_ID_MAX


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


def from_entry(entry_id: str, fields: dict[str, str]) -> Event | None:
    """The public event of a stream entry; None for internal or malformed entries."""
    etype = fields.get("type", "")
    if etype not in PUBLIC_TYPES:
        return None
    try:
        data = msgspec.json.decode(fields.get("data") or "{}")
    except msgspec.DecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    at = fields.get("at", "")
    return Event(
        id=entry_id,
        type=etype,  # type: ignore[arg-type]
        account=fields.get("account", ""),
        server_id=_int_or_none(fields.get("server_id")),
        snapshot_id=_int_or_none(fields.get("snapshot_id")),
        operation_id=_int_or_none(fields.get("operation_id")),
        created_at=(rfc3339(int(at)) or "") if at.isdigit() else "",
        data=data,
    )


def revoked_digest(fields: dict[str, str]) -> str | None:
    """The token digest of a ``token.revoked`` entry; None for any other entry."""
    if fields.get("type") != TOKEN_REVOKED:
        return None
    try:
        data = msgspec.json.decode(fields.get("data") or "{}")
    except msgspec.DecodeError:
        return None
    sha = data.get("sha") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) and sha else None


def visible(event: Event, account: str | None, server_id: int | None) -> bool:
    """Whether a caller sees an event: ``account`` None is an admin (every account)."""
    if account is not None and event.account != account:
        return False
    return server_id is None or event.server_id == server_id


_encode = msgspec.json.Encoder().encode


def encode(event: Event) -> bytes:
    return _encode(event)


def sse_frame(event: Event) -> bytes:
    """One Server-Sent Events message (the JSON has no newlines, so one data line)."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event.id.encode(), event.type.encode(), _encode(event)
    )
