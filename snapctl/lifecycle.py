"""snapctl's lifecycle commands: protect, unprotect and rename snapshots; schedules."""

from __future__ import annotations

import argparse
from typing import Any

from snapctl import output
from snapctl.client import EXIT_OK, Api

KEEP = ("last", "hourly", "daily", "weekly", "monthly")


def _patch(api: Api, args: argparse.Namespace, body: dict[str, Any]) -> int:
    output.record(args, api.request("PATCH", f"/snapshots/{args.id}/", json=body))
    return EXIT_OK


def snapshots_protect(api: Api, args: argparse.Namespace) -> int:
    return _patch(api, args, {"protected": True})


def snapshots_unprotect(api: Api, args: argparse.Namespace) -> int:
    return _patch(api, args, {"protected": False})


def snapshots_rename(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.description is not None:
        body["description"] = args.description or None  # "" clears it
    return _patch(api, args, body)


def schedules_set(api: Api, args: argparse.Namespace) -> int:
    body = {
        "cron": args.cron,
        "timezone": args.timezone,
        "retention": {k: getattr(args, f"keep_{k}") for k in KEEP},
        "stop_server": args.stop_server,
    }
    output.record(args, api.request("PUT", f"/servers/{args.server_id}/schedule/", json=body))
    return EXIT_OK


def schedules_show(api: Api, args: argparse.Namespace) -> int:
    output.record(args, api.get(f"/servers/{args.server_id}/schedule/"))
    return EXIT_OK


def schedules_remove(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/servers/{args.server_id}/schedule/")
    output.done(args, {"deleted": {"schedule_of_server_id": args.server_id}},
                f"Schedule of server {args.server_id} removed.")
    return EXIT_OK


HANDLERS = {
    ("snapshots", "protect"): snapshots_protect,
    ("snapshots", "unprotect"): snapshots_unprotect,
    ("snapshots", "rename"): snapshots_rename,
    ("schedules", "set"): schedules_set,
    ("schedules", "show"): schedules_show,
    ("schedules", "remove"): schedules_remove,
}


def add_arguments(parsers: dict[tuple[str, str], argparse.ArgumentParser],
                  positive: Any) -> None:
    for verb in ("protect", "unprotect"):
        parsers["snapshots", verb].add_argument("id", type=positive)
    rename = parsers["snapshots", "rename"]
    rename.add_argument("id", type=positive)
    rename.add_argument("name")
    rename.add_argument("--description", help='a new description ("" clears it)')
    put = parsers["schedules", "set"]
    put.add_argument("server_id", type=positive)
    put.add_argument("--cron", required=True, help='five cron fields, e.g. "0 3 * * *"')
    put.add_argument("--timezone", default="UTC", help="an IANA zone (default UTC)")
    for k in KEEP:
        put.add_argument(f"--keep-{k}", type=int, default=0, metavar="N",
                         help=f"retention: keep the newest of the last N {k}"
                         if k != "last" else "retention: keep the newest N")
    put.add_argument("--stop-server", action="store_true",
                     help="stop the server around each scheduled capture")
    for verb in ("show", "remove"):
        parsers["schedules", verb].add_argument("server_id", type=positive)
