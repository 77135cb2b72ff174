"""The service as a user times it (POST -> available, restore POST -> running) vs restic
and borg doing the same work on the same data, in the same run.

    .venv/bin/python bench/service.py [--image-mib 300] [--repeat 3] [--only capture|restore]
    .venv/bin/python bench/service.py --scale [--files 100000,300000,1000000] [--image]

Starts the service as `make run` does (deploy/run.py: embedded Redis, the Procfile's web
and worker under the supervisor) on a data directory of its own, registers a `directory`
server holding the Debian minbase rootfs of bench/dataset.py plus a disk image *file* in it,
and an `image` server holding a copy of the image, and times through the HTTP API: full
capture, one-file incremental, full restore into an empty server (a clone), and a restore
onto that clone after 1 % of its files changed. Restic and borg run the same captures and
restores on the same paths. Full restores run with the page cache dropped (cold) and again
warm. The page cache is dropped once before the full captures, so ours (first) captures
cold; restic then finds the rootfs in the cache (ours read it buffered) and the image not
(ours reads big files O_DIRECT); borg finds both. Prints one table (tool ÷ ours) and the
pick-up latency percentiles of every operation of the run (from the event stream).
--only capture: the full captures alone. --only restore: the directory server's phases a
restore is timed by (its full capture, which the restores need, its cold full restore and
the 1%-changed one), ours and restic only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import benchlib
import httpx
import redis
from commands import PY, ROOT, MiB, Outcome
from dataset import State, build_image, build_rootfs, change_one_percent_of_tree
from filesystem import DATA, drop_caches, du_bytes, rmtree
from tools import make_tools

from shared.settings import EMBEDDED_REDIS_SOCKET
from tests.support.pickup import percentiles, pickup_latencies_ms

ADMIN = "bench-service-admin-token-0123456789"
POLL_S = 0.005
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MakeRun:
    """deploy/run.py on a data directory and port of its own; its API through httpx."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(SNAPSHOTS_DATA_DIR=str(data), SNAPSHOTS_ADMIN_TOKEN=ADMIN,
                   PORT=str(self.port), HOST="127.0.0.1")
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: bytecode cached
        self.log = (data.parent / "make-run.log").open("wb")
        self.proc = subprocess.Popen([PY, "deploy/run.py"], cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1",
                                headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        deadline = time.monotonic() + 60
        while not self._up():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"make run did not come up; see {self.log.name}")
            time.sleep(0.2)
        self.redis = redis.Redis(unix_socket_path=str(data / EMBEDDED_REDIS_SOCKET))
        time.sleep(3)  # the worker boots after the web process
        self.op_ids: list[int] = []

    def _up(self) -> bool:
        try:
            return self.api.get("/hosts/").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)

    def server(self, name: str, kind: str, path: Path) -> int:
        body = {"name": name, "account": "bench", "power": {"kind": "none"},
                "state": {"kind": kind, "path": str(path)}}
        r = self.api.post("/servers/", json=body)
        r.raise_for_status()
        return int(r.json()["id"])

    def _wait(self, op_id: int) -> dict[str, Any]:
        while True:
            op: dict[str, Any] = self.api.get(f"/operations/{op_id}/").json()
            if op["status"] in TERMINAL:
                return op
            time.sleep(POLL_S)

    def capture(self, server_id: int, name: str) -> tuple[Outcome, int]:
        t0 = time.perf_counter()
        r = self.api.post("/snapshots/", json={"server_id": server_id, "name": name})
        if r.status_code != 201:
            return Outcome(error=r.text[:200]), 0
        body = r.json()
        self.op_ids.append(body["operation_id"])
        op = self._wait(body["operation_id"])
        secs = time.perf_counter() - t0
        if op["status"] != "succeeded":
            return Outcome(error=str(op.get("error"))), 0
        return Outcome(secs=secs), int(body["id"])

    def restore(self, snapshot_id: int, target: int) -> Outcome:
        t0 = time.perf_counter()
        r = self.api.post(f"/snapshots/{snapshot_id}/restore/", json={"server_id": target})
        if r.status_code != 200:
            return Outcome(error=r.text[:200])
        op_id = r.json()["operation_id"]
        self.op_ids.append(op_id)
        op = self._wait(op_id)
        if op["status"] != "succeeded":
            return Outcome(error=str(op.get("error")))
        return Outcome(secs=time.perf_counter() - t0)


Row = dict[str, Outcome]


def old_tree_gone(target: Path, timeout: float = 120) -> None:
    """Wait (untimed) until the worker's janitor removed the tree a live restore swapped
    out beside `target`, so that work never runs under the next tool's clock."""
    deadline = time.monotonic() + timeout
    prefix = f".{target.name}.restore-"
    while any(n.startswith(prefix) for n in os.listdir(target.parent)):
        if time.monotonic() > deadline:
            print(f"  (the old tree beside {target} is still there after {timeout:.0f} s)")
            return
        time.sleep(0.05)


