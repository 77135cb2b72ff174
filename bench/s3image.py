"""An image state on S3 (SeaweedFS, `weed mini` from the wheel): ours vs restic, requests.

    .venv/bin/python bench/s3image.py                 # 256 MiB VM-disk-like image
    .venv/bin/python bench/s3image.py --mib 64 --no-restic
    .venv/bin/python bench/s3image.py --code /work/main   # another checkout's engine (A/B)

Phases: full capture, an incremental after 1 % of the blocks were rewritten, a full restore
into a new file, and a restore of the first snapshot over the changed image (the block-diff
restore). Wall time, CPU of the tool's processes (not the server's) and the S3 requests
each phase made, from SeaweedFS's own Prometheus counters (HEAD counts as GET), as
bench/s3.py counts them. The image is bench/dataset.py's (runs of log-like text, random
bytes and zeros); each restore is compared with its source by cmp. Ours runs as a fresh
process per operation, with the engine of `--code` (default: this checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if __name__ == "__main__" and sys.argv[1:2] == ["op"]:
    sys.path[0] = os.environ.get("BENCH_CODE", str(ROOT))  # the engine under test only
else:
    sys.path.insert(1, str(ROOT))

KINDS = ("PUT", "GET", "LIST", "DELETE")


def op_main(argv: list[str]) -> None:
    """A fresh process: capture or restore an image once, with the service's options."""
    from workers.engine import Engine, SnapshotMeta, StateSpec, StorageOptions

    action, url, sid, path, opts = argv[0], argv[1], int(argv[2]), argv[3], json.loads(argv[4])
    engine = Engine(url, StorageOptions(**opts))  # "init": makes the repository's config
    state = StateSpec(kind="image", path=path)
    if action == "capture":
        meta = SnapshotMeta(snapshot_id=sid, server_id=1, server_name="bench", account="bench",
                            name=f"s{sid}", description=None, created_at="2026-12-01T00:00:00Z")
        engine.capture(meta, state)
    elif action == "restore":
        engine.restore(sid, state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--code", default=str(ROOT), help="checkout whose engine runs")
    parser.add_argument("--no-restic", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    import benchlib
    from dataset import build_image, change_one_percent_of_image
    from s3 import Run, drop_caches  # noqa: F401  (drop_caches: Run's cold runs)

    from tests.support.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedProcess

    restic = None if args.no_restic else shutil.which("restic")
    code = str(Path(args.code).resolve())
    commit = subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    with benchlib.exclusive(), tempfile.TemporaryDirectory(prefix="bench-s3image-") as tmp:
        work = Path(tmp)
        print(f"command: {' '.join([sys.executable, *sys.argv])}")
        print(f"machine: {benchlib.machine()}")
        print(f"load: {benchlib.wait_quiet(180)} (shared machine: figures measured under load)")
        print(f"engine: {code} at {commit}")
        img = work / "disk.img"
        kinds = build_image(img, args.mib)
        print(f"dataset: {args.mib} MiB image, 1 MiB blocks: {kinds}")
        weed = SeaweedProcess(work / "weed").start()
        rows = []
        try:
            for bucket in ("ours", "restic"):
                weed.make_bucket(bucket)
            run = Run(weed)
            opts = json.dumps({"endpoint": weed.endpoint, "access_key_id": ACCESS_KEY,
                               "secret_access_key": SECRET_KEY, "region": REGION,
                               "cache_dir": str(work / "cache")})
            ours = [sys.executable, str(BENCH / "s3image.py"), "op"]
            url = "s3://ours/repo"
            env = dict(os.environ, BENCH_CODE=code)
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: see bench/s3.py
            subprocess.run([sys.executable, "-m", "compileall", "-q", "workers", "shared"],
                           cwd=code, env=env, capture_output=True, check=False)
            renv = {**env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "AWS_DEFAULT_REGION": REGION, "RESTIC_PASSWORD": "bench",
                    "RESTIC_CACHE_DIR": str(work / "restic-cache")}
            rrepo = f"s3:{weed.endpoint}/restic/repo"
            if restic:
                subprocess.run([restic, "-r", rrepo, "init", "--repository-version", "2"],
                               env=renv, check=True, capture_output=True)
            subprocess.run([*ours, "init", url, "0", "-", opts], env=env, check=True)
            original = work / "original.img"
            shutil.copyfile(img, original)
            rbackup = [restic or "restic", "-r", rrepo, "backup", "--compression", "auto", "-q",
                       str(img)]
            run.timed("ours", "capture", "ours", [*ours, "capture", url, "1", str(img), opts],
                      env, cold=True)
            if restic:
                run.timed("restic", "capture", "restic", rbackup, renv, cold=True)
            changed = change_one_percent_of_image(img, 7)
            run.timed("ours", "incremental", "ours",
                      [*ours, "capture", url, "2", str(img), opts], env, cold=False)
            if restic:
                run.timed("restic", "incremental", "restic", rbackup, renv, cold=False)
            out = work / "out.img"
            run.timed("ours", "restore", "ours", [*ours, "restore", url, "2", str(out), opts],
                      env, cold=True)
            if restic:
                run.timed("restic", "restore", "restic",
                          [restic or "restic", "-r", rrepo, "restore", "latest", "-q", "--target",
                           str(work / "out-restic")], renv, cold=True)
            same = [_cmp(img, out)]
            out.unlink()
            run.timed("ours", "restore-diff", "ours",
                      [*ours, "restore", url, "1", str(img), opts], env, cold=True)
            same.append(_cmp(original, img))
            rows = run.rows
        finally:
            weed.close()
    print(f"\n{changed} blocks changed for the incremental")
    print(f"\n{'tool':8} {'phase':13} {'wall s':>8} {'CPU s':>7} "
          + " ".join(f"{k:>7}" for k in KINDS))
    for tool, phase, wall, cpu, counts in rows:
        print(f"{tool:8} {phase:13} {wall:8.2f} {cpu:7.2f} "
              + " ".join(f"{counts[k]:7d}" for k in KINDS))
    print(f"\nrestores equal their source (cmp): {all(same)}")
    if not all(same):
        raise SystemExit(1)


def _cmp(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["op"]:
        op_main(sys.argv[2:])
    else:
        main()
