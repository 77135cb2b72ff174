"""Event-stream fan-out: N concurrent SSE clients on one web process (issue 12, SPEC 7).

Starts a throw-away redis-server and our API under uvicorn (bench/processes.py), opens
``--clients`` streams of one account from a separate client process (raw asyncio sockets,
tests/support/sse_flood.py), publishes ``--events`` progress events of that account at
``--rate`` per second through the same Lua script a worker uses, and reports the delivery
latency (publish -> arrival at each client; both processes read CLOCK_MONOTONIC) and the
Redis connections of the web process (CLIENT LIST), plus its RSS before, during and after.

    .venv/bin/python bench/events.py --clients 1000 --events 100 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import httpx
import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processes import ADMIN_TOKEN, Procs, start_all

from shared.settings import Settings
from shared.store import Store
from tests.support.sse_flood import open_many, percentile


def _cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _children_cpu_s() -> float:
    """User + system CPU seconds of the children waited for so far (the client process)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _clients(port: int, token: str, n: int, events: int, out: Path, ready: Path) -> None:
    streams = await open_many("127.0.0.1", port, token, n)
    assert all(s.status == 200 for s in streams), {s.status for s in streams}
    ready.write_text("ready")
    deadline = time.monotonic() + 120
    while any(len(s.arrivals) < events for s in streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    out.write_text(json.dumps([{str(k): v for k, v in s.arrivals.items()} for s in streams]))
    await asyncio.gather(*(s.close() for s in streams))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=99, help="at most 99 (progress 1..99)")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--max-wait", type=float, default=180,
                        help="s to wait for a quiet machine")
    parser.add_argument("--client-mode", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_mode:
        port, token, n, out, ready = args.client_mode
        # uvloop, as the web process runs: the client's own CPU per frame (a recv and a
        # parse per stream and event) is part of the latency it measures.
        uvloop.run(_clients(int(port), token, int(n), args.events, Path(out), Path(ready)))
        return 0
    events = min(args.events, 99)
    # Every stream is of one account: lift the per-account cap for the web process.
    os.environ["SNAPSHOTS_EVENTS_MAX_PER_ACCOUNT"] = str(args.clients)
    with benchlib.exclusive():  # one benchmark at a time
        print("command :", " ".join([".venv/bin/python", "bench/events.py", *sys.argv[1:]]))
        print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
        print(f"load    : {benchlib.loadavg()} before", flush=True)
        code = run(args, events)
        print(f"load    : {benchlib.loadavg()} after")
        return code


def run(args: argparse.Namespace, events: int) -> int:
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            base, env = start_all(procs, tmp)
            port, pid = int(base.rsplit(":", 1)[1]), procs.pid("api")
            admin = httpx.Client(base_url=f"{base}/api/v1", timeout=30,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            (tmp / "state").mkdir()
            server = admin.post("/servers/", json={
                "name": "watched", "account": "acme", "power": {"kind": "none"},
                "state": {"kind": "directory", "path": str(tmp / "state")}}).json()
            token = admin.post("/tokens/", json={"account": "acme", "scope": "read"}).json()
            op = admin.post("/snapshots/", json={"server_id": server["id"], "name": "b"}).json()
            client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
            store = Store(client, Settings(data_dir=tmp / "data", storage_url="file:///x"))
            store.begin_operation(op["operation_id"])
            rss_before = _rss_mib(pid)
            client_cpu_before = _children_cpu_s()
            out, ready = tmp / "arrivals.json", tmp / "ready"
            clients = subprocess.Popen([
                sys.executable, __file__, "--events", str(events), "--client-mode", str(port),
                token["token"], str(args.clients), str(out), str(ready)])
            while not ready.exists():
                if clients.poll() is not None:
                    raise SystemExit("the client process failed")
                time.sleep(0.1)
            time.sleep(1.0)
            me = client.client_id()
            conns = [c for c in client.client_list() if int(c["id"]) != me]
            rss_open = _rss_mib(pid)
            sent: dict[str, float] = {}
            cpu_before = _cpu_s(pid)
            for progress in range(1, events + 1):
                sent[str(progress)] = time.monotonic()
                store.report_progress(op["operation_id"], progress)
                time.sleep(1 / args.rate)
            clients.wait(180)
            user, system = (a - b for a, b in zip(_cpu_s(pid), cpu_before, strict=True))
            cpu = user + system
            client_cpu = _children_cpu_s() - client_cpu_before
            arrivals = json.loads(out.read_text())
            time.sleep(1.0)
            rss_after = _rss_mib(pid)
            lat = [a[k] - sent[k] for a in arrivals for k in sent if k in a]
            missing = sum(1 for a in arrivals for k in sent if k not in a)
            print(f"event streams: {args.clients} clients, {events} events at {args.rate:g}/s "
                  f"(one account; client process separate from the web process)")
            print(f"  delivery latency  p50 {percentile(lat, 0.5) * 1000:.1f} ms  "
                  f"p99 {percentile(lat, 0.99) * 1000:.1f} ms  "
                  f"max {max(lat) * 1000:.1f} ms  missing {missing}")
            print(f"  web process CPU: {cpu:.2f} s for {len(lat)} frames delivered "
                  f"({cpu / max(1, len(lat)) * 1e6:.0f} us a frame: {user:.2f} s user, "
                  f"{system:.2f} s system)")
            print(f"  client process CPU: {client_cpu:.2f} s (opening the streams included)")
            print(f"  redis connections of the web process: {len(conns)} "
                  f"({', '.join(sorted({c.get('name') or '(pool)' for c in conns}))})")
            print(f"  web RSS: {rss_before:.0f} MiB before, {rss_open:.0f} MiB with the streams "
                  f"open, {rss_after:.0f} MiB after they closed")
            client.close()
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
