"""SIGKILLed capture and restore (real subprocesses)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.repository.repository import chunk_key

from .conftest import dir_state, make_meta, record_barriers, repo_dir, stored_at
from .treecmp import assert_same, describe

ROOT = Path(__file__).resolve().parents[2]


def spawn(code: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def kill_when(proc: subprocess.Popen[bytes], cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "subprocess ended before it could be killed"
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def count_objects(repo: Path) -> set[str]:
    data = repo / "data"
    if not data.exists():
        return set()
    return {f"data/{d}/{f}" for d in os.listdir(data) for f in os.listdir(data / d)}


SLOW_STORE = """
import time
from workers.engine import tuning
from workers.engine.repository.repository import Repository
tuning.PACK_SIZE = 1  # a pack per big chunk: many objects to be killed among
_orig = Repository.put_object
def _slow(self, cid, payload):
    time.sleep(0.01)
    return _orig(self, cid, payload)
Repository.put_object = _slow
"""


def test_capture_killed_then_rerun_stores_nothing_twice(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, repo_url: str) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}").write_bytes(os.urandom(300_000))
    (src / "big").write_bytes(os.urandom(6 << 20))
    repo = tmp_path / "repo"
    proc = spawn(SLOW_STORE + f"""
import pytest

from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.repository.repository import chunk_key
from tests.engine.conftest import make_meta, dir_state
Engine({repo_url!r}).capture(make_meta(1), dir_state({str(src)!r}))
""")
    kill_when(proc, lambda: len(count_objects(repo)) >= 15)
    before = count_objects(repo)
    engine = Engine(repo_url)
    assert engine.get_snapshot(1) is None  # never committed: invisible
    barriers = record_barriers(monkeypatch, engine)
    res = engine.capture(make_meta(1), dir_state(src))
    # the killed run's chunks may not be on disk yet: the commit syncs the whole filesystem
    assert barriers == [None] and int(engine.backend.get("synced")) > 0
    written = [k for k in engine.backend.put_keys if k.startswith("data/")]
    assert written and not set(written) & before  # no chunk was written twice
    assert len(written) == len(set(written))
    assert count_objects(repo) == before | set(written)
    assert res.stored_bytes > 0 and engine.verify(1).ok
    # the rerun ends with the same snapshot as an uninterrupted capture
    engine.capture(make_meta(2), dir_state(src))
    assert engine.repo.get_manifest(1)[1] == engine.repo.get_manifest(2)[1]
    dst = tmp_path / "out"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)


SLOW_READ = """
import time
from workers.engine.repository.repository import Repository
_orig = Repository.read_chunk
def _slow(self, *args):
    time.sleep(0.02)
    return _orig(self, *args)
Repository.read_chunk = _slow
"""


def _restore_setup(tmp_path: Path, engine: Engine) -> tuple[Path, Path]:
    src = tmp_path / "snap-src"
    src.mkdir()
    (src / "sub").mkdir()
    for i in range(30):
        (src / "sub" / f"f{i:02}").write_bytes(os.urandom(100_000))
    engine.capture(make_meta(1), dir_state(src))
    cur = tmp_path / "srv"
    cur.mkdir()
    (cur / "sub").mkdir()
    for i in range(30):
        (cur / "sub" / f"f{i:02}").write_bytes(b"old state %d" % i)
    (cur / "only-old").write_text("old")
    return src, cur


def test_restore_killed_midway_leaves_old_tree(tmp_path: Path, repo_url: str,
                                               engine: Engine) -> None:
    src, cur = _restore_setup(tmp_path, engine)
    old = describe(cur)
    staging = tmp_path / ".srv.restore-1"
    proc = spawn(SLOW_READ + f"""
import pytest

from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.repository.repository import chunk_key
from tests.engine.conftest import dir_state
Engine({repo_url!r}).restore(1, dir_state({str(cur)!r}))
""")
    kill_when(proc, lambda: staging.exists() and len(list(staging.rglob("*"))) > 5)
    assert describe(cur) == old  # exactly the old tree
    assert staging.exists()
    engine.recover(dir_state(cur))
    assert sorted(os.listdir(tmp_path)) == ["repo", "snap-src", "srv"]
    assert describe(cur) == old
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)


def test_restore_killed_after_swap_leaves_new_tree(tmp_path: Path, repo_url: str,
                                                   engine: Engine) -> None:
    src, cur = _restore_setup(tmp_path, engine)
    proc = spawn(f"""
