"""Load benchmark of the HTTP API against a bare Starlette app (wrk).

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 2]
    .venv/bin/python bench/api.py --scale-servers 0     # skip the 100,000-snapshot part
    .venv/bin/python bench/api.py --baseline ../before  # + another checkout's API, interleaved

Starts, on free loopback ports, a throw-away redis-server, our API (uvicorn, 1 worker),
the same API with its hot reads on redis-py's asyncio client instead of shared/fastread.py
(bench/redispy_app.py, same Redis and data) and bench/bare_app.py twice (same uvicorn
settings; one answers GET one's bytes, the other the list's); seeds 50 servers, a token and
one snapshot per server through the real API; then runs wrk against GET one snapshot and
GET the list of 50 on both APIs and against the bare apps, one after the other, in
interleaved rounds. Then (bench/api_scale.py) 100,000 snapshots of 20,000 servers go
into the same Redis through the transition scripts, and a list filtered by server is
timed one request at a time and under wrk. Every process it started is stopped on exit,
Ctrl-C included. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

import benchlib
import httpx
from api_report import header, print_table
from api_scale import run_scale
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
    bare_list = start_bare(procs, tmp, seeded.list_body, env, "bare-list")
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
        Target("bare Starlette, list's body", f"{bare_list}{many}", None,
               [procs.pid("bare-list")]),
        Target("bare Starlette, GET one's body", f"{bare_base}{one}", None, [procs.pid("bare")]),
    ]  # fmt: skip
    if args.baseline is not None:
        # Another checkout's API on the same Redis and data, interleaved with ours: a
        # before/after under the same load.
        rev = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
        name = f"@{rev or args.baseline.name}"
        other = start_api(procs, tmp, "api-baseline", ["--factory", "api.app:create_app"], env,
                          checkout=args.baseline)
        pid = [procs.pid("api-baseline")]
        targets += [Target(f"GET one {name}", other + one, seeded.token, pid, rpid),
                    Target(f"list {name}", other + many, seeded.token, pid, rpid)]
    print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
    results, rounds = measure(targets, args, procs)
    print()
    bare = results[5]
    print_table(results, bare, args.rounds)
    for fast, slow in ((results[0], results[1]), (results[2], results[3])):
        paired = paired_ratio(rounds[fast.name], rounds[slow.name])
        if paired is not None:
            print(f"fastread vs redis-py, {fast.name}: {paired:.2f} x req/s (median of the "
                  f"rounds' ratios), {_cpu_us(fast):.0f} vs {_cpu_us(slow):.0f} server CPU us/req")
    print()
    failed = not _verdict("GET one", results[0], bare, "GET one's body")
    failed |= not _verdict(f"list of {seeded.snapshots}", results[2], results[4], "list's body")
    _verdict(f"list of {seeded.snapshots}", results[2], bare, "GET one's body (as issue 3)")
    if args.scale_servers:
        procs.check_alive()
        scale = run_scale(base, env["REDIS_URL"], args, tmp)
        ok = scale.seq_p99_ms < 50
        print(f"  {scale.snapshots:,} snapshots of {scale.servers:,} servers seeded in "
              f"{scale.seed_s:.0f} s; load {benchlib.loadavg()}")
        print(f"  one client, {scale.seq_requests} requests one at a time: p50 "
              f"{scale.seq_p50_ms:.2f} ms  p99 {scale.seq_p99_ms:.2f} ms")
        print(f"  wrk (saturated): {scale.wrk_line}")
        print(f"target: {'PASS' if ok else 'FAIL'}  list filtered by server p99 < 50 ms "
              f"(one client): {scale.seq_p99_ms:.2f} ms")
    return 1 if failed else 0


def _verdict(what: str, ours: WrkResult, bare: WrkResult, bare_name: str) -> bool:
    if not (ours.rps and bare.rps):
        print(f"target: N/A  {what} >= 0.5 x bare ({bare_name}): a run failed")
        return False
    ratio = ours.rps / bare.rps
    print(f"target: {'PASS' if ratio >= 0.5 else 'FAIL'}  {what} >= 0.5 x bare, {bare_name}: "
          f"{ratio:.2f} x ({ours.rps:,.0f} vs {bare.rps:,.0f} req/s)")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--max-wait", type=float, default=180, help="s to wait for a quiet machine")
    ap.add_argument("--scale-servers", type=int, default=20_000, help="0: no filtered list")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout (its own .venv): its API's GET one and list too")
    ap.add_argument("--scale-per-server", type=int, default=5)
    ap.add_argument("--scale-requests", type=int, default=2000)
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
