"""The Redis key layout of the state store, in one place (the Lua scripts follow it too).

- ``seq:{server,snapshot,operation,token}``: INCR counters for ids.
- ``server:{id}``, ``snapshot:{id}``, ``operation:{id}``: one hash per record.
- ``token:{sha256}``: token hash by digest; ``token_id:{id}`` → digest, for revoking;
  ``idx:tokens:{all|account:A}``: score = id, member = digest (listings).
- ``idx:{snapshots|operations}:{all|account:A|server:S}[:status:X]``: sorted sets,
  score = id, so a reverse range lists newest first. ``idx:servers:{all|account:A}``.
- ``ver:snapshots:{all|account:A}``: a counter every change to what a snapshot listing
  shows bumps (lua/_lib.lua snap_listing_changed), by which web processes keep pages.
- ``events``: the stream every transition appends to.
- ``schedules:due``: sorted set of servers with a schedule, score = its next slot (epoch s);
  the schedule itself is JSON in the server's hash (``schedule``, ``schedule_next``,
  ``schedule_rev``, ``last_run``), so it goes when the server goes.
"""

from __future__ import annotations

from typing import Final

EVENTS: Final = "events"
SCHEDULES_DUE: Final = "schedules:due"


def server(server_id: int) -> str:
    return f"server:{server_id}"


def snapshot(snapshot_id: int) -> str:
    return f"snapshot:{snapshot_id}"


def operation(operation_id: int) -> str:
    return f"operation:{operation_id}"


def token(digest: str) -> str:
    return f"token:{digest}"


def index(kind: str, account: str | None, server_id: int | None, status: str | None) -> str:
    """The sorted set for a listing; a server filter is narrower than an account one."""
    if server_id is not None:
        base = f"idx:{kind}:server:{server_id}"
    elif account is not None:
        base = f"idx:{kind}:account:{account}"
    else:
        base = f"idx:{kind}:all"
    return base if status is None else f"{base}:status:{status}"


def snapshot_listing_version(account: str | None) -> str:
    """The counter of changes to an account's snapshot listings (None: every account's)."""
    return f"ver:snapshots:account:{account}" if account is not None else "ver:snapshots:all"
