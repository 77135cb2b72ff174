"""What bench/api.py prints: the header and the table (rich when installed)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import benchlib
from processes import API_OPTS, UVICORN_OPTS
from wrk import WrkResult


def _row(r: WrkResult, bare: WrkResult) -> list[str]:
    if r.error or r.rps is None:
        return [r.name, "ERR", "", "", "", "", (r.error or "")[:60]]
    ratio = f"{r.rps / bare.rps:.2f}" if bare.rps else "n/a"
    cpu = f"{1e6 * r.cpu_s / r.requests:.0f}" if r.requests else "n/a"
    if r.redis_cpu_s and r.requests:
        cpu += f" ({1e6 * r.redis_cpu_s / r.requests:.0f} redis)"
    return [r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", ratio, cpu, r.bad]


def print_table(results: list[WrkResult], bare: WrkResult, rounds: int) -> None:
    rows = [_row(r, bare) for r in results]
    cols = ["endpoint", "req/s", "p50 ms", "p99 ms", "x bare", "server CPU us/req", "errors"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(cols))
        for row in rows:
            print(" | ".join(row))
        return
    table = Table(
        title=f"API vs a bare Starlette app (wrk; median of {rounds} interleaved rounds)",
        caption="server CPU = uvicorn (+ redis-server for our API) user+sys time / requests",
    )
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i in (0, 6) else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)


def header(args: argparse.Namespace) -> None:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    version = (wrk.stdout or wrk.stderr).splitlines()[:1]
    print("command :", " ".join([".venv/bin/python", "bench/api.py", *sys.argv[1:]]))
    print(f"machine : {benchlib.machine()}")
    print(
        f"load    : {version[0] if version else 'wrk'}; -t{args.threads} -c{args.connections}"
        f" -d{args.duration}s (+2 s warm-up) x {args.rounds} interleaved rounds on loopback;"
        " client and servers share the CPUs"
    )
    print(
        f"servers : uvicorn {' '.join(UVICORN_OPTS)} (httptools/uvloop when installed), "
        f"API and bare app alike; the API as the Procfile runs it: {' '.join(API_OPTS)}"
    )
