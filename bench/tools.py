"""The backup tools bench/engine.py compares: ours (through bench/engine_op.py, a fresh
process per operation), restic, borg, tar | zstd and cp -a."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from commands import PY, ROOT, Outcome, sh
from dataset import State

TOOLS = ["ours", "restic", "borg", "tar|zstd", "cp -a"]


def read_files(*paths: Path, skip: tuple[str, ...] = ()) -> None:
    """Untimed: every regular file under paths into the page cache (names in skip: not
    descended into)."""
    for top in paths:
        if top.is_file():
            with contextlib.suppress(OSError), top.open("rb") as f:
                while f.read(1 << 20):
                    pass
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if x not in skip]
            for name in files:
                with contextlib.suppress(OSError), open(os.path.join(d, name), "rb") as f:
                    while f.read(1 << 20):
                        pass


# What an incremental capture of ours reads besides the state: the engine's code (both
# package layouts: this checkout's and a2ff45d's), the repository's ids, pack indexes and
# manifests. Run with the checkout's own python, so its .venv and the interpreter load too.
_OURS_WARM = """
import importlib, pkgutil, sys
import workers.engine
from workers.engine import Engine
# every module of this checkout's engine (and what it imports), whichever an operation
# needs: a restore of one checkout may use modules that another imports at start-up
for mod in pkgutil.walk_packages(workers.engine.__path__, "workers.engine."):
    try:
        importlib.import_module(mod.name)
    except Exception:
        pass
repo = Engine("file://" + sys.argv[1]).repo
repo.load_known()
for sid in repo.manifest_ids():
    repo.get_manifest(sid)
"""


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

    def warm(self, state: State) -> None:
        """Untimed, before a warm (incremental) capture: the tool's own code and what it
        reads of its repository into the page cache, as after a run of it. The full
        captures drop the cache before each tool, so without this the tool that ran last
        before the incremental phase started it warm and every other one cold (ours read
        ~20 MiB of its .venv and repository from disk there, a2ff45d's column 3 MiB)."""


class Ours(Tool):
    root: Path = ROOT  # the checkout whose engine runs (another one for --baseline)

    def snapshot_id(self, state: State, seq: int) -> int:
        return 2 * (seq - 1) + state.server_id

    def _op(self, *args: str) -> Outcome:
        py, op = self.root / ".venv" / "bin" / "python", self.root / "bench" / "engine_op.py"
        res = sh([str(py), str(op), *args], cwd=self.root, env=self.env)
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

    def warm(self, state: State) -> None:
        py = self.root / ".venv" / "bin" / "python"
        sh([str(py), "-c", _OURS_WARM, str(self.repo)], cwd=self.root, env=self.env)


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

    def warm(self, state: State) -> None:
        exe = shutil.which("restic")
        read_files(*([Path(exe)] if exe else []), Path(self.env["RESTIC_CACHE_DIR"]),
                   self.repo, skip=("data",))
        sh(["restic", "-r", str(self.repo), "ls", "latest", "--path", str(state.path)],
           env=self.env)


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

    def warm(self, state: State) -> None:
        read_files(Path(self.env["BORG_BASE_DIR"]), self.repo, skip=("data",))
        sh(["borg", "info", str(self.repo)], env=self.env)


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

    def warm(self, state: State) -> None:
        read_files(*self.repo.glob(f"{state.name}*.snar"))
        sh("tar --version && zstd --version")


class Copy(Tool):
    """cp -a for the full run, cp -au (newer files only) for the incremental one."""

    def warm(self, state: State) -> None:
        for d, dirs, files in os.walk(self.repo / state.name):  # cp -au compares mtimes
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    os.lstat(os.path.join(d, name))

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


def baseline_tool(run: Path, root: Path, env: dict[str, str]) -> Ours:
    """Our engine from another checkout (with its own .venv), run beside this one in the
    same run and interleaved with it, so that before/after compare under the same load."""
    rev = sh(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]).out.strip() or root.name
    tool = Ours(f"ours@{rev}", run, dict(env, PYTHONPATH=str(root)))
    tool.root = root
    subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "compileall", "-q", "workers"],
                   cwd=root, env=tool.env, capture_output=True, check=False)
    return tool


def make_tools(run: Path, names: list[str] | None = None,
               baseline: Path | None = None) -> list[Tool]:
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
    # As installed (pip compiles bytecode): without this, a PYTHONDONTWRITEBYTECODE=1 in
    # the environment (this machine sets it) recompiles our modules in every process.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PY, "-m", "compileall", "-q", "workers"], cwd=ROOT, env=env,
                   capture_output=True, check=False)
    tools: list[Tool] = [
        Ours("ours", run, env),
        Restic("restic", run, env),
        Borg("borg", run, env),
        TarZstd("tar|zstd", run, env),
        Copy("cp -a", run, env),
    ]
    tools = [t for t in tools if names is None or t.name == "ours" or t.name in names]
    if baseline is not None:
        tools.insert(1, baseline_tool(run, baseline, env))
    return tools


def engine_available(env: dict[str, str]) -> str | None:
    """None when `import workers.engine` works in a fresh process, else the reason."""
    code = "from workers.engine import Engine, StateSpec, SnapshotMeta"
    p = subprocess.run([PY, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode == 0:
        return None
    return (p.stderr.strip().splitlines() or ["import failed"])[-1]
