"""Load benchmark of the HTTP API against a bare Starlette app (wrk).

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 2]

Starts, on free loopback ports, a throw-away redis-server, our API (uvicorn, 1 worker) and
bench/bare_app.py (same uvicorn settings); seeds servers, a token and snapshots through the
real API; then runs wrk against GET one snapshot, GET the list and the bare app, one after
the other. Every process it started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import benchlib
import httpx
from api_report import header, print_table
from processes import Procs, start_all, start_bare
from seeding import SERVERS, seed
from wrk import Target, measure


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def bench(args: argparse.Namespace, procs: Procs, tmp: Path) -> int:
    header(args)
    base, env = start_all(procs, tmp)
    seeded = seed(base, tmp)
    print(
        f"seeded  : {SERVERS} servers, {seeded.snapshots} snapshots (in_progress, no worker);"
        f" GET one body {len(seeded.body)} bytes; bare app answers the same bytes"
    )
    bare_base = start_bare(procs, tmp, seeded.body, env)
    api_pids, rpid = [procs.pid("api")], procs.pid("redis-server")
    targets = [
        Target("GET /api/v1/snapshots/{id}/", f"{base}/api/v1/snapshots/{seeded.snapshot_id}/",
               seeded.token, api_pids, rpid),
        Target(f"GET /api/v1/snapshots/ ({seeded.snapshots} items)", f"{base}/api/v1/snapshots/",
               seeded.token, api_pids, rpid),
        Target("bare Starlette, same body", f"{bare_base}/api/v1/snapshots/1/", None,
               [procs.pid("bare")]),
    ]  # fmt: skip
    print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
    results = measure(targets, args, procs)
    print()
    print_table(results, results[2], args.rounds)
    one_r, bare = results[0], results[2]
    if one_r.rps and bare.rps:
        ratio = one_r.rps / bare.rps
        verdict = "PASS" if ratio >= 0.5 else "FAIL"
        print(
            f"\ntarget: {verdict}  GET one >= 0.5 x bare: {ratio:.2f} x "
            f"({one_r.rps:,.0f} vs {bare.rps:,.0f} req/s)"
        )
        return 0
    print("\ntarget: N/A  GET one >= 0.5 x bare: a run failed")
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--max-wait", type=float, default=180, help="s to wait for a quiet machine")
    args = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        with benchlib.exclusive():
            return bench(args, procs, tmp)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything we started")
        return 130
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"\nERROR: {e}")
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