# ext4 without a journal (this machine's root filesystem: no jbd2) does not hand out an
# inode freed in the last 60 s (recently_deleted(), 300 s while its inode table block is
# dirty) and checks every such inode again at each create: a 5,300-file restore right
# after a tree of as many files was deleted took 0.4-1.4 s of system time against
# 0.3-0.4 s otherwise (perf: 38 % of its CPU in find_inode_bit). So no restore runs in
# the minute after a removal of the bench's own: every tool's restored trees stay until
# the run ends, the 1%-changed restore (its janitor frees the old tree) comes last, and
# the restores of a run wait for the minute after the previous run's removal.
FREED_S = 61.0
_freed_at: float | None = None


def inodes_freed() -> None:
    global _freed_at
    os.sync()  # the inode tables written: their recency is the 60 s one
    _freed_at = time.monotonic()


def settle_freed_inodes() -> None:
    if _freed_at is not None and (wait := _freed_at + FREED_S - time.monotonic()) > 0:
        print(f"  (waiting {wait:.0f} s, untimed: the previous run's inodes were freed "
              "less than a minute ago)", flush=True)
        time.sleep(wait)


def timed(rows: dict[str, Row], label: str, tool: str, res: Outcome) -> None:
    rows.setdefault(label, {})[tool] = res
    shown = f"{res.secs:.2f} s" if res.secs is not None else f"ERROR {res.error}"
    print(f"  {label:<34} {tool:<7} {shown}", flush=True)


def prepare(run: Path, image_mib: int) -> tuple[State, State]:
    rootfs, image = DATA / "rootfs", DATA / f"disk-{image_mib}.img"
    build_rootfs(rootfs)
    build_image(image, image_mib)
    tree = run / "states" / "game-server"
    tree.parent.mkdir(parents=True)
    print(f"copying the rootfs and the image into {tree} ...", flush=True)
    subprocess.run(["cp", "-a", str(rootfs), str(tree)], check=True)
    shutil.copyfile(image, tree / "disk.img")
    (run / "states" / "vm").mkdir()
    shutil.copyfile(image, run / "states" / "vm" / "disk.img")  # the image server's
    vm = run / "states" / "vm" / "disk.img"
    return State("dir", "directory", tree, 0), State("image", "image", vm, 0)


Measured = tuple[dict[str, Row], dict[str, int], list[int], bool]


def one_run(args: argparse.Namespace, i: int) -> Measured:
    """One run on fresh copies of the data, a fresh service and fresh repositories."""
    run = DATA / f"service-run-{os.getpid()}-{i}"
    run.mkdir(parents=True)
    rows: dict[str, Row] = {}
    svc: MakeRun | None = None
    try:
        states: tuple[State, ...] = prepare(run, args.image_mib)
        only_restore = args.only == "restore"
        others = ("restic",) if only_restore else ("restic", "borg")
        tools = {t.name: t for t in make_tools(run) if t.name in others}
        if only_restore:
            states = states[:1]
        for t in tools.values():
            t.init()
        svc = MakeRun(run / "data")
        for st in states:
            st.server_id = svc.server(f"bench-{st.name}", st.kind, st.path)
        cold = drop_caches()
        snaps: dict[str, int] = {}
        phases = ((1, "full capture"), (2, "one-file incremental"))
        for seq, label in phases[:1] if args.only else phases:
            if seq == 2:
                (states[0].path / "etc" / "bench-incremental").write_text(f"{time.time()}\n")
            for st in states if seq == 1 else states[:1]:
                res, snaps[st.name] = svc.capture(st.server_id, f"{st.name}-{seq}")
                timed(rows, f"{label} · {st.name}", "ours", res)
                for t in tools.values():
                    timed(rows, f"{label} · {st.name}", t.name, t.capture(st, seq))
        stored = {"ours": du_bytes(run / "data" / "repository", False),
                  **{n: du_bytes(t.repo, False) for n, t in tools.items()}}
        if args.only == "capture":
            return rows, stored, pickup_latencies_ms(svc.redis, svc.op_ids), cold
        settle_freed_inodes()
        changed: tuple[Path, int, str] | None = None
        for temp in ("cold",) if only_restore else ("cold", "warm"):
            for st in states:
                label = f"full restore ({temp}) · {st.name}"
                target = run / "restores" / f"ours-{temp}-{st.name}"
                target.mkdir(parents=True)
                path = target if st.kind == "directory" else target / "disk.img"
                clone = svc.server(f"clone-{temp}-{st.name}", st.kind, path)
                if temp == "cold" and cold:
                    drop_caches()
                timed(rows, label, "ours", svc.restore(snaps[st.name], clone))
                old_tree_gone(target)
                if temp == "cold" and st.kind == "directory":
                    changed = (target, clone, label)
                for name, t in tools.items():
                    dst = run / "restores" / f"{name}-{temp}-{st.name}"
                    if temp == "cold" and cold:
                        drop_caches()
                    seq = 2 if st.kind == "directory" and not only_restore else 1
                    timed(rows, label, name, t.restore(st, seq, dst))
                    # kept until the run ends: see settle_freed_inodes
        if changed is not None:  # last: its rebuild's janitor frees the whole old tree
            target, clone, label = changed
            n = change_one_percent_of_tree(target, 12)
            if cold:
                drop_caches()
            partial = f"restore onto 1%-changed · {states[0].name} ({n} files)*"
            timed(rows, partial, "ours", svc.restore(snaps[states[0].name], clone))
            old_tree_gone(target)
            for name in tools:  # what they do to get the state back: a full restore
                rows[partial][name] = rows[label][name]
        return rows, stored, pickup_latencies_ms(svc.redis, svc.op_ids), cold
    finally:
        if svc is not None:
            svc.stop()
        if not args.keep:
            rmtree(run)
            inodes_freed()


