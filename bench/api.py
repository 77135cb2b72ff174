"""Load benchmark of the HTTP API against a bare Starlette app (wrk).

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 2]

Starts, on free loopback ports, a throw-away redis-server, our API (uvicorn, 1 worker),
the same API with its hot reads on redis-py's asyncio client instead of shared/fastread.py
(bench/redispy_app.py, same Redis and data) and bench/bare_app.py (same uvicorn settings);
seeds servers, a token and snapshots through the real API; then runs wrk against GET one
snapshot and GET the list on both APIs and against the bare app, one after the other, in
interleaved rounds. Every process it started is stopped on exit, Ctrl-C included.
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
from processes import Procs, start_all, start_api, start_bare
from seeding import SERVERS, seed
from wrk import Target, WrkResult, measure, paired_ratio


def _cpu_us(r: WrkResult) -> float:
    return 1e6 * r.cpu_s / r.requests if r.requests else float("nan")


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
    redispy = start_api(procs, tmp, "api-redispy",
                        ["--factory", "bench.redispy_app:create_app"], env)
    bare_base = start_bare(procs, tmp, seeded.body, env)
    rpid = procs.pid("redis-server")
    one, many = f"/api/v1/snapshots/{seeded.snapshot_id}/", "/api/v1/snapshots/"
    targets = [
        Target("GET /api/v1/snapshots/{id}/", base + one, seeded.token, [procs.pid("api")], rpid),
        Target("  same, reads on redis-py (one)", redispy + one, seeded.token,
               [procs.pid("api-redispy")], rpid),
        Target(f"GET /api/v1/snapshots/ ({seeded.snapshots} items)", base + many,
               seeded.token, [procs.pid("api")], rpid),
        Target("  same, reads on redis-py (list)", redispy + many, seeded.token,
               [procs.pid("api-redispy")], rpid),
        Target("bare Starlette, same body", f"{bare_base}{one}", None, [procs.pid("bare")]),
    ]  # fmt: skip
    print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
    results, rounds = measure(targets, args, procs)
    print()
    bare = results[-1]
    print_table(results, bare, args.rounds)
    for fast, slow in ((results[0], results[1]), (results[2], results[3])):
        paired = paired_ratio(rounds[fast.name], rounds[slow.name])
        if paired is not None:
            print(f"fastread vs redis-py, {fast.name}: {paired:.2f} x req/s (median of the "
                  f"rounds' ratios), {_cpu_us(fast):.0f} vs {_cpu_us(slow):.0f} server CPU us/req")
    one_r = results[0]
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
