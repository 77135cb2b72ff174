"""bench/api.py at scale: a list filtered by server among 100,000 snapshots of 20,000 servers.

The records go into the real Redis through the service's own transition scripts
(create_server, then per snapshot create_snapshot, begin_operation, complete_create),
pipelined 1,000 at a time, so every index the scripts keep (per account, per server, per
status) is what the service itself would have built. Then two measurements of
``GET /api/v1/snapshots/?server_id=S`` (S drawn at random for every request) through the
real web process:

- one client, one request at a time (httpx, keep-alive): the latency a script sees;
- wrk with as many connections as the main table, a Lua script drawing S: the latency
  when the web process is saturated (mostly queueing behind the other connections).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis
from processes import ADMIN_TOKEN
from wrk import parse_wrk

from shared.schemas import ServerCreate, SnapshotCreate
from shared.scripts import create_server_arg, create_snapshot_arg, script_sources

ACCOUNT = "scale"
CHUNK = 1000


@dataclass
class ScaleResult:
    servers: int
    snapshots: int
    seed_s: float
    seq_p50_ms: float
    seq_p99_ms: float
    seq_requests: int
    wrk_line: str


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _chunks(n: int) -> Iterator[range]:
    for start in range(0, n, CHUNK):
        yield range(start, min(n, start + CHUNK))


def _answers(pipe: Any) -> list[dict[str, Any]]:
    out = []
    for raw in pipe.execute():
        answer: dict[str, Any] = msgspec.json.decode(raw)
        if not answer.get("ok"):
            raise RuntimeError(f"seeding refused: {answer}")
        out.append(answer)
    return out


def seed_scale(redis_url: str, servers: int, per_server: int, tmp: Path) -> float:
    """``servers`` servers of ACCOUNT with ``per_server`` available snapshots each."""
    client = redis.Redis.from_url(redis_url)
    scripts = {n: client.register_script(script_sources()[n]) for n in (
        "create_server", "create_snapshot", "begin_operation", "complete_create")}
    started = time.monotonic()
    ids: list[int] = []
    state = tmp / "scale-state"
    state.mkdir(exist_ok=True)
    for part in _chunks(servers):
        pipe = client.pipeline(transaction=False)
        for i in part:
            body = msgspec.convert({"name": f"scale-{i:05d}", "account": ACCOUNT, "state": {
                "kind": "directory", "path": str(state)}}, ServerCreate)
            scripts["create_server"](args=[create_server_arg(body, "running")], client=pipe)
        ids += [int(a["server_id"]) for a in _answers(pipe)]
    for k in range(per_server):
        for part in _chunks(len(ids)):
            pipe = client.pipeline(transaction=False)
            for i in part:
                snap = SnapshotCreate(server_id=ids[i], name=f"nightly-{k}",
                                      description="Snapshot before system update")
                scripts["create_snapshot"](args=[create_snapshot_arg(ACCOUNT, snap, per_server)],
                                           client=pipe)
            ops = [int(a["operation_id"]) for a in _answers(pipe)]
            pipe = client.pipeline(transaction=False)
            for op in ops:
                scripts["begin_operation"](args=[op], client=pipe)
                scripts["complete_create"](args=[op, f"{1.5 + k:.2f}", "[]", "[]"], client=pipe)
            _answers(pipe)
        print(f"  seeded {(k + 1) * len(ids):,} snapshots ({time.monotonic() - started:.0f} s)",
              flush=True)
    client.close()
    return time.monotonic() - started


def _token(base: str) -> str:
    r = httpx.post(f"{base}/api/v1/tokens/", json={"account": ACCOUNT, "scope": "read"},
                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    r.raise_for_status()
    return str(r.json()["token"])


def sequential(base: str, token: str, servers: int, n: int,
               check: Callable[[dict[str, Any]], None]) -> list[float]:
    """n filtered lists, one at a time over one keep-alive connection; seconds each."""
    rng = random.Random(12)
    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=10) as c:
        for i in range(n + 50):
            sid = rng.randint(1, servers)
            t0 = time.perf_counter()
            r = c.get(f"/api/v1/snapshots/?server_id={sid}")
            took = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"filtered list answered {r.status_code}: {r.text[:200]}")
            if i >= 50:  # the first 50 warm the connection and the caches
                out.append(took)
            if i % 97 == 0:
                check(r.json())
    return out


WRK_LUA = """
math.randomseed(7)
request = function()
  return wrk.format("GET", "/api/v1/snapshots/?server_id=" .. math.random(1, %d))
end
"""


def saturated(base: str, token: str, servers: int, args: argparse.Namespace,
              tmp: Path) -> str:
    script = tmp / "filter.lua"
    script.write_text(WRK_LUA % servers)
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
            "--latency", "-s", str(script), "-H", f"Authorization: Bearer {token}", base]
    p = subprocess.run(argv, capture_output=True, text=True)
    res = parse_wrk("filtered", p.stdout)
    if res.error or res.rps is None:
        return f"wrk failed: {res.error or p.stderr[-200:]}"
    shown = " ".join(argv).replace(token, "$TOKEN")
    return (f"{res.rps:,.0f} req/s  p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms"
            f"{'  ' + res.bad if res.bad else ''}\n    ({shown})")


def run_scale(base: str, redis_url: str, args: argparse.Namespace, tmp: Path) -> ScaleResult:
    servers, per = args.scale_servers, args.scale_per_server
    print(f"\nfiltered list: seeding {servers:,} servers x {per} snapshots through the "
          "transition scripts", flush=True)
    seed_s = seed_scale(redis_url, servers, per, tmp)
    token = _token(base)

    def check(body: dict[str, Any]) -> None:
        items = body["snapshots"]
        if body["meta"]["total"] != per or len(items) != per:
            raise RuntimeError(f"filtered list answered {len(items)} items: {body['meta']}")
        if len({s["server"]["id"] for s in items}) != 1:
            raise RuntimeError("filtered list mixed servers")

    lat = sequential(base, token, servers, args.scale_requests, check)
    wrk_line = saturated(base, token, servers, args, tmp)
    return ScaleResult(servers, servers * per, seed_s, percentile(lat, 0.5) * 1000,
                       percentile(lat, 0.99) * 1000, len(lat), wrk_line)
