"""Pick-up latency and idle cost of a worker: the real service (redis-server, web, one
worker, as tests/e2e/service.py starts them), one idle worker.

    .venv/bin/python bench/pickup.py [--ops 50] [--idle 10] [--gap 1.2] [--max-wait 300]

Prints the Redis commands per second with the worker idle (``INFO stats`` over ``--idle``
seconds, and the per-command split), then the pick-up latency (POST ->
``operation.started``, from the event stream's Redis-clock ids) of a one-file server's
captures, each POSTed after the worker sat idle for ``--gap`` seconds: the first one after
the worker's boot on its own line (cold start: what a worker does once, at its first
job), then the percentiles of the ``--ops`` after it, and the slowest of those (their
order: a slow start, or load at one moment).

Fair to a run's order (session 13: each p99 miss came when the code measured first of an
A/B pair ran first): one benchmark at a time (bench/benchlib.py's lock), after waiting for
a quiet machine, with the interpreter's, the packages' and the service's code read into
the page cache first, so a first run and a second one start from the same cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402
import redis  # noqa: E402

from tests.e2e.flow import add_server, snapshot  # noqa: E402
from tests.e2e.service import Service  # noqa: E402
from tests.support.pickup import (  # noqa: E402
    commands_by_name,
    commands_per_second,
    percentiles,
    pickup_latencies_ms,
)

# A server keeps at most 5 snapshots.
PER_SERVER = 5
CODE = (".py", ".pyc", ".so")
SLOWEST = 5


def one_file_state(path: Path) -> str:
    path.mkdir()
    (path / "file").write_text("x")
    return str(path)


def warm_code() -> tuple[int, float]:
    """Reads every module file of the interpreter, the venv and the service into the page
    cache (untimed): (bytes, seconds)."""
    t0, total = time.perf_counter(), 0
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= {str(ROOT / d) for d in ("api", "shared", "workers")}
    for root in sorted(roots):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.endswith(CODE):
                    try:
                        total += len(Path(dirpath, name).read_bytes())
                    except OSError:
                        continue
    return total, time.perf_counter() - t0


def measure(svc: Service, ops: int, idle: float, gap: float) -> tuple[float, dict[str, int],
                                                                      list[int]]:
    """Idle commands/s, their split, and the pick-up ms of 1 + ops captures in order."""
    client = redis.Redis.from_url(svc.redis.url)
    with svc.client() as api:
        servers = [add_server(api, one_file_state(svc.root / f"state{i}"), name=f"s{i}")["id"]
                   for i in range(-(-(ops + 1) // PER_SERVER))]
        time.sleep(3)  # the worker's boot-time work (reaper, scheduler's first pass) done
        client.config_resetstat()
        rate = commands_per_second(client, idle)
        split = commands_by_name(client)
        op_ids = []
        for i in range(ops + 1):
            time.sleep(gap)
            server = servers[i // PER_SERVER]
            op_ids.append(snapshot(api, server, name=f"s{i}")["operation_id"])
    return rate, split, pickup_latencies_ms(client, op_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=50, help="operations after the first one")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle counting")
    parser.add_argument("--gap", type=float, default=1.2, help="idle seconds before each POST")
    parser.add_argument("--max-wait", type=float, default=300,
                        help="seconds to wait for a quiet machine")
    args = parser.parse_args()
    with benchlib.exclusive():
        print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
        size, secs = warm_code()
        print(f"page cache: {size / 2**20:.0f} MiB of code read in {secs:.1f} s", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-pickup-") as tmp, \
                Service.running(Path(tmp)) as svc:
            rate, split, ms = measure(svc, args.ops, args.idle, args.gap)
        load = benchlib.loadavg()
    first, rest = ms[0], ms[1:]
    print(f"idle worker: {rate:.1f} Redis commands/s over {args.idle:g} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(split.items(), key=lambda kv: -kv[1])))
    print(f"cold start: the worker's first operation after its boot picked up in {first} ms")
    print(f"pick-up latency over the {len(rest)} ops after it (ms): "
          + ", ".join(f"{k} {v:.0f}" for k, v in percentiles(rest).items()))
    slowest = sorted(range(len(rest)), key=lambda i: -rest[i])[:SLOWEST]
    print("slowest: " + ", ".join(f"op {i + 2}: {rest[i]} ms" for i in sorted(slowest))
          + f"  (load after: {load})")


if __name__ == "__main__":
    main()
