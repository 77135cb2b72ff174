"""Catalog rebuild: the Redis catalog brought back from the repository.

    python -m workers.catalog rebuild [--servers servers.json]

The repository describes itself: every committed snapshot's manifest holds its meta
(snapshot and server ids, server name, account, name, description, created_at) and its
completion time and size. With Redis wiped (or a snapshot record lost), this puts back
every committed snapshot as ``available`` with its server, and raises the id counters
above the highest ids so new ones never collide. Records that exist are left as they are,
so running it twice (or on a healthy catalog) changes nothing.

A server that is missing comes back ``stopped``, power ``none``, with a placeholder state
path that the restore job refuses (the manifest does not hold the state path nor the power
driver). ``--servers`` gives them: a JSON object ``{"<server id>": {"state": {...},
"power": {...}, "host": "..."}}`` as in ``POST /servers/``.
"""

from __future__ import annotations

import argparse
import sys
from calendar import timegm
from dataclasses import dataclass
from pathlib import Path
from time import strptime
from typing import Any

import msgspec

from shared.settings import Settings
from shared.store import Store
from workers.capturing import MIB
from workers.engine import Engine, EngineError, VerifyReport
from workers.storage import open_engine

# Where catalog rebuild points a server whose state path it could not know; a restore into
# it is refused until an admin sets the real path.
PLACEHOLDER_PREFIX = "/.snapshots-rebuilt/"


@dataclass
class RebuildReport:
    snapshots: int = 0
    servers: int = 0
    kept: int = 0


def _epoch(rfc3339: str) -> int:
    return timegm(strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def rebuild(store: Store, engine: Engine, servers: dict[str, Any] | None = None) -> RebuildReport:
    report = RebuildReport()
    newest_specs: dict[int, dict[str, Any]] = {}
    created: set[int] = set()
    for snap in sorted(engine.list_snapshots(), key=lambda s: s.meta.snapshot_id):
        m = snap.meta
        answer = store.rebuild_snapshot(
            {
                "snapshot_id": m.snapshot_id,
                "server_id": m.server_id,
                "server_name": m.server_name,
                "account": m.account,
                "name": m.name,
                "description": m.description,
                "created_at": _epoch(m.created_at),
                "completed_at": _epoch(snap.completed_at),
                "size_mb": f"{round(snap.size_bytes / MIB, 2):.2f}",
                "state_kind": snap.state_kind,
                "placeholder_path": f"{PLACEHOLDER_PREFIX}server-{m.server_id}",
            }
        )
        report.snapshots += bool(answer.get("snapshot"))
        report.kept += not answer.get("snapshot")
        report.servers += bool(answer.get("server"))
        if answer.get("server"):
            created.add(m.server_id)
        if m.server_spec:
            newest_specs[m.server_id] = m.server_spec  # ids ascend: the newest wins
    # Servers this run recreated get the spec their newest manifest recorded; --servers
    # overrides it (and may fix servers of earlier runs: _set_server touches rebuilt ones).
    from_manifests = {str(i): spec for i, spec in newest_specs.items() if i in created}
    for server_id, spec in {**from_manifests, **(servers or {})}.items():
        _set_server(store, int(server_id), spec)
    return report


def _set_server(store: Store, server_id: int, spec: dict[str, Any]) -> None:
    """State, power and host of a rebuilt server (not a status: plain fields)."""
    key = f"server:{server_id}"
    if not store.redis.hget(key, "rebuilt"):
        return  # only servers this command recreated; live ones are the API's
    fields: dict[str, str] = {
        name: msgspec.json.encode(spec[name]).decode()
        for name in ("state", "power")
        if name in spec
    }
    if "host" in spec:
        fields["host"] = str(spec["host"])
    for name, value in fields.items():
        store.redis.hset(key, name, value)


def verify(engine: Engine, ids: list[int]) -> int:
    """Like `restic check --read-data`: exit 1 when any object of a snapshot is corrupt."""
    ids = ids or [c.meta.snapshot_id for c in engine.list_snapshots()]
    bad = 0
    for snapshot_id in ids:
        try:
            report = engine.verify(snapshot_id)
        except EngineError as exc:
            report = VerifyReport(snapshot_id=snapshot_id, ok=False, errors=[str(exc)])
        print(f"snapshot {snapshot_id}: {'ok' if report.ok else 'CORRUPT'}")
        for error in report.errors:
            print(f"  {error}")
        bad += not report.ok
    print(f"{len(ids)} snapshots verified, {bad} corrupt")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("rebuild", help="bring back every committed snapshot from the repository")
    cmd.add_argument("--servers", type=Path, help="JSON: state/power/host of missing servers")
    check = sub.add_parser("verify", help="read back snapshots and check every object")
    check.add_argument("ids", nargs="*", type=int, help="snapshot ids (default: all)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "verify":
        return verify(open_engine(settings), args.ids)
    servers = msgspec.json.decode(args.servers.read_bytes()) if args.servers else None
    report = rebuild(Store.from_settings(settings), open_engine(settings), servers)
    print(
        f"catalog rebuilt: {report.snapshots} snapshots and {report.servers} servers put back, "
        f"{report.kept} snapshots already present"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
