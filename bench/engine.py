"""Benchmark of the snapshot engine against restic, borg, tar|zstd and cp -a.

    .venv/bin/python bench/engine.py            # Debian minbase rootfs + 300 MiB disk image
    .venv/bin/python bench/engine.py --quick    # a rootfs subset + 64 MiB image

The dataset is built once and cached under bench/.data/ (git-ignored). Every run works on
fresh repositories under bench/.data/run-*/, deleted at the end. Each of our operations runs
in a fresh process (bench/engine_op.py) so timings include start-up, like the CLI tools.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import benchlib
from dataset import build_dataset, wait_for_space
from engine_report import header, print_report
from filesystem import drop_caches
from runs import merge, one_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rootfs subset + 64 MiB image")
    ap.add_argument("--keep", action="store_true", help="keep bench/.data/run-* afterwards")
    ap.add_argument("--max-wait", type=float, default=180, help="s to wait for a quiet machine")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    ap.add_argument("--tools", help="comma-separated tools beside ours (default: all of "
                    "restic,borg,tar|zstd,cp -a)")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also run the engine of another checkout (with its own .venv, e.g. a "
                         "git worktree of an older commit), interleaved with this one")
    ap.add_argument("--inherit-dirty", action="store_true",
                    help="no untimed sync before each warm operation: each tool then also "
                         "pays the writeback of what the one before it left dirty")
    args = ap.parse_args()
    with benchlib.exclusive():
        return bench(args)


def bench(args: argparse.Namespace) -> int:
    states, desc = build_dataset(args.quick)
    if not wait_for_space(states, args.max_wait):
        return 1
    cold = drop_caches()
    header(args, cold, desc)
    runs = [one_run(args, states, cold, i) for i in range(1, args.repeat + 1)]
    kind = "quick" if args.quick else "full"
    median = f", median of {args.repeat} runs" if args.repeat > 1 else ""
    print_report(merge(runs), f"snapshot engine vs others ({kind}{median})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
