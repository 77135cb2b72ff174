"""Is the API responsive while a big capture runs on the same machine? (issue 12)

    .venv/bin/python bench/responsive.py [--image-mib 1024] [--files 50000] [--rate 100]

Starts the service as `make run` does (bench/service.py's MakeRun: embedded Redis, the
web process and a worker under the supervisor, all on this machine), registers a
`directory` server holding a disk-image-like file (bench/dataset.py's mixed text, random
and zero blocks) and many small files, and times GET /api/v1/snapshots/{id}/ from one
client at a fixed pace (one request every 1/rate s, one at a time, keep-alive): first
for --idle-s seconds with nothing running, then for as long as a full capture of that
server runs (the snapshot being read is the one being captured, as a user polling it
would). Prints p50/p90/p99/max of both, the capture's duration and the load average.
Target: p99 under 50 ms during the capture.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import benchlib
import httpx
from dataset import build_image
from filesystem import DATA, rmtree
from service import MakeRun


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


def build_state(root: Path, image_mib: int, files: int) -> None:
    root.mkdir(parents=True)
    print(f"building the state: a {image_mib} MiB image file and {files:,} small files ...",
          flush=True)
    build_image(root / "disk.img", image_mib)
    rng = random.Random(3)
    for i in range(files):
        d = root / "files" / f"d{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.txt").write_bytes(rng.randbytes(rng.randint(200, 3000)))


def poll(api: httpx.Client, path: str, rate: float, until: float | None,
         done: httpx.Client | None = None, op_id: int | None = None) -> list[float]:
    """GET path every 1/rate s until the deadline, or until the operation ends."""
    out: list[float] = []
    period = 1 / rate
    nxt = time.perf_counter()
    checked = 0.0
    while True:
        now = time.perf_counter()
        if until is not None and now >= until:
            return out
        if done is not None and now - checked > 0.2:
            checked = now
            status = done.get(f"/operations/{op_id}/").json()["status"]
            if status not in ("queued", "running"):
                if status != "succeeded":
                    raise SystemExit(f"the capture ended {status}")
                return out
        t0 = time.perf_counter()
        r = api.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path} answered {r.status_code}: {r.text[:200]}")
        nxt += period
        time.sleep(max(0.0, nxt - time.perf_counter()))


def show(label: str, ms: list[float]) -> str:
    p = percentiles(ms)
    return (f"  {label:<22} {len(ms):>6} GETs  p50 {p['p50']:.1f}  p90 {p['p90']:.1f}  "
            f"p99 {p['p99']:.1f}  max {p['max']:.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--rate", type=float, default=100.0, help="GETs a second (one client)")
    ap.add_argument("--idle-s", type=float, default=10.0)
    args = ap.parse_args()
    with benchlib.exclusive():  # one benchmark at a time
        return bench(args)


def bench(args: argparse.Namespace) -> int:
    run = DATA / f"responsive-{os.getpid()}"
    svc: MakeRun | None = None
    try:
        state = run / "states" / "big"
        build_state(state, args.image_mib, args.files)
        svc = MakeRun(run / "data")
        sid = svc.server("big", "directory", state)
        # A snapshot to read while idle: of a tiny server, so nothing runs afterwards.
        (run / "states" / "tiny").mkdir()
        tiny = svc.server("tiny", "directory", run / "states" / "tiny")
        first = svc.api.post("/snapshots/", json={"server_id": tiny, "name": "t"}).json()
        while svc.api.get(f"/operations/{first['operation_id']}/").json()["status"] != "succeeded":
            time.sleep(0.05)
        print("command :", " ".join([".venv/bin/python", "bench/responsive.py", *sys.argv[1:]]))
        print(f"machine : {benchlib.machine()}")
        reader = httpx.Client(base_url=svc.api.base_url, headers=svc.api.headers, timeout=30)
        print(f"load before idle: {benchlib.loadavg()}", flush=True)
        idle = poll(reader, f"/snapshots/{first['id']}/", args.rate,
                    time.perf_counter() + args.idle_s)
        print(f"load before capture: {benchlib.loadavg()}", flush=True)
        t0 = time.perf_counter()
        made = svc.api.post("/snapshots/", json={"server_id": sid, "name": "big"}).json()
        busy = poll(reader, f"/snapshots/{made['id']}/", args.rate, None, svc.api,
                    made["operation_id"])
        took = time.perf_counter() - t0
        print(f"load after capture: {benchlib.loadavg()}")
        print(f"GET one snapshot, one client at {args.rate:g}/s; capture of {args.image_mib} "
              f"MiB file + {args.files:,} files: {took:.1f} s (POST -> available)")
        print(show("idle", idle))
        print(show("during the capture", busy))
        p99 = percentiles(busy)["p99"]
        print(f"target: {'PASS' if p99 < 50 else 'FAIL'}  GET one p99 < 50 ms during a big "
              f"capture: {p99:.1f} ms")
        return 0
    finally:
        if svc is not None:
            svc.stop()
        rmtree(run)


if __name__ == "__main__":
    sys.exit(main())
