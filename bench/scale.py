"""bench/service.py --scale (issue 12): the service at scale vs restic, with peak memory.

    .venv/bin/python bench/service.py --scale [--files 100000,300000,1000000] [--image]

For each size, a directory server on bench/scaledata.py's tree of that many small files
(cached under bench/.data/scale-*k/, built once), through the HTTP API of `make run`:
full capture, the incremental after appending to 100 files, and a full restore into an
empty server (warm: the tree read once untimed before each full capture; --cold: the page
cache dropped before each full capture and restore); restic runs the same three on the same
tree in the same run. While each runs, the worker's whole process tree (Dramatiq's main
process, its worker processes and the engine's reader/writer processes) and restic's are
sampled every 0.1 s for PSS and RSS (bench/memory.py); the peak sums are reported. During
our full capture one client GETs the snapshot being captured 100 times a second
(bench/responsive.py's poll): p99 target 50 ms. Then the manifest: bytes per entry, and the
time (and memory) a fresh process takes to read and decode it. With --image, an `image`
server on the 16 GiB sparse image (2 GiB of data) is captured and restored too, at the
largest size's run.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import benchlib
import memory
import scaledata
from commands import PY, ROOT, MiB, Outcome
from dataset import State
from filesystem import DATA, SETTLE_MARK, drop_caches, rmtree, settle
from responsive import percentiles, poll
from service import MakeRun, old_tree_gone
from tools import Restic, make_tools

GET_RATE = 100.0
TOUCHED = 100


def capture_polled(svc: MakeRun, server_id: int, name: str) -> tuple[Outcome, int, list[float]]:
    """POST a capture, GET the snapshot 100/s from another client until it ends."""
    t0 = time.perf_counter()
    r = svc.api.post("/snapshots/", json={"server_id": server_id, "name": name})
    if r.status_code != 201:
        return Outcome(error=r.text[:200]), 0, []
    body = r.json()
    svc.op_ids.append(body["operation_id"])
    reader = svc.api.__class__(base_url=svc.api.base_url, headers=svc.api.headers, timeout=30)
    ms: list[float] = []
    th = threading.Thread(target=lambda: ms.extend(
        poll(reader, f"/snapshots/{body['id']}/", GET_RATE, None, svc.api, body["operation_id"])))
    th.start()
    op = svc._wait(body["operation_id"])
    secs = time.perf_counter() - t0
    th.join()
    if op["status"] != "succeeded":
        return Outcome(error=str(op.get("error"))), 0, ms
    return Outcome(secs=secs), int(body["id"]), ms


READ_MANIFEST = """
import resource, sys, time
from workers.engine import Engine
e, sid = Engine(sys.argv[1]), int(sys.argv[2])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
# grown from what is resident now, not from the peak so far (imports' freed garbage: the
# 100k tree's read hid in it, +5 MiB against +59 at 300k)
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
t0 = time.perf_counter()
raw = e.repo.get_manifest_raw(sid)
header, entries = e.repo.decode_tree(sid, raw)  # as a restore reads it: entries kept encoded
n = len(entries)
lazy_s, lazy_mem = time.perf_counter() - t0, peak() - before
del entries
t0 = time.perf_counter()
e.repo.decode_manifest(sid, raw)  # decoded whole, every Entry an object (verify)
print(n, lazy_s, lazy_mem, time.perf_counter() - t0, peak() - before)
"""


def manifest_figures(repo: Path, snapshot_id: int) -> dict[str, float]:
    size = (repo / "snapshots" / str(snapshot_id)).stat().st_size
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([PY, "-c", READ_MANIFEST, f"file://{repo}", str(snapshot_id)],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    n, secs, grown, whole_s, whole_mem = out.split()
    return {"bytes": size, "entries": int(n), "per_entry": size / int(n), "read_s": float(secs),
            "read_mem": float(grown), "whole_s": float(whole_s), "whole_mem": float(whole_mem)}


def same_files(a: Path, b: Path, files: int, k: int = 1000) -> bool:
    """k files picked at random have the same bytes in both trees (a spot check)."""
    rng = random.Random(files)
    for i in rng.sample(range(files), min(k, files)):
        rel = scaledata.entry_path(Path(), i)
        if (a / rel).read_bytes() != (b / rel).read_bytes():
            print(f"  MISMATCH at {rel}")
            return False
    return True


class SizeRun:
    """One size: ours through the service and restic, three phases, sampled memory."""

    def __init__(self, files: int, image: bool, cold: bool) -> None:
        self.files, self.image, self.cold = files, image, cold
        self.rows: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.touched: list[scaledata.Touched] = []  # undone at the end of the run (go)

    def record(self, phase: str, tool: str, res: Outcome, mem: memory.PeakSampler) -> None:
        self.rows.setdefault(phase, {})[tool] = (res, mem.peak_pss, mem.peak_rss)
        shown = f"{res.secs:.2f} s" if res.secs is not None else f"ERROR {res.error}"
        print(f"  {self.files:>9,} {phase:<26} {tool:<7} {shown:>10}  peak PSS "
              f"{mem.peak_pss / MiB:7.1f} MiB (RSS {mem.peak_rss / MiB:.1f}, "
              f"{mem.peak_procs} procs, {mem.samples} samples)  load {benchlib.loadavg()}",
              flush=True)
        for pid, name, pss, anon in mem.at_peak:  # where the peak is
            print(f"{'':>14}at the peak: {pss / MiB:6.1f} MiB PSS ({anon / MiB:.1f} anonymous)"
                  f"  {pid} {name}", flush=True)

    def cache(self, source: Path | None) -> None:
        """--cold: drop the page cache; else (warm) read the source once, untimed, so that
        both tools find it in the page cache (a restore's repository is warm: just written)."""
        if self.cold:
            drop_caches()
        elif source is not None:
            subprocess.run(f"tar -cf - -C {source.parent} {source.name} | cat > /dev/null",
                           shell=True, check=False)

    def go(self) -> None:
        tree = scaledata.build_tree(self.files)
        run = DATA / f"scale-run-{os.getpid()}"
        rmtree(run)
        run.mkdir(parents=True)
        svc: MakeRun | None = None
        try:
            restic = next(t for t in make_tools(run) if isinstance(t, Restic))
            restic.init()
            svc = MakeRun(run / "data")
            self.phases(svc, restic, run, tree)
        finally:
            if svc is not None:
                svc.stop()
            print("  (removing the run's repositories and restores, untimed) ...", flush=True)
            rmtree(run)
            scaledata.untouch(self.touched)  # the shared tree as it was built
            self.touched = []
            SETTLE_MARK.touch()  # the next size's restores wait for it (settle)

    def phases(self, svc: MakeRun, restic: Restic, run: Path, tree: Path) -> None:
        me = os.getpid()

        def ours() -> memory.PeakSampler:  # Dramatiq's main process and all below it
            return memory.PeakSampler(lambda: memory.children_named(svc.proc.pid, "dramatiq"))

        def theirs() -> memory.PeakSampler:
            return memory.PeakSampler(lambda: memory.children_named(me, "restic"))

        sid = svc.server(f"scale-{self.files}", "directory", tree)
        state = State("tree", "directory", tree, sid)
        self.cache(tree)
        with ours() as m:
            res, snap, ms = capture_polled(svc, state.server_id, "full")
        self.record("full capture", "ours", res, m)
        if ms:
            self.extra["get_one"] = {**percentiles(ms), "n": len(ms)}
        self.cache(tree)
        with theirs() as m:
            res = restic.capture(state, 1)
        self.record("full capture", "restic", res, m)
        self.touched = scaledata.touch_files(tree, self.files, TOUCHED)
        with ours() as m:
            res, snap = svc.capture(state.server_id, "incremental")
        self.record(f"incremental ({TOUCHED} files)", "ours", res, m)
        with theirs() as m:
            res = restic.capture(state, 2)
        self.record(f"incremental ({TOUCHED} files)", "restic", res, m)
        if snap:
            self.extra["manifest"] = manifest_figures(run / "data" / "repository", snap)
            print(f"  manifest: {self.extra['manifest']}", flush=True)
        target = run / "restores" / "ours"
        target.mkdir(parents=True)
        clone = svc.server(f"clone-{self.files}", "directory", target)
        # the last size's deletions (its restores: hundreds of thousands of inodes) slow the
        # file creates of a restore on ext4 without a journal: the 300k restore ran ~45 s
        # after the 100k run's removal, within the window, restic's ~20 s later
        settle()
        self.cache(None)
        with ours() as m:
            res = svc.restore(snap, clone)
        self.record("full restore ", "ours", res, m)
        old_tree_gone(target, 600)
        self.cache(None)
        dst = run / "restores" / "restic"
        with theirs() as m:
            res = restic.restore(state, 2, dst)
        self.record("full restore ", "restic", res, m)
        self.extra["spot_check"] = (same_files(tree, target, self.files)
                                    and same_files(tree, restic.restored_path(state, dst),
                                                   self.files))
        rmtree(dst)
        if self.image:
            self.image_phases(svc, restic, run, ours, theirs)

    def image_phases(self, svc: MakeRun, restic: Restic, run: Path, ours: Any,
                     theirs: Any) -> None:
        img = scaledata.build_image()
        state = State("image", "image", img, svc.server("scale-image", "image", img))
        self.cache(img)
        with ours() as m:
            res, snap = svc.capture(state.server_id, "image")
        self.record("image capture", "ours", res, m)
        self.cache(img)
        with theirs() as m:
            res = restic.capture(state, 1)
        self.record("image capture", "restic", res, m)
        target = run / "restores" / "image-ours"
        target.mkdir(parents=True)
        clone = svc.server("clone-image", "image", target / "disk.img")
        self.cache(None)
        with ours() as m:
            res = svc.restore(snap, clone)
        self.record("image restore ", "ours", res, m)
        self.cache(None)
        dst = run / "restores" / "image-restic"
        with theirs() as m:
            res = restic.restore(state, 1, dst)
        self.record("image restore ", "restic", res, m)
        ok = subprocess.run(["cmp", str(img), str(target / "disk.img")]).returncode == 0
        self.extra["image_same"] = ok
        rmtree(dst)
        rmtree(target)


def cell(o: Outcome) -> str:
    return f"{o.secs:.2f}" if o.secs is not None else "error"


def report(runs: list[SizeRun]) -> None:
    print("\nservice at scale (POST -> available / running) vs restic; restic ÷ ours; peak "
          "memory = PSS summed over the worker's process tree / restic's, sampled every 0.1 s")
    print(f"{'files':>10} {'phase':<26}{'ours':>9}{'restic':>9}{'ratio':>7}"
          f"{'ours MiB':>10}{'restic MiB':>11}")
    for r in runs:
        for phase, row in r.rows.items():
            (o, opss, _), (t, tpss, _) = row["ours"], row.get("restic", (Outcome(), 0, 0))
            ratio = f"{t.secs / o.secs:.2f}x" if o.secs and t.secs else ""
            print(f"{r.files:>10,} {phase:<26}{cell(o):>9}{cell(t):>9}{ratio:>7}"
                  f"{opss / MiB:>10.1f}{tpss / MiB:>11.1f}")
    print()
    for r in runs:
        mf, g = r.extra.get("manifest"), r.extra.get("get_one")
        if mf:
            print(f"{r.files:>10,} manifest {mf['bytes'] / MiB:.1f} MiB, {mf['entries']:,} "
                  f"entries, {mf['per_entry']:.1f} B/entry; read+decode in a fresh process "
                  f"{mf['read_s']:.2f} s, +{mf['read_mem'] / MiB:.0f} MiB peak RSS as a "
                  f"restore reads it (entries kept encoded); decoded whole (verify) "
                  f"{mf['whole_s']:.2f} s, +{mf['whole_mem'] / MiB:.0f} MiB")
        if g:
            print(f"{r.files:>10,} GET one snapshot during the full capture: {g['n']} GETs, "
                  f"p50 {g['p50']:.1f} p90 {g['p90']:.1f} p99 {g['p99']:.1f} max "
                  f"{g['max']:.1f} ms ({'PASS' if g['p99'] < 50 else 'FAIL'}: p99 < 50 ms)")
        print(f"{r.files:>10,} spot check of 1,000 restored files (ours and restic's): "
              f"{'same' if r.extra.get('spot_check') else 'DIFFERENT'}"
              + ("" if "image_same" not in r.extra else
                 f"; image restored {'bit for bit' if r.extra['image_same'] else 'DIFFERENT'}"))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="100000,300000,1000000",
                    help="sizes of the tree, comma-separated")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before every full capture and restore")
    ap.add_argument("--image", action="store_true",
                    help="also the 16 GiB sparse image, at the largest size")
    args = ap.parse_args(argv)
    sizes = sorted(int(x) for x in args.files.split(","))
    with benchlib.exclusive():
        print("command :", " ".join([".venv/bin/python", "bench/service.py", "--scale", *argv]))
        print(f"machine : {benchlib.machine()}; {benchlib.busy_fraction():.0%} of the CPUs "
              f"busy with other work at the start; load {benchlib.loadavg()}", flush=True)
        runs = []
        for n in sizes:
            r = SizeRun(n, args.image and n == sizes[-1], args.cold)
            runs.append(r)
            r.go()
            report(runs)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
