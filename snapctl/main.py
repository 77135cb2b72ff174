"""snapctl's command line: ``snapctl [--json] <noun> <verb> ...``; exit codes in client.py."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from snapctl import lifecycle, output
from snapctl.cli_args import build
from snapctl.client import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_OPERATION_FAILED,
    Api,
    ApiFailure,
)
from snapctl.config import ConfigError, load
from snapctl.watch import wait_operation

Command = Callable[[Api, argparse.Namespace], int]


def _wait(api: Api, args: argparse.Namespace, op_id: int, snapshot_id: int | None,
          server_id: int | None, label: str) -> dict[str, Any]:
    return wait_operation(api, op_id, snapshot_id, server_id, show=not args.json, label=label,
                          timeout=args.timeout)


def _ended(args: argparse.Namespace, op: dict[str, Any]) -> int:
    if op["status"] == "succeeded":
        return EXIT_OK
    err = op.get("error") or {}
    output.problem(f"operation {op['id']} {op['status']}: "
                   f"{err.get('message', 'no reason given')}")
    return EXIT_OPERATION_FAILED


# ------------------------------------------------------------------ servers


def servers_list(api: Api, args: argparse.Namespace) -> int:
    page = api.get("/servers/", limit=args.limit)
    output.listing(args, page, "servers", ["id", "name", "status", "account", "created_at"])
    return EXIT_OK


def servers_show(api: Api, args: argparse.Namespace) -> int:
    output.record(args, api.get(f"/servers/{args.id}/"))
    return EXIT_OK


def servers_add(api: Api, args: argparse.Namespace) -> int:
    if args.systemd:
        power: dict[str, str] = {"kind": "systemd", "unit": args.systemd}
    elif args.stop or args.start or args.status:
        power = {"kind": "command", "stop": args.stop or "", "start": args.start or "",
                 "status": args.status or ""}
    else:
        power = {"kind": "none"}
    body = {"name": args.name, "account": args.account,
            "state": {"kind": args.kind, "path": args.path}, "power": power, "host": args.host}
    output.record(args, api.request("POST", "/servers/", json=body))
    return EXIT_OK


def servers_remove(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/servers/{args.id}/")
    output.done(args, {"deleted": {"server_id": args.id}}, f"Server {args.id} removed.")
    return EXIT_OK


# ------------------------------------------------------------------ snapshots


def snapshots_list(api: Api, args: argparse.Namespace) -> int:
    page = api.get("/snapshots/", server_id=args.server_id, status=args.status,
                   limit=args.limit)
    output.listing(args, page, "snapshots",
                   ["id", "server", "name", "status", "progress", "size_mb", "created_at"])
    return EXIT_OK


def snapshots_show(api: Api, args: argparse.Namespace) -> int:
    output.record(args, api.get(f"/snapshots/{args.id}/"))
    return EXIT_OK


def _idem(args: argparse.Namespace) -> dict[str, str] | None:
    return {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None


def snapshots_create(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"server_id": args.server_id, "name": args.name,
                            "stop_server": args.stop_server}
    if args.description is not None:
        body["description"] = args.description
    snap = api.request("POST", "/snapshots/", json=body, headers=_idem(args))
    if not args.wait:
        output.record(args, snap)
        return EXIT_OK
    if not args.json:
        output.note(f"Snapshot {snap['id']} is being created (operation {snap['operation_id']}).")
    op = _wait(api, args, snap["operation_id"], snap["id"], args.server_id,
               f"snapshot {snap['id']}")
    if op["status"] != "cancelled":
        snap = api.get(f"/snapshots/{snap['id']}/")
    output.record(args, snap)
    return _ended(args, op)


def snapshots_restore(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {} if args.start_after is None else {"start_after": args.start_after}
    if args.into is not None:
        body["server_id"] = args.into
    if args.safety:
        body["safety_snapshot"] = True
    answer = api.request("POST", f"/snapshots/{args.id}/restore/", json=body,
                         headers=_idem(args))
    if not args.wait:
        output.record(args, answer)
        return EXIT_OK
    if not args.json:
        output.note(answer["message"] + f" (operation {answer['operation_id']})")
    op = _wait(api, args, answer["operation_id"], args.id, answer["server"]["id"],
               f"restore of server {answer['server']['id']}")
    output.record(args, op)
    return _ended(args, op)


def snapshots_delete(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/snapshots/{args.id}/")
    output.done(args, {"deleted": {"snapshot_id": args.id}}, f"Snapshot {args.id} deleted.")
    return EXIT_OK


# ------------------------------------------------------------------ operations, tokens


def operations_show(api: Api, args: argparse.Namespace) -> int:
    op = api.get(f"/operations/{args.id}/")
    if args.wait:
        op = _wait(api, args, args.id, op.get("snapshot_id"), op.get("server_id"),
                   f"operation {args.id}")
        output.record(args, op)
        return _ended(args, op)
    output.record(args, op)
    return EXIT_OK


def tokens_list(api: Api, args: argparse.Namespace) -> int:
    page = api.get("/tokens/", limit=args.limit, account=args.account)
    output.listing(args, page, "tokens", ["id", "account", "scope", "created_at"])
    return EXIT_OK


def tokens_create(api: Api, args: argparse.Namespace) -> int:
    output.record(args, api.request("POST", "/tokens/",
                                    json={"account": args.account, "scope": args.scope}))
    return EXIT_OK


def tokens_revoke(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/tokens/{args.id}/")
    output.done(args, {"revoked": {"token_id": args.id}}, f"Token {args.id} revoked.")
    return EXIT_OK


def hosts_list(api: Api, args: argparse.Namespace) -> int:
    """(admin) The fleet's hosts: a host whose servers wait with no live worker shows."""
    output.listing(args, api.get("/hosts/"), "hosts",
                   ["name", "workers", "last_seen", "servers", "queued"])
    return EXIT_OK


# ------------------------------------------------------------------ parser


def parser() -> argparse.ArgumentParser:
    return build(
        {
            ("servers", "list"): servers_list, ("servers", "show"): servers_show,
            ("servers", "add"): servers_add, ("servers", "remove"): servers_remove,
            ("snapshots", "list"): snapshots_list, ("snapshots", "show"): snapshots_show,
            ("snapshots", "create"): snapshots_create,
            ("snapshots", "restore"): snapshots_restore,
            ("snapshots", "delete"): snapshots_delete,
            ("operations", "show"): operations_show,
            ("tokens", "list"): tokens_list, ("tokens", "create"): tokens_create,
            ("tokens", "revoke"): tokens_revoke,
            ("hosts", "list"): hosts_list,
            **lifecycle.HANDLERS,
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command: Command = args.command
    try:
        config = load(args.url, args.token)
    except ConfigError as exc:
        output.problem(str(exc))
        return EXIT_CONFIG
    api = Api(config)
    try:
        return command(api, args)
    except ApiFailure as exc:
        if args.json:
            print(json.dumps(exc.as_json()))
        output.problem(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        output.problem("interrupted")
        return 130
    finally:
        api.close()


if __name__ == "__main__":
    sys.exit(main())
