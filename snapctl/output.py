"""What snapctl prints: JSON on stdout with --json, else rich tables and key/value lines.

Messages about the run (notes, problems, the progress bar) go to stderr, so stdout is
only ever the result, in either mode.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return str(value.get("name") or value.get("id") or json.dumps(value))
    return str(value)


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def listing(args: argparse.Namespace, page: dict[str, Any], key: str,
            columns: list[str]) -> None:
    if args.json:
        _json(page)
        return
    items: list[dict[str, Any]] = page[key]
    shown = [c for c in columns if any(c in item for item in items)] or columns
    table = Table(*shown, box=None, pad_edge=False)
    for item in items:
        table.add_row(*(_cell(item.get(c)) for c in shown))
    _out.print(table)
    total = page["meta"]["total"] if "meta" in page else len(items)
    _err.print(f"{len(items)} of {total}")


def record(args: argparse.Namespace, value: dict[str, Any]) -> None:
    if args.json:
        _json(value)
        return
    width = max((len(k) for k in value), default=0)
    for k, v in value.items():
        text = json.dumps(v) if isinstance(v, dict | list) else _cell(v)
        _out.print(f"{k.ljust(width)}  {text}", markup=False)


def done(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    if args.json:
        _json(value)
    else:
        _out.print(text, markup=False)


def note(text: str) -> None:
    _err.print(text, markup=False)


def problem(text: str) -> None:
    _err.print(f"snapctl: {text}", markup=False, style="red")
