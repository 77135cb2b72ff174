"""The argument parser: nouns, verbs and their options (the handlers live in main.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from snapctl import lifecycle

Handler = Callable[..., int]

EPILOG = """exit codes: 0 ok, 1 the awaited operation failed or was cancelled, 2 usage,
3 no URL or token, 4 service unreachable (or --timeout), 5 invalid request (400
invalid_request, 405, 413, 415), 6 refused (400 snapshot_limit_reached,
server_invalid_state, snapshot_not_available, snapshot_in_use, snapshot_protected;
409), 7 unauthorized (401),
8 forbidden (403), 9 not found (404), 10 server error (5xx)"""


def _positive(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw!r}")
    return int(raw)


def _common(p: argparse.ArgumentParser, suppress: bool) -> None:
    # Accepted before and after the noun/verb: `snapctl --json servers list` and
    # `snapctl servers list --json` both work. Sub-parsers must not reset the defaults.
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress
                   else False, help="print machine-readable JSON on stdout")
    p.add_argument("--url", default=default, help="service URL (else SNAPCTL_URL or config)")
    p.add_argument("--token", default=default, help="API token (else SNAPCTL_TOKEN or config)")


def _waiting(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="follow the event stream until the operation ends")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --wait: give up after this many seconds (exit 4)")


def build(handlers: dict[tuple[str, str], Handler]) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="snapctl", description="Command-line client of the server snapshots service.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(top, suppress=False)
    nouns = top.add_subparsers(dest="noun", required=True, metavar="{servers,snapshots,"
                               "schedules,operations,tokens,hosts}")
    verbs: dict[str, Any] = {}
    parsers: dict[tuple[str, str], argparse.ArgumentParser] = {}
    for noun, verb in handlers:
        if noun not in verbs:
            verbs[noun] = nouns.add_parser(noun).add_subparsers(dest="verb", required=True)
        sub: argparse.ArgumentParser = verbs[noun].add_parser(verb)
        _common(sub, suppress=True)
        sub.set_defaults(command=handlers[noun, verb], timeout=None)
        parsers[noun, verb] = sub

    parsers["servers", "list"].add_argument("--limit", type=int, default=200)
    parsers["servers", "show"].add_argument("id", type=_positive)
    add = parsers["servers", "add"]
    add.add_argument("--name", required=True)
    add.add_argument("--account", required=True)
    add.add_argument("--path", required=True, help="the state's absolute path")
    add.add_argument("--kind", choices=["directory", "image"], default="directory")
    add.add_argument("--host", default="default")
    add.add_argument("--stop", help="power: command to stop the server")
    add.add_argument("--start", help="power: command to start it")
    add.add_argument("--status", help="power: command whose exit 0 means running")
    add.add_argument("--systemd", metavar="UNIT", help="power: a systemd unit")
    parsers["servers", "remove"].add_argument("id", type=_positive)

    ls = parsers["snapshots", "list"]
    ls.add_argument("--server-id", type=_positive)
    ls.add_argument("--status", choices=["in_progress", "available", "failed"])
    ls.add_argument("--limit", type=int, default=50)
    parsers["snapshots", "show"].add_argument("id", type=_positive)
    create = parsers["snapshots", "create"]
    create.add_argument("--server-id", type=_positive, required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--description")
    create.add_argument("--stop-server", action="store_true")
    create.add_argument("--idempotency-key")
    _waiting(create)
    restore = parsers["snapshots", "restore"]
    restore.add_argument("id", type=_positive)
    restore.add_argument("--start-after", action=argparse.BooleanOptionalAction, default=None)
    restore.add_argument("--into", type=_positive, metavar="SERVER",
                         help="restore into this other server of yours (a clone)")
    restore.add_argument("--safety", action="store_true",
                         help="first capture the target's current state (origin safety)")
    restore.add_argument("--idempotency-key")
    _waiting(restore)
    parsers["snapshots", "delete"].add_argument("id", type=_positive)

    show = parsers["operations", "show"]
    show.add_argument("id", type=_positive)
    _waiting(show)

    listing = parsers["tokens", "list"]
    listing.add_argument("--account")
    listing.add_argument("--limit", type=int, default=200)
    tok = parsers["tokens", "create"]
    tok.add_argument("--account", required=True)
    tok.add_argument("--scope", choices=["read", "write", "admin"], required=True)
    parsers["tokens", "revoke"].add_argument("id", type=_positive)
    lifecycle.add_arguments(parsers, _positive)
    return top