def bench(args: argparse.Namespace) -> int:
    runs: list[Measured] = []
    for i in range(1, args.repeat + 1):
        print(f"run {i}/{args.repeat}", flush=True)
        runs.append(one_run(args, i))
    rows = {label: {tool: _median([r[0][label][tool] for r in runs
                                   if tool in r[0].get(label, {})])
                    for tool in cells}
            for label, cells in runs[-1][0].items()}
    stored = {k: int(statistics.median(r[1][k] for r in runs)) for k in runs[-1][1]}
    latencies = [ms for r in runs for ms in r[2]]
    if len(runs) > 1:
        print(f"\nmedian of {len(runs)} runs; each run's figures are printed above")
    report(rows, stored, percentiles(latencies), all(r[3] for r in runs), len(latencies))
    return 0


def _median(outs: list[Outcome]) -> Outcome:
    ok = [o.secs for o in outs if o.secs is not None]
    if len(ok) < len(outs) or not ok:  # a failed run shows as an error, not a median
        return next((o for o in outs if o.secs is None), Outcome())
    return Outcome(secs=statistics.median(ok))


def report(rows: dict[str, Row], stored: dict[str, int], pct: dict[str, float], cold: bool,
           n_ops: int) -> None:
    print(f"\nservice (POST -> available / running) vs restic, borg; tool ÷ ours"
          f"{'' if cold else ' (page cache could not be dropped: cold = warm)'}")
    print(f"{'':<44}{'ours':>9}  {'restic':>16}  {'borg':>16}")
    for label, row in rows.items():
        ours = row.get("ours", Outcome())
        cells = [f"{ours.secs:.2f} s" if ours.secs is not None else "error"]
        for name in ("restic", "borg"):
            o = row.get(name)
            if o is None:
                cells.append("")
            elif o.secs is None:
                cells.append("error")
            else:
                ratio = f" ({o.secs / ours.secs:.1f}x)" if ours.secs else ""
                cells.append(f"{o.secs:.2f} s{ratio}")
        print(f"{label:<44}{cells[0]:>9}  {cells[1]:>16}  {cells[2]:>16}")
    s = {k: v / MiB for k, v in stored.items()}
    print(f"{'stored bytes (on disk)':<44}{s['ours']:>7.1f} M  "
          + "  ".join(f"{s[n]:>8.1f} M ({s[n] / s['ours']:.2f}x)" for n in ("restic", "borg")
                      if n in s))
    print("* restic and borg: their full restore (cold), which is what they would run")
    print(f"pick-up latency (POST -> operation.started, {n_ops} operations): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in pct.items()))


def main() -> int:
    if "--scale" in sys.argv[1:]:  # the scale benchmark: bench/scale.py
        import scale
        return scale.main([a for a in sys.argv[1:] if a != "--scale"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-mib", type=int, default=300, help="size of the disk image")
    ap.add_argument("--keep", action="store_true", help="keep bench/.data/service-run-*")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the table shows medians "
                    "(issue 12's targets are medians of 3)")
    ap.add_argument("--only", choices=["capture", "restore"],
                    help="capture: the full captures alone (ours, restic, borg; no "
                    "incremental, no restores); restore: the directory server's full "
                    "capture, cold full restore and 1%%-changed restore only; ours and restic")
    args = ap.parse_args()
    with benchlib.exclusive():
        print(f"machine: {benchlib.machine()}; {benchlib.busy_fraction():.0%} of the CPUs busy "
              "with other work at the start", flush=True)
        return bench(args)


if __name__ == "__main__":
    sys.exit(main())
