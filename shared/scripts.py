"""The Lua transition scripts and the small codec both store facades share.

Each script is ``lua/_lib.lua`` followed by ``lua/<name>.lua``; scripts answer a JSON
object ``{"ok": true, ...}`` or ``{"ok": false, "code", "message"}``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
from msgspec import UNSET

from shared.records import R, decode_record
from shared.schemas import ScheduleSet, ServerCreate, SnapshotCreate, SnapshotUpdate

LUA_DIR = Path(__file__).with_name("lua")

SCRIPT_NAMES = (
    "create_snapshot",
    "start_restore",
    "delete_snapshot",
    "update_snapshot",
    "create_server",
    "delete_server",
    "create_token",
    "revoke_token",
    "host_counts",
    "begin_operation",
    "report_progress",
    "complete_create",
    "complete_restore",
    "complete_delete",
    "fail_operation",
    "set_server_power",
    "hold_server_power",
    "end_power_hold",
    "claim_operation",
    "release_operation",
    "mark_requeue",
    "rebuild_snapshot",
    "list_page",
    "set_schedule",
    "delete_schedule",
    "run_schedule",
    "complete_safety",
    "settle_idempotency",
)


class TransitionRefused(Exception):
    """A script refused a transition; ``code`` is the SPEC error code (or an internal one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@cache
def script_sources() -> dict[str, str]:
    lib = (LUA_DIR / "_lib.lua").read_text()
    return {name: lib + (LUA_DIR / f"{name}.lua").read_text() for name in SCRIPT_NAMES}


def result(raw: str | bytes) -> dict[str, Any]:
    """The answer of a transition script; raises TransitionRefused when it said no."""
    answer: dict[str, Any] = msgspec.json.decode(raw)
    if not answer.get("ok"):
        raise TransitionRefused(str(answer.get("code")), str(answer.get("message")))
    return answer


def ok(raw: str | bytes) -> bool:
    """For worker transitions that answer True/False rather than raise."""
    answer: dict[str, Any] = msgspec.json.decode(raw)
    return bool(answer.get("ok"))


def arg(payload: dict[str, Any]) -> bytes:
    """Script arguments as one JSON object; None values are left out (nil in Lua)."""
    return msgspec.json.encode({k: v for k, v in payload.items() if v is not None})


class IdemClaim(msgspec.Struct, frozen=True):
    """A request's claim on an Idempotency-Key (api/idempotency.py), which the create and
    restore scripts run under: each checks that the key still holds ``claim`` and records
    its answer under ``key`` itself (_lib.lua idem_ok). ``answer``: the answer a script
    already committed under the key, for a retry of a request that died after it."""

    key: str
    claim: str
    fingerprint: str
    ttl: int
    answer: str | None = None

    def arg(self) -> dict[str, Any]:
        return {"idem_key": self.key, "idem_claim": self.claim,
                "idem_fingerprint": self.fingerprint, "idem_ttl": self.ttl}


# The API-side transitions' arguments, built once for both stores (Store and AsyncStore
# take the same keyword-only parameters; ``account`` None means an admin across accounts).


def create_snapshot_arg(account: str | None, body: SnapshotCreate, max_per_server: int,
                        idem: IdemClaim | None = None) -> bytes:
    return arg({
        **(idem.arg() if idem else {}),
        "server_id": str(body.server_id),
        "account": account,
        "name": body.name,
        "description": body.description,
        "stop_server": body.stop_server,
        "max": max_per_server,
    })


def start_restore_arg(
    account: str | None,
    snapshot_id: int,
    start_after: bool | None,
    target_id: int | None,
    safety: bool,
    max_per_server: int,
    idem: IdemClaim | None = None,
) -> bytes:
    return arg({
        **(idem.arg() if idem else {}),
        "snapshot_id": str(snapshot_id), "account": account, "start_after": start_after,
        "target_id": None if target_id is None else str(target_id), "safety": safety,
        "safety_name": f"safety copy before the restore of snapshot {snapshot_id}",
        "max": max_per_server,
    })


def delete_snapshot_arg(account: str | None, snapshot_id: int, anywhere: bool) -> bytes:
    """``anywhere``: Settings.deletes_anywhere (the delete may run on any host)."""
    return arg({"snapshot_id": str(snapshot_id), "account": account,
                "anywhere": True if anywhere else None})


def create_server_arg(body: ServerCreate, status: str) -> bytes:
    return arg({
        "name": body.name,
        "account": body.account,
        "state": msgspec.json.encode(body.state).decode(),
        "power": msgspec.json.encode(body.power).decode(),
        "host": body.host,
        "status": status,
        "hooks": None if body.hooks is None else msgspec.json.encode(body.hooks).decode(),
    })


def update_snapshot_arg(account: str | None, snapshot_id: int, body: SnapshotUpdate) -> bytes:
    """update_snapshot's argument: only the fields the PATCH body names."""
    payload: dict[str, Any] = {"snapshot_id": str(snapshot_id), "account": account}
    if body.name is not UNSET:
        payload["name"] = body.name
    if body.description is None:
        payload["clear_description"] = True
    elif body.description is not UNSET:
        payload["description"] = body.description
    if body.protected is not UNSET:
        payload["protected"] = body.protected
    return arg(payload)


def set_schedule_arg(account: str | None, server_id: int, body: ScheduleSet, next_at: int) -> bytes:
    """set_schedule's argument: the schedule and its first slot."""
    return arg({
        "server_id": str(server_id), "account": account, "cron": body.cron,
        "timezone": body.timezone, "retention": msgspec.to_builtins(body.retention),
        "stop_server": body.stop_server, "next": next_at,
    })


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_dict(raw: Any) -> dict[str, Any]:
    """An HGETALL answer (a dict or, from Lua, a flat list; str or bytes) as a str dict."""
    if isinstance(raw, dict):
        if raw and isinstance(next(iter(raw)), bytes):
            return {text(k): text(v) for k, v in raw.items()}
        return raw
    if raw and isinstance(raw[0], bytes):
        raw = [text(v) for v in raw]
    it = iter(raw)
    return dict(zip(it, it, strict=True))


T = TypeVar("T")


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    total: int
    next_cursor: int | None


class PageIndex(msgspec.Struct):
    """A page as the list_page script answers it, newest first: each record's index member
    (its id; a token's digest) and its hash's ``rev`` ('' when it has none), and the
    listing version it was read at ('' when the listing has none). ``unchanged``: the
    version is the one the caller named, and the script answered nothing else."""

    members: list[str]
    revs: list[str]
    total: int
    next_cursor: int | None
    version: str = ""
    unchanged: bool = False


Command = tuple[str | int, ...]


def page_index(raw: list[Any]) -> PageIndex:
    """The list_page script's answer: ``[total, next cursor or '', version, member, rev,
    ...]``, or ``[-1, '', version]`` for a listing unchanged since that version."""
    nxt, version = text(raw[1]), text(raw[2])
    if int(raw[0]) < 0:
        return PageIndex(members=[], revs=[], total=0, next_cursor=None, version=version,
                         unchanged=True)
    flat = raw[3:]
    if flat and not isinstance(flat[0], str):  # a client without decode_responses
        flat = [text(v) for v in flat]
    return PageIndex(members=flat[0::2], revs=flat[1::2], total=int(raw[0]),
                     next_cursor=int(float(nxt)) if nxt else None, version=version)


def hash_commands(prefix: str, members: list[str]) -> list[Command]:
    """The second read of a page: HGETALL of each member's hash, pipelined."""
    return [("HGETALL", prefix + m) for m in members]


def row_fields(row: list[str]) -> dict[str, str]:
    """A hash as Redis sends it (``[field, value, ...]``) as a dict."""
    it = iter(row)
    return dict(zip(it, it, strict=True))


def decoded_page(index: PageIndex, rows: list[list[str]], cls: type[R]) -> Page[R]:
    """The page's records; a hash gone between the two reads is left out."""
    items = [r for r in (decode_record(row_fields(row), cls) for row in rows) if r is not None]
    return Page(items=items, total=index.total, next_cursor=index.next_cursor)
