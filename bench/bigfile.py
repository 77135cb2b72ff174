"""A big file inside a directory state vs the same bytes as an image state, engine alone.

    .venv/bin/python bench/bigfile.py [--image-mib 300] [--repeat 3]

Issue 12 asks that a disk image *file* inside a directory state be as fast as the same
bytes as an `image` state, on capture and on restore. This times both with the engine
alone (`bench/engine_op.py`, a fresh process per operation, as bench/engine.py does), in
separate repositories, with the page cache dropped before every operation, and prints
the medians of wall time and of CPU time (user + system of the operation's processes,
which depends less on what else the machine runs). Every restore is compared with the
image, byte for byte.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import benchlib
from commands import PY, ROOT
from dataset import build_image
from filesystem import DATA, drop_caches, rmtree


def op(*args: str) -> tuple[float, float]:
    """(wall s, CPU s) of one engine operation in a fresh process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([PY, "bench/engine_op.py", *args], cwd=ROOT, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"engine_op {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def one_run(run: Path, image: Path, times: dict[str, list[tuple[float, float]]]) -> None:
    rmtree(run)
    for d in ("dir", "vm", "out"):
        (run / d).mkdir(parents=True)
    shutil.copyfile(image, run / "dir" / "disk.img")
    shutil.copyfile(image, run / "vm" / "disk.img")
    os.sync()
    steps = [
        ("capture · image state", ("capture", str(run / "repo-image"), "1", "1", "image",
                                   str(run / "vm" / "disk.img"))),
        ("capture · file in a directory", ("capture", str(run / "repo-dir"), "1", "1",
                                           "directory", str(run / "dir"))),
        ("restore · image state", ("restore", str(run / "repo-image"), "1", "image",
                                   str(run / "image.img"))),
        ("restore · file in a directory", ("restore", str(run / "repo-dir"), "1",
                                           "directory", str(run / "out"))),
    ]
    for label, args in steps:
        drop_caches()
        times.setdefault(label, []).append(op(*args))
    for restored in (run / "image.img", run / "out" / "disk.img"):
        if subprocess.run(["cmp", "-s", str(image), str(restored)]).returncode != 0:
            raise SystemExit(f"{restored} differs from {image}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-mib", type=int, default=300, help="size of the disk image")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the table shows medians")
    args = ap.parse_args()
    with benchlib.exclusive():
        image = DATA / f"disk-{args.image_mib}.img"
        build_image(image, args.image_mib)
        print(f"machine: {benchlib.machine()}; {benchlib.busy_fraction():.0%} of the CPUs busy "
              f"with other work at the start; load average {os.getloadavg()[0]:.1f}",
              flush=True)
        run = DATA / f"bigfile-run-{os.getpid()}"
        times: dict[str, list[tuple[float, float]]] = {}
        try:
            for _ in range(args.repeat):
                one_run(run, image, times)
        finally:
            rmtree(run)
        print(f"\n{args.image_mib} MiB disk image, engine alone, page cache dropped, "
              f"medians of {args.repeat}")
        for label, vals in times.items():
            wall = statistics.median(v[0] for v in vals)
            cpu = statistics.median(v[1] for v in vals)
            print(f"{label:<32} {wall:6.2f} s wall  {cpu:6.2f} s CPU")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