import os, signal
from workers.engine import Engine
from workers.engine.fs import removal
from tests.engine.conftest import dir_state
def _die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
removal.remove_tree = _die
Engine({repo_url!r}).restore(1, dir_state({str(cur)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    assert_same(src, cur)  # swapped: the new tree is in place
    assert (tmp_path / ".srv.restore-1" / "only-old").exists()  # old tree awaits removal
    engine.recover(dir_state(cur))
    assert sorted(os.listdir(tmp_path)) == ["repo", "snap-src", "srv"]
    assert_same(src, cur)


def test_restore_without_rename_exchange_uses_journal(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, engine: Engine) -> None:
    src, cur = _restore_setup(tmp_path, engine)

    def no_renameat2(*a: object) -> None:
        raise OSError(errno.ENOSYS, "renameat2 not available")

    monkeypatch.setattr(fsutil, "renameat2", no_renameat2)
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    assert sorted(os.listdir(tmp_path)) == ["repo", "snap-src", "srv"]
    # a crash between the two renames: journal present, state path missing -> roll forward
    os.rename(cur, tmp_path / ".srv.restore-1")
    (tmp_path / ".srv.restore-journal").write_bytes(b".srv.restore-1")
    engine.recover(dir_state(cur))
    assert_same(src, cur)
    assert sorted(os.listdir(tmp_path)) == ["repo", "snap-src", "srv"]


def test_old_tree_removal_never_enters_a_mount(tmp_path: Path, engine: Engine) -> None:
    src, cur = _restore_setup(tmp_path, engine)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host data")
    (cur / "mnt").mkdir()
    if subprocess.run(["mount", "--bind", str(outside), str(cur / "mnt")],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot bind mount here")
    try:
        res = engine.capture(make_meta(2), dir_state(cur))  # not captured through the mount
        assert res.warnings == ["mnt: mount point, contents not captured"]
        _h, body = engine.repo.get_manifest(2)
        assert b"mnt/precious" not in {e.path for e in body.entries}  # type: ignore[union-attr]
        engine.restore(1, dir_state(cur))
        assert_same(src, cur)
        assert (outside / "precious").read_text() == "host data"
        # the old tree is removed around the mount point, then set aside for later
        [old] = tmp_path.glob(".srv.restore-trash-*")
        assert sorted(os.listdir(old)) == ["mnt"]
    finally:
        for old in tmp_path.glob(".srv.restore-*"):
            subprocess.run(["umount", "-l", str(old / "mnt")], check=False)


def test_torn_objects_are_never_trusted(engine: Engine, tmp_path: Path) -> None:
    """A power loss can leave a linked but empty object; it must be stored again."""
    src = tmp_path / "srv"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))
    engine.capture(make_meta(1), dir_state(src))
    _h, body = engine.repo.get_manifest(1)
    key = chunk_key(stored_at(engine, body.entries[1])[0])  # type: ignore[union-attr]
    obj = repo_dir(engine) / key  # its pack
    obj.write_bytes(b"")  # torn
    engine.delete(1)  # no parent to reuse from: the capture must look the chunk up
    before = len(engine.backend.put_keys)
    engine.capture(make_meta(2), dir_state(src))
    # Stored again by this capture (its commit may also write the sync marker, so where in
    # its puts the chunk comes is not fixed).
    assert key in list(engine.backend.put_keys)[before:] and obj.stat().st_size > 0
    assert engine.verify(2).ok
    # the backend also replaces an empty object that is in the way of a put
    obj.write_bytes(b"")
    assert engine.backend.put(key, b"\x00payload")
    assert obj.read_bytes() == b"\x00payload"


def _descendants(pid: int) -> set[int]:
    """Every process below pid (its writer processes and their zygote), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_new_state_restore_killed_leaves_no_writer_and_after_its_swap_nothing_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore into a new state (writer processes for the small files, the restoring
    process for the big one; no sync point) SIGKILLed while it writes: no process of it
    writes on, the state path is still absent, and the next one makes it whole. Killed after
    its swap, before its record: the next restore proves every file by its content (bytes
    read: all of them), none trusted unread."""
    from workers.engine.restore.reuse import ReuseCheck

    from .test_bigfile import MiB, big_repo, make_tree

    url = big_repo(tmp_path / "repo")
    engine = Engine(url)
    src = tmp_path / "src"
    make_tree(src)  # etc/hosts and a 12 MiB big file with holes
    for d in range(10):
        (src / f"d{d}").mkdir()
        for i in range(60):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(200 + i))
    engine.capture(make_meta(1), dir_state(src))
    new, staging = tmp_path / "new", tmp_path / ".new.restore-1"
    slow = f"""
import time
from workers.engine import Engine, tuning
from workers.engine.restore import treewriter
tuning.RESTORE_PROCESS_THRESHOLD = 0
write = treewriter.TreeWriter.write_file
def slow(self, *a):
    time.sleep(0.005)
    return write(self, *a)
treewriter.TreeWriter.write_file = slow
from tests.engine.conftest import dir_state
Engine({url!r}).restore(1, dir_state({str(new)!r}))
"""
    proc = spawn(slow)
    below: set[int] = set()

    def writing() -> bool:
        below.update(_descendants(proc.pid))
        return staging.exists() and len(list(staging.rglob("f*"))) > 60

    kill_when(proc, writing)
    assert len(below) >= 2  # its writers (and their zygote) were seen
    deadline = time.monotonic() + 10
    while any(_running(p) for p in below):  # they die with it (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "a writer outlived its restore"
        time.sleep(0.01)
    assert not new.exists()
    engine.restore(1, dir_state(new))
    assert_same(src, new)
    assert sorted(os.listdir(tmp_path)) == ["new", "repo", "src"]

    shutil.rmtree(new)
    proc = spawn(f"""
import os, signal
from workers.engine import tuning
from workers.engine.restore.statecache import StateCache
tuning.RESTORE_PROCESS_THRESHOLD = 0
def _die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
StateCache.save_encoded = _die
from workers.engine import Engine
from tests.engine.conftest import dir_state
Engine({url!r}).restore(1, dir_state({str(new)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    assert_same(src, new)  # swapped: whole
    trusted: list[bool] = []
    trust = ReuseCheck.trusted

    def spied(self: ReuseCheck, *a: Any) -> bool:
        trusted.append(trust(self, *a))
        return trusted[-1]

    monkeypatch.setattr(ReuseCheck, "trusted", spied)
    got = engine.restore(1, dir_state(new))
    files = [p for p in src.rglob("*") if p.is_file()]
    assert (got.files_written, got.files_reused) == (0, len(files))
    assert len(trusted) >= len(files) and not any(trusted)  # every one proven by content
    assert engine.last_bytes_read > sum(p.stat().st_size for p in files) - 6 * MiB  # holes
    assert_same(src, new)
