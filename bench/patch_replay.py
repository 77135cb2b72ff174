"""Replay bench/engine.py's warm restore onto a 1 %-changed rootfs (the patch path) on the
data of a kept run, under callgrind, for this checkout and a baseline, one after the other.

    .venv/bin/python bench/engine.py --quick --keep --tools none --baseline /tmp/before
    .venv/bin/python bench/patch_replay.py bench/.data/run-<stamp>-1 --baseline /tmp/before

Instruction counts do not move with the machine's load, so the two checkouts compare while
other work runs. Each replay changes the restored rootfs of its column the way the bench's
warm phase did (change_one_percent_of_tree with seed 8: the same files, as the tree equals
the snapshot after every restore), reads that tree, the repository and the engine's code
into the page cache, then runs the restore (bench/engine_op.py, a fresh process) under
`valgrind --tool=callgrind`. Prints each run's instructions (Ir) and keeps the profiles
(callgrind.out.<column>.<n> in the run directory) for callgrind_annotate.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from commands import ROOT, sh
from dataset import change_one_percent_of_tree
from filesystem import read_tree
from tools import _OURS_WARM

SNAPSHOT = 3  # the rootfs's second (incremental) capture: Ours.snapshot_id(rootfs, 2)


def _column(root: Path) -> str:
    if root == ROOT:
        return "ours"
    rev = sh(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]).out.strip()
    return f"ours@{rev or root.name}"


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as bench/tools.py runs ours: bytecode cached
    return env


def replay(run: Path, root: Path, n: int, callgrind: bool) -> int | None:
    """One warm 1 %-changed restore of root's engine; its instructions under callgrind."""
    col = _column(root)
    repo, target = run / "repo" / col, run / f"restore-{col}-rootfs"
    py, env = str(root / ".venv" / "bin" / "python"), _env(root)
    change_one_percent_of_tree(target, 8)
    read_tree(target)
    read_tree(repo)
    subprocess.run([py, "-c", _OURS_WARM, str(repo)], cwd=root, env=env, check=True)
    os.sync()
    op = [py, str(root / "bench" / "engine_op.py"), "restore", str(repo), str(SNAPSHOT),
          "directory", str(target)]
    out = run / f"callgrind.out.{col}.{n}"
    k = n
    while out.exists():  # never overwrite an earlier replay's profile
        k += 1
        out = run / f"callgrind.out.{col}.{k}"
    if callgrind:
        op = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *op]
    p = subprocess.run(op, cwd=root, env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        print(f"{col}: restore failed: {p.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    result = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), "")
    if not callgrind:
        print(f"{col} run {n}: {result}")
        return 0
    m = re.search(r"Collected : (\d+)", p.stderr)
    ir = int(m.group(1)) if m else 0
    print(f"{col} run {n}: {ir / 1e6:,.1f} M instructions  {out.name}  {result}", flush=True)
    return ir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a kept bench/.data/run-* directory")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="the --baseline checkout of that run")
    ap.add_argument("--repeat", type=int, default=1, help="replays per checkout, alternating")
    ap.add_argument("--no-callgrind", action="store_true", help="just run the restores")
    args = ap.parse_args()
    roots = [ROOT] + ([args.baseline.resolve()] if args.baseline else [])
    got: dict[Path, list[int]] = {r: [] for r in roots}
    for n in range(1, args.repeat + 1):
        for root in roots:
            # the run's path as bench/engine.py names it, resolved (bench/filesystem.py
            # DATA; a state path through a symlink is refused): a restore keeps its
            # trusted record per state path, and another spelling finds none of it
            ir = replay(args.run.resolve(), root, n, not args.no_callgrind)
            if ir is None:
                return 1
            got[root].append(ir)
    if not args.no_callgrind:
        for root, irs in got.items():
            print(f"{_column(root)}: {', '.join(f'{i / 1e6:,.1f}' for i in irs)} M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
