"""Benchmark of the snapshot engine against restic, borg, tar|zstd and cp -a.

    .venv/bin/python bench/engine.py            # Debian minbase rootfs + 300 MiB disk image
    .venv/bin/python bench/engine.py --quick    # a rootfs subset + 64 MiB image

The dataset is built once and cached under bench/.data/ (git-ignored). Every run works on
fresh repositories under bench/.data/run-*/, deleted at the end. Each of our operations runs
in a fresh process (bench/engine_op.py) so timings include start-up, like the CLI tools.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / ".data"
PY = sys.executable
MiB = 1 << 20
TIMEOUT = 3600.0
NOISY = 0.2  # a timing during which other work used more than this share of the CPUs
TOOLS = ["ours", "restic", "borg", "tar|zstd", "cp -a"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"


# --------------------------------------------------------------------------- helpers


@dataclass
class Outcome:
    """One timed operation: seconds, or an error message."""

    secs: float | None = None
    error: str | None = None
    out: str = ""
    noise: float = 0.0  # share of the machine that other work used meanwhile
    failed: int = 0  # runs in which this failed (medians over several runs)


def sh(cmd: str | list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
    """Run a command, time it, never raise."""
    shell = isinstance(cmd, str)
    argv: str | list[str] = ["bash", "-o", "pipefail", "-c", cmd] if shell else cmd
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Outcome(error=str(e))
    secs = time.perf_counter() - t0
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        tail = " | ".join(err[-3:]) or out.strip()[-300:]
        return Outcome(error=f"exit {p.returncode}: {tail[:300]}", out=out)
    return Outcome(secs=secs, out=out)


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def du_bytes(path: Path, apparent: bool) -> int:
    flag = "--apparent-size" if apparent else ""
    out = subprocess.run(
        f"du -s -B1 {flag} {shlex.quote(str(path))}", shell=True, capture_output=True, text=True
    ).stdout
    return int(out.split()[0]) if out else 0


SETTLE_MARK = DATA / ".last-cleanup"
EXT4_RECENT_S = 35  # ext4 without a journal skips inodes freed in the last 30 s on create


def fs_info(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout
    dev, fstype = out.splitlines()[-1].split()[:2] if out else ("?", "?")
    opts = Path("/proc/fs/ext4", Path(dev).name, "options")
    if fstype == "ext4" and opts.is_file() and "data=" not in opts.read_text():
        return f"{fstype} without a journal ({dev})"
    return f"{fstype} ({dev})"


def settle() -> None:
    """Wait until our last mass deletion is older than ext4's 'recently deleted' window:
    on ext4 without a journal, creating files just after deleting thousands is several
    times slower (inode allocation skips recently freed inodes), which would bias the run."""
    try:
        age = time.time() - SETTLE_MARK.stat().st_mtime
    except FileNotFoundError:
        return
    if age < EXT4_RECENT_S:
        print(f"waiting {EXT4_RECENT_S - age:.0f} s for the previous run's deletions to settle")
        time.sleep(EXT4_RECENT_S - age)


def rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- dataset


def _mirror() -> str:
    """The Debian mirror apt uses here, else deb.debian.org."""
    for src in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        try:
            for line in src.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] or words[:1] == ["deb"]:
                    url = next(w for w in words[1:] if w.startswith("http"))
                    if "security" not in url:
                        return url
        except (OSError, StopIteration):
            continue
    return DEFAULT_MIRROR


def build_rootfs(dest: Path) -> None:
    if dest.is_dir():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    rmtree(tmp)
    for mirror in dict.fromkeys([DEFAULT_MIRROR, _mirror()]):
        print(f"building {dest} with debootstrap from {mirror} (a few minutes) ...", flush=True)
        res = sh(["debootstrap", "--variant=minbase", "bookworm", str(tmp), mirror])
        if res.error is None:
            tmp.rename(dest)
            return
        print(f"  debootstrap failed: {res.error}", flush=True)
        rmtree(tmp)
    raise SystemExit("could not build the Debian rootfs with debootstrap")


def build_subset(full: Path, dest: Path, parts: list[str]) -> None:
    if dest.is_dir():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    rmtree(tmp)
    tmp.mkdir(parents=True)
    for part in parts:
        (tmp / part).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(full / part), str(tmp / part)], check=True)
    tmp.rename(dest)


_WORDS_TEXT = (
    "the server kernel systemd nginx request GET POST 200 404 500 user session login logout "
    "database query SELECT INSERT UPDATE from where table index cache miss hit worker job queue "
    "started stopped failed retry timeout connection accepted closed client upstream backend "
    "config value true false null error warning info debug trace disk memory cpu load network"
)
WORDS = _WORDS_TEXT.split()


def _text_block(rng: random.Random, size: int) -> bytes:
    lines: list[str] = []
    n = 0
    while n < size:
        ts = f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        words = " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
        host, ident = rng.randint(1, 9), rng.randint(0, 1 << 30)
        line = f"{ts}:{rng.randint(0, 59):02d}Z host{host} {words} id={ident}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def build_image(dest: Path, size_mib: int) -> dict[str, int]:
    """A VM-disk-like image: runs of log-like text, random bytes and zeros (1 MiB blocks)."""
    rng = random.Random(20261127)
    kinds = {"text": 0, "random": 0, "zero": 0}
    plan: list[str] = []
    while len(plan) < size_mib:
        kind = rng.choices(["text", "random", "zero"], weights=[4, 3, 3])[0]
        plan.extend([kind] * rng.randint(1, 16))
    plan = plan[:size_mib]
    for k in plan:
        kinds[k] += 1
    if dest.is_file() and dest.stat().st_size == size_mib * MiB:
        return kinds
    print(f"building {dest} ({size_mib} MiB) ...", flush=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as f:
        for kind in plan:
            if kind == "text":
                f.write(_text_block(rng, MiB))
            elif kind == "random":
                f.write(rng.randbytes(MiB))
            else:
                f.write(bytes(MiB))
    tmp.rename(dest)
    return kinds


@dataclass
class State:
    name: str
    kind: str  # "directory" | "image"
    path: Path
    server_id: int


def build_dataset(quick: bool) -> tuple[list[State], str]:
    DATA.mkdir(parents=True, exist_ok=True)
    full_rootfs = DATA / "rootfs"
    build_rootfs(full_rootfs)
    if quick:
        rootfs = DATA / "quick" / "rootfs"
        build_subset(full_rootfs, rootfs, ["etc", "usr/bin", "usr/sbin", "usr/share/doc", "dev"])
        image, size = DATA / "quick" / "disk.img", 64
    else:
        rootfs, image, size = full_rootfs, DATA / "disk.img", 300
    kinds = build_image(image, size)
    nfiles = sum(len(fs) + len(ds) for _, ds, fs in os.walk(rootfs))
    desc = (
        f"rootfs {rootfs.relative_to(ROOT)}: {du_bytes(rootfs, True) / MiB:.0f} MiB, "
        f"{nfiles} entries; image {image.relative_to(ROOT)}: {size} MiB "
        f"(text {kinds['text']} / random {kinds['random']} / zero {kinds['zero']} MiB)"
    )
    states = [State("rootfs", "directory", rootfs, 1), State("image", "image", image, 2)]
    return states, desc


def touch_one_file(states: list[State], seq: int) -> None:
    """The incremental change: one new small file in the rootfs, 1 MiB rewritten in the image."""
    rootfs, image = states
    (rootfs.path / "etc" / "bench-incremental").write_text(f"run {seq} at {time.time()}\n")
    with image.path.open("r+b") as f:
        f.seek(image.path.stat().st_size // 3)
        f.write(random.Random(time.time_ns()).randbytes(MiB))


def change_one_percent_of_tree(root: Path, seed: int) -> int:
    """Change 1% of the regular files: mostly appended to, some deleted, some chmod-ed."""
    files = sorted(
        Path(d, f)
        for d, _, fs in os.walk(root)
        for f in fs
        if Path(d, f).is_file() and not Path(d, f).is_symlink()
    )
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, len(files) // 100))
    for i, path in enumerate(chosen):
        if i % 10 == 0:
            path.unlink()
        elif i % 10 == 1:
            path.chmod(path.stat().st_mode ^ 0o004)
        else:
            with path.open("ab") as f:
                f.write(b"changed by bench/engine.py\n")
    (root / "bench-new-file").write_text("a file that is not in the snapshot\n")
    return len(chosen)


def change_one_percent_of_image(path: Path, seed: int) -> int:
    rng = random.Random(seed)
    blocks = path.stat().st_size // MiB
    chosen = rng.sample(range(blocks), max(1, blocks // 100))
    with path.open("r+b") as f:
        for b in chosen:
            f.seek(b * MiB)
            f.write(rng.randbytes(MiB))
    return len(chosen)


# --------------------------------------------------------------------------- correctness


_SPECIAL = ("fifo", "character special file", "block special file", "socket")


def _diff(src: Path, dst: Path) -> list[str]:
    p = subprocess.run(
        ["diff", "-r", "--no-dereference", "-q", str(src), str(dst)], capture_output=True
    )
    lines = p.stdout.decode(errors="replace").splitlines()
    return [ln for ln in lines if not any(f"is a {k} while" in ln for k in _SPECIAL)]


def _meta(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    try:
        xattrs = sorted(
            (k, os.getxattr(path, k, follow_symlinks=False))
            for k in os.listxattr(path, follow_symlinks=False)
        )
    except OSError:
        xattrs = []
    size = st.st_size if kind in (stat.S_IFREG, stat.S_IFLNK) else 0
    link = os.readlink(path) if kind == stat.S_IFLNK else None
    mtime = None if kind == stat.S_IFLNK else st.st_mtime_ns  # symlink mtimes: not compared
    return (kind, st.st_mode, st.st_uid, st.st_gid, mtime, size, link, st.st_rdev, xattrs)


_FIELDS = ("type", "mode", "uid", "gid", "mtime_ns", "size", "link", "rdev", "xattrs")


def _entries(root: Path) -> dict[str, Path]:
    out = {".": root}
    for d, ds, fs in os.walk(root):
        for name in ds + fs:
            p = Path(d, name)
            out[str(p.relative_to(root))] = p
    return out


def _link_groups(entries: dict[str, Path]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for rel, p in entries.items():
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(rel)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def compare_trees(src: Path, dst: Path) -> list[str]:
    """Differences in content (diff -r) and metadata (lstat, xattrs, hard links)."""
    problems = _diff(src, dst)
    a, b = _entries(src), _entries(dst)
    problems += [f"missing in restore: {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"extra in restore: {k}" for k in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        ma, mb = _meta(a[rel]), _meta(b[rel])
        bad = [f for f, x, y in zip(_FIELDS, ma, mb, strict=True) if x != y]
        if bad:
            problems.append(f"metadata differs ({', '.join(bad)}): {rel}")
    if _link_groups(a) != _link_groups(b):
        problems.append("hard-link groups differ")
    return problems


def compare_images(src: Path, dst: Path) -> list[str]:
    if not dst.is_file():
        return [f"{dst} missing"]
    p = subprocess.run(["cmp", "-s", str(src), str(dst)])
    return [] if p.returncode == 0 else ["image content differs (cmp)"]


def describe(problems: list[str]) -> str:
    if not problems:
        return "identical (content, type, mode, owner, mtime ns, xattrs, hard links)"
    shown = "; ".join(problems[:4])
    return f"{len(problems)} difference(s): {shown}" + (" ..." if len(problems) > 4 else "")


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    """A backup tool: captures states into repo/, restores them into a directory."""

    name: str
    run: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def repo(self) -> Path:
        return self.run / "repo" / self.name.replace(" ", "").replace("|", "-")

    def init(self) -> Outcome:
        self.repo.mkdir(parents=True)
        return Outcome(secs=0.0)

    def capture(self, state: State, seq: int) -> Outcome:
        raise NotImplementedError

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        raise NotImplementedError

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst


class Ours(Tool):
    def snapshot_id(self, state: State, seq: int) -> int:
        return 2 * (seq - 1) + state.server_id

    def _op(self, *args: str) -> Outcome:
        res = sh([PY, str(BENCH / "engine_op.py"), *args], cwd=ROOT, env=self.env)
        for line in res.out.splitlines():
            if line.startswith("RESULT "):
                res.out = line[7:]
        return res

    def capture(self, state: State, seq: int) -> Outcome:
        sid = str(self.snapshot_id(state, seq))
        return self._op(
            "capture", str(self.repo), sid, str(state.server_id), state.kind, str(state.path)
        )

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        target = dst / state.path.name if state.kind == "image" else dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        if state.kind == "image":
            dst.mkdir(parents=True, exist_ok=True)
        return self._op(
            "restore", str(self.repo), str(self.snapshot_id(state, seq)), state.kind, str(target)
        )

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst / state.path.name if state.kind == "image" else dst


class Restic(Tool):
    ids: dict[tuple[str, int], str]

    def init(self) -> Outcome:
        self.ids = {}
        return sh(
            ["restic", "-r", str(self.repo), "init", "--repository-version", "2"], env=self.env
        )

    def capture(self, state: State, seq: int) -> Outcome:
        res = sh(
            [
                "restic",
                "-r",
                str(self.repo),
                "backup",
                "--json",
                "--host",
                "bench",
                "--compression",
                "auto",
                str(state.path),
            ],
            env=self.env,
        )
        for line in res.out.splitlines():
            if '"summary"' in line:
                self.ids[(state.name, seq)] = json.loads(line)["snapshot_id"]
        return res

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        sid = self.ids.get((state.name, seq), "latest")
        return sh(
            ["restic", "-r", str(self.repo), "restore", sid, "--target", str(dst)], env=self.env
        )

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst / str(state.path).lstrip("/")


class Borg(Tool):
    def init(self) -> Outcome:
        return sh(["borg", "init", "-e", "none", str(self.repo)], env=self.env)

    def capture(self, state: State, seq: int) -> Outcome:
        src = state.path if state.kind == "directory" else state.path.parent
        what = "." if state.kind == "directory" else state.path.name
        return sh(
            ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{state.name}-{seq}", what],
            cwd=src,
            env=self.env,
        )

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        dst.mkdir(parents=True)
        return sh(["borg", "extract", f"{self.repo}::{state.name}-{seq}"], cwd=dst, env=self.env)

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst / state.path.name if state.kind == "image" else dst


TAR_OPTS = "--xattrs --xattrs-include='*' --numeric-owner"


class TarZstd(Tool):
    """GNU tar with --listed-incremental, piped to zstd -3 -T0."""

    def _src(self, state: State) -> tuple[Path, str]:
        if state.kind == "directory":
            return state.path, "."
        return state.path.parent, state.path.name

    def capture(self, state: State, seq: int) -> Outcome:
        snar = self.repo / f"{state.name}.snar"
        if seq > 1:
            shutil.copy(snar, self.repo / f"{state.name}-{seq}.snar")
            snar = self.repo / f"{state.name}-{seq}.snar"
        src, what = self._src(state)
        out = self.repo / f"{state.name}-{seq}.tar.zst"
        return sh(
            f"tar -C {shlex.quote(str(src))} {TAR_OPTS} --listed-incremental={snar} "
            f"-cf - {shlex.quote(what)} | zstd -3 -T0 -q -o {out}"
        )

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        dst.mkdir(parents=True)
        cmds = [
            f"zstd -dc {self.repo}/{state.name}-{i}.tar.zst | tar -C {dst} {TAR_OPTS} "
            f"--listed-incremental=/dev/null -xpf -"
            for i in range(1, seq + 1)
        ]
        return sh(" && ".join(cmds))

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst / state.path.name if state.kind == "image" else dst


class Copy(Tool):
    """cp -a for the full run, cp -au (newer files only) for the incremental one."""

    def capture(self, state: State, seq: int) -> Outcome:
        dst = self.repo / state.name
        if seq == 1:
            return sh(["cp", "-a", str(state.path), str(dst)])
        if state.kind == "directory":
            return sh(["cp", "-au", f"{state.path}/.", f"{dst}/"])
        return sh(["cp", "-au", str(state.path), str(dst)])

    def restore(self, state: State, seq: int, dst: Path) -> Outcome:
        if state.kind == "image":
            dst.mkdir(parents=True)
            return sh(["cp", "-a", str(self.repo / state.name), str(dst / state.path.name)])
        return sh(["cp", "-a", str(self.repo / state.name), str(dst)])

    def restored_path(self, state: State, dst: Path) -> Path:
        return dst / state.path.name if state.kind == "image" else dst


def make_tools(run: Path) -> list[Tool]:
    env = dict(os.environ)
    env.update(
        RESTIC_PASSWORD="bench",
        RESTIC_CACHE_DIR=str(run / "cache" / "restic"),
        BORG_BASE_DIR=str(run / "cache" / "borg"),
        BORG_PASSPHRASE="",
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        XDG_CACHE_HOME=str(run / "cache" / "xdg"),
        PYTHONPATH=str(ROOT),
    )
    return [
        Ours("ours", run, env),
        Restic("restic", run, env),
        Borg("borg", run, env),
        TarZstd("tar|zstd", run, env),
        Copy("cp -a", run, env),
    ]


def engine_available(env: dict[str, str]) -> str | None:
    """None when `import workers.engine` works in a fresh process, else the reason."""
    code = "from workers.engine import Engine, StateSpec, SnapshotMeta"
    p = subprocess.run([PY, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode == 0:
        return None
    return (p.stderr.strip().splitlines() or ["import failed"])[-1]


# --------------------------------------------------------------------------- the run


Results = dict[str, dict[str, Outcome]]  # phase -> tool -> outcome


@dataclass
class Run:
    states: list[State]
    tools: list[Tool]
    cold: bool
    results: Results = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine_error: str | None = None

    def record(self, phase: str, tool: Tool, fn: Callable[[], Outcome], cold: bool) -> Outcome:
        if isinstance(tool, Ours) and self.engine_error:
            res = Outcome(error="engine not available")
        else:
            if cold and self.cold:
                drop_caches()
            noise = benchlib.Noise()
            res = fn()
            res.noise = noise.fraction()
        self.results.setdefault(phase, {})[tool.name] = res
        status = f"{res.secs:.2f} s" if res.secs is not None else f"ERROR {res.error}"
        status += f"   (other work meanwhile: {res.noise:.0%} of the CPUs)"
        print(f"  {phase:<34} {tool.name:<9} {status}", flush=True)
        return res


def phase_capture(run: Run) -> None:
    for tool in run.tools:
        init = tool.init() if not (isinstance(tool, Ours) and run.engine_error) else Outcome(0.0)
        if init.error:
            print(f"  {tool.name}: init failed: {init.error}")
    for seq, label in ((1, "full capture"), (2, "incremental capture")):
        if seq == 2:
            touch_one_file(run.states, seq)
        for state in run.states:
            for tool in run.tools:
                run.record(
                    f"{label} · {state.name}",
                    tool,
                    lambda t=tool, s=state, q=seq: t.capture(s, q),
                    cold=seq == 1,
                )


def phase_restore(run: Run, where: Path) -> dict[str, Path]:
    targets: dict[str, Path] = {}
    for state in run.states:
        for tool in run.tools:
            dst = where / f"restore-{tool.repo.name}-{state.name}"
            run.record(
                f"full restore · {state.name}",
                tool,
                lambda t=tool, s=state, d=dst: t.restore(s, 2, d),
                cold=True,
            )
            targets[f"{tool.name}/{state.name}"] = tool.restored_path(state, dst)
            if state.kind == "image" and not isinstance(tool, Ours):
                rmtree(dst)  # disk space; one big file, so no ext4 inode churn (see settle)
    return targets


def phase_verify_ours(run: Run, targets: dict[str, Path], label: str) -> None:
    if run.engine_error:
        return
    for state in run.states:
        got = targets[f"ours/{state.name}"]
        if run.results[f"full restore · {state.name}"]["ours"].error:
            continue
        if state.kind == "directory":
            problems = compare_trees(state.path, got)
        else:
            problems = compare_images(state.path, got)
        run.checks.append(f"{label} · {state.name}: {describe(problems)}")


def _change_one_percent(state: State, target: Path, seed: int) -> str:
    if state.kind == "directory":
        n = change_one_percent_of_tree(target, seed)
        return f"{n} files changed/deleted/chmod-ed + 1 added"
    n = change_one_percent_of_image(target, seed)
    return f"{n} MiB blocks rewritten"


def phase_partial_restore(run: Run, where: Path, targets: dict[str, Path], warm: bool) -> None:
    """Our restore of the snapshot onto our restored state after 1% of it changed."""
    ours = next(t for t in run.tools if isinstance(t, Ours))
    label = " (warm)" if warm else ""
    for state in run.states:
        phase = f"restore onto 1%-changed{label} · {state.name}"
        full = run.results[f"full restore · {state.name}"]["ours"]
        if full.error or run.engine_error:
            run.record(phase, ours, lambda: Outcome(error="no full restore to start from"), False)
            continue
        what = _change_one_percent(state, targets[f"ours/{state.name}"], 8 if warm else 7)
        run.checks.append(f"1%-changed{label} {state.name} target: {what}")
        res = run.record(
            phase,
            ours,
            lambda s=state: ours.restore(s, 2, where / f"restore-ours-{s.name}"),
            cold=not warm,
        )
        if res.error:
            run.checks.append(f"restore onto 1%-changed{label} {state.name} FAILED: {res.error}")
    phase_verify_ours(run, targets, f"restore onto 1%-changed{label}, compared with source")


def startup_cost(run: Run) -> None:
    """What every one of our operations pays before doing any work (warm cache, best of 3)."""
    if run.engine_error:
        return
    argv = [PY, "-c", "import workers.engine"]
    best = min(sh(argv, cwd=ROOT, env=run.tools[0].env).secs or 0.0 for _ in range(3))
    bare = min(sh([PY, "-c", "pass"]).secs or 0.0 for _ in range(3))
    run.notes.append(
        f"start-up included in each of our timings: python {bare:.3f} s, "
        f"python + import workers.engine {best:.3f} s (warm, best of 3)"
    )


def execute(run: Run, where: Path) -> None:
    print("capture:", flush=True)
    phase_capture(run)
    startup_cost(run)
    for tool in run.tools:
        if tool.repo.exists() or isinstance(tool, Ours):
            sizes = {"stored bytes (apparent)": True, "stored bytes (on disk)": False}
            for phase, apparent in sizes.items():
                res = Outcome(secs=float(du_bytes(tool.repo, apparent)))
                if isinstance(tool, Ours) and run.engine_error:
                    res = Outcome(error="engine not available")
                run.results.setdefault(phase, {})[tool.name] = res
    print("restore:", flush=True)
    targets = phase_restore(run, where)
    phase_verify_ours(run, targets, "full restore, compared with source")
    print("restore onto a 1%-changed state (cold cache):", flush=True)
    phase_partial_restore(run, where, targets, warm=False)
    print(f"restore onto a 1%-changed state (warm cache, after {EXT4_RECENT_S} s):", flush=True)
    time.sleep(EXT4_RECENT_S)  # our restore removed the old tree: let ext4 settle (see settle)
    phase_partial_restore(run, where, targets, warm=True)


# --------------------------------------------------------------------------- report


def total(results: Results, prefix: str, tool: str) -> Outcome:
    parts = [v[tool] for k, v in results.items() if k.startswith(prefix) and tool in v]
    if not parts or any(p.secs is None for p in parts):
        errs = [p.error for p in parts if p.error]
        return Outcome(error=errs[0] if errs else "n/a")
    return Outcome(secs=sum(p.secs or 0.0 for p in parts), noise=max(p.noise for p in parts))


def fmt(res: Outcome | None, ours: Outcome | None, is_bytes: bool) -> str:
    if res is None:
        return ""
    if res.secs is None:
        return "n/a" if res.error == "engine not available" else f"ERR: {(res.error or '')[:40]}"
    val = f"{res.secs / MiB:.1f} MiB" if is_bytes else f"{res.secs:.2f} s"
    if res.noise > NOISY:
        val += "*"
    if res.failed:
        val += f" ({res.failed} FAILED)"
    if ours is None or ours.secs is None or ours is res or not ours.secs:
        return val
    return f"{val} ({res.secs / ours.secs:.1f}x)"


def table_rows(run: Run) -> list[tuple[str, list[str]]]:
    res = dict(run.results)
    for prefix in ("full capture", "full restore"):
        res[f"{prefix} · total"] = {t.name: total(run.results, prefix, t.name) for t in run.tools}
    order = [
        "full capture · rootfs",
        "full capture · image",
        "full capture · total",
        "incremental capture · rootfs",
        "incremental capture · image",
        "stored bytes (apparent)",
        "stored bytes (on disk)",
        "full restore · rootfs",
        "full restore · image",
        "full restore · total",
        "restore onto 1%-changed · rootfs",
        "restore onto 1%-changed · image",
        "restore onto 1%-changed (warm) · rootfs",
        "restore onto 1%-changed (warm) · image",
    ]
    rows = []
    for phase in order:
        cells = res.get(phase, {})
        ours = cells.get("ours")
        is_bytes = phase.startswith("stored")
        rows.append((phase, [fmt(cells.get(t.name), ours, is_bytes) for t in run.tools]))
    return rows


def print_table(run: Run, title: str) -> None:
    rows = table_rows(run)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(["phase", *TOOLS]))
        for phase, cells in rows:
            print(" | ".join([phase, *cells]))
        return
    table = Table(
        title=title,
        caption="(Nx) = tool ÷ ours: above 1 means ours is faster/smaller; "
        f"* = other work used more than {NOISY:.0%} of the CPUs meanwhile (noisy)",
    )
    table.add_column("phase")
    for name in TOOLS:
        table.add_column(name, justify="right")
    for phase, cells in rows:
        table.add_row(phase, *cells)
    Console(width=160).print(table)


def targets(run: Run) -> list[tuple[str, bool | None, str]]:
    r = run.results
    ours_cap, restic_cap = total(r, "full capture", "ours"), total(r, "full capture", "restic")
    ours_res, restic_res = total(r, "full restore", "ours"), total(r, "full restore", "restic")
    ours_b = r.get("stored bytes (apparent)", {}).get("ours", Outcome())
    restic_b = r.get("stored bytes (apparent)", {}).get("restic", Outcome())
    inc = r.get("incremental capture · rootfs", {}).get("ours", Outcome())
    part = r.get("restore onto 1%-changed · rootfs", {}).get("ours", Outcome())
    full = r.get("full restore · rootfs", {}).get("ours", Outcome())
    warm = r.get("restore onto 1%-changed (warm) · rootfs", {}).get("ours", Outcome())

    def ratio(a: Outcome, b: Outcome) -> float | None:
        return None if a.secs is None or b.secs is None or not b.secs else a.secs / b.secs

    cap, byt, rst, prt = (
        ratio(restic_cap, ours_cap),
        ratio(ours_b, restic_b),
        ratio(restic_res, ours_res),
        ratio(full, part),
    )
    return [
        (
            "full capture >= 2x faster than restic",
            None if cap is None else cap >= 2,
            "n/a" if cap is None else f"{cap:.2f}x",
        ),
        (
            "stored bytes <= restic's",
            None if byt is None else byt <= 1,
            "n/a" if byt is None else f"ours/restic = {byt:.3f}",
        ),
        (
            "incremental capture of a one-file change < 0.5 s (rootfs)",
            None if inc.secs is None else inc.secs < 0.5,
            "n/a" if inc.secs is None else f"{inc.secs:.3f} s",
        ),
        (
            "full restore >= 2x faster than restic",
            None if rst is None else rst >= 2,
            "n/a" if rst is None else f"{rst:.2f}x",
        ),
        (
            "1%-changed restore >= 10x faster than full restore (rootfs)",
            None if prt is None else prt >= 10,
            "n/a" if prt is None else f"{prt:.1f}x cold/cold" + _warm_note(full, warm),
        ),
    ]


def _warm_note(full: Outcome, warm: Outcome) -> str:
    if full.secs is None or not warm.secs:
        return ""
    return f" (cold full / warm 1%-changed: {full.secs / warm.secs:.1f}x)"


def print_report(run: Run, title: str) -> None:
    print()
    print_table(run, title)
    print("\ntargets:")
    for name, ok, value in targets(run):
        verdict = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {verdict}  {name}: {value}")
    print("\ncorrectness of our restores:")
    for line in run.checks or ["  (none: engine not available)"]:
        print(f"  {line}")
    ours_out = {k: v["ours"].out for k, v in run.results.items() if "ours" in v and v["ours"].out}
    if ours_out:
        print("\nengine results:")
        for phase, out in ours_out.items():
            print(f"  {phase}: {out[:200]}")
    for note in run.notes:
        print(f"  {note}")


def header(args: argparse.Namespace, cold: bool, desc: str) -> None:
    versions = [
        sh(cmd).out.splitlines()[:1]
        for cmd in (["restic", "version"], ["borg", "--version"], ["zstd", "--version"])
    ]
    print("command :", " ".join([".venv/bin/python", "bench/engine.py", *sys.argv[1:]]))
    print(f"machine : {benchlib.machine()}, fs {fs_info(DATA)}")
    tools = "; ".join(v[0] for v in versions if v)
    print(f"tools   : {tools}; python {platform.python_version()}")
    print("dataset :", desc)
    print(
        "cache   :",
        "page cache dropped before every full capture and every restore"
        if cold
        else "WARM cache for every tool alike (could not drop the page cache)",
    )
    print(
        "options : restic repo v2 --compression auto; borg -e none zstd,3; tar --xattrs |"
        " zstd -3 -T0; incremental = 1 new file in rootfs + 1 MiB rewritten in image"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rootfs subset + 64 MiB image")
    ap.add_argument("--keep", action="store_true", help="keep bench/.data/run-* afterwards")
    ap.add_argument("--max-wait", type=float, default=180, help="s to wait for a quiet machine")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the table shows medians")
    args = ap.parse_args()
    with benchlib.exclusive():
        return bench(args)


def wait_for_space(states: list[State], max_wait: float) -> bool:
    """Enough free space for the repositories and restores of a run (about 6x the data)?"""
    need = 6 * sum(du_bytes(s.path, True) for s in states)
    deadline = time.monotonic() + max_wait
    while (free := shutil.disk_usage(DATA).free) < need:
        if time.monotonic() > deadline:
            print(f"not enough free space in {DATA}: {free / MiB:.0f} MiB, need ~{need / MiB:.0f}")
            return False
        print(f"waiting for free space: {free / MiB:.0f} MiB free, need ~{need / MiB:.0f}")
        time.sleep(15)
    return True


def one_run(args: argparse.Namespace, states: list[State], cold: bool, i: int) -> Run:
    where = DATA / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{i}"
    where.mkdir(parents=True)
    run = Run(states, make_tools(where), cold)
    run.engine_error = engine_available(run.tools[0].env)
    if run.engine_error:
        print(f"engine not available: {run.engine_error}")
    try:
        settle()
        print(f"run {i}/{args.repeat}")
        print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
        execute(run, where)
        print(f"load    : 1-minute load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            rmtree(where)
            SETTLE_MARK.touch()
    return run


def _median(outs: list[Outcome]) -> Outcome:
    ok = [o for o in outs if o.secs is not None]
    if not ok:
        return outs[-1]
    return Outcome(
        secs=statistics.median(o.secs or 0.0 for o in ok),
        noise=statistics.median(o.noise for o in ok),
        out=ok[-1].out,
        failed=len(outs) - len(ok),
    )


def merge(runs: list[Run]) -> Run:
    """Median of every cell over the runs; every correctness line of every run."""
    last = runs[-1]
    if len(runs) == 1:
        return last
    merged = Run(last.states, last.tools, last.cold, notes=last.notes)
    merged.engine_error = last.engine_error
    for phase, cells in last.results.items():
        merged.results[phase] = {
            tool: _median(
                [r.results[phase][tool] for r in runs if tool in r.results.get(phase, {})]
            )
            for tool in cells
        }
    for i, run in enumerate(runs, 1):
        merged.checks += [f"run {i}: {line}" for line in run.checks]
    return merged


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
