"""Pick-up latency and idle cost of a worker: the real service (redis-server, web, one
worker, as tests/e2e/service.py starts them), one idle worker.

    .venv/bin/python bench/pickup.py [--ops 50] [--idle 10]

Prints the Redis commands per second with the worker idle (``INFO stats`` over ``--idle``
seconds, and the per-command split), then the pick-up latency percentiles (POST ->
``operation.started``, from the event stream's Redis-clock ids) of ``--ops`` captures of a
one-file server, each POSTed after the worker sat idle for ``--gap`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def one_file_state(path: Path) -> str:
    path.mkdir()
    (path / "file").write_text("x")
    return str(path)


def measure(svc: Service, ops: int, idle: float, gap: float) -> tuple[float, dict[str, int],
                                                                      dict[str, float]]:
    client = redis.Redis.from_url(svc.redis.url)
    with svc.client() as api:
        servers = [add_server(api, one_file_state(svc.root / f"state{i}"), name=f"s{i}")["id"]
                   for i in range(-(-ops // PER_SERVER))]
        time.sleep(3)  # the worker's boot-time work (reaper, scheduler's first pass) done
        client.config_resetstat()
        rate = commands_per_second(client, idle)
        split = commands_by_name(client)
        op_ids = []
        for i in range(ops):
            time.sleep(gap)
            server = servers[i // PER_SERVER]
            op_ids.append(snapshot(api, server, name=f"s{i}")["operation_id"])
    return rate, split, percentiles(pickup_latencies_ms(client, op_ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=50)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle counting")
    parser.add_argument("--gap", type=float, default=1.2, help="idle seconds before each POST")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pickup-") as tmp, \
            Service.running(Path(tmp)) as svc:
        rate, split, pct = measure(svc, args.ops, args.idle, args.gap)
    print(f"idle worker: {rate:.1f} Redis commands/s over {args.idle:g} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(split.items(), key=lambda kv: -kv[1])))
    print(f"pick-up latency over {args.ops} ops (ms): "
          + ", ".join(f"{k} {v:.0f}" for k, v in pct.items()))


if __name__ == "__main__":
    main()
