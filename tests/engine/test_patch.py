"""Patch restore: a state that differs little is changed in place under an undo journal."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from workers.engine import Engine, EngineError, StateFull, TransientEngineError, tuning
from workers.engine.fs import fsutil
from workers.engine.restore import patch
from workers.engine.restore.patchplan import Planner
from workers.engine.restore.reuse import ReuseCheck

from .conftest import dir_state, make_meta
from .test_crash import spawn
from .treecmp import assert_same, describe


def _tree(root: Path) -> None:
    """100 files over a few directories, a hard-link group, symlinks, an xattr on a dir."""
    for d in ("a", "a/deep", "b", "c", "gone-dir"):
        (root / d).mkdir(parents=True)
    for i in range(100):
        d = ("a", "a/deep", "b", "c")[i % 4]
        (root / d / f"f{i:03}").write_bytes(os.urandom(3000 + i))
    (root / "gone-dir" / "inside").write_text("a directory the tenant will remove")
    (root / "hl").write_text("linked")
    os.link(root / "hl", root / "b" / "hl2")
    os.symlink("a/f000", root / "link")
    os.setxattr(root / "c", "user.tag", b"dir xattr")
    os.chmod(root / "b", 0o750)


def _inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_ino for p in root.rglob("*")}


def _setup(tmp_path: Path, engine: Engine) -> tuple[Path, Path]:
    """A snapshot of srv, then srv changed by its tenant in every way a patch handles."""
    src = tmp_path / "orig"
    _tree(src)
    cur = tmp_path / "srv"
    shutil.copytree(src, cur, symlinks=True)  # copytree copies times, modes, xattrs
    os.link(cur / "hl", cur / "b" / "hl2.tmp")
    os.replace(cur / "b" / "hl2.tmp", cur / "b" / "hl2")  # copytree broke the group
    for p in sorted(cur.rglob("*"), key=lambda q: -len(q.parts)):
        os.utime(p, ns=(os.lstat(src / p.relative_to(cur)).st_mtime_ns,) * 2,
                 follow_symlinks=False)
    os.utime(cur, ns=(os.stat(src).st_mtime_ns,) * 2)
    assert describe(cur) == describe(src)
    engine.capture(make_meta(1), dir_state(cur))
    shutil.rmtree(src)
    (cur / "a" / "f000").write_bytes(b"changed content")  # content
    (cur / "a" / "deep" / "f001").unlink()  # deleted file
    os.chmod(cur / "b" / "f002", 0o600)  # metadata only
    (cur / "new-file").write_text("extra")  # extra file
    (cur / "c" / "extra-dir" / "x").mkdir(parents=True)  # extra subtree
    shutil.rmtree(cur / "gone-dir")  # missing subtree
    (cur / "link").unlink()
    os.symlink("elsewhere", cur / "link")  # symlink retargeted
    (cur / "b" / "hl2").unlink()
    (cur / "b" / "hl2").write_text("linked")  # hard link broken into a copy
    os.removexattr(cur / "c", "user.tag")  # dir xattr
    os.chmod(cur / "b", 0o755)  # dir mode
    (cur / "a" / "f004").unlink()
    (cur / "a" / "f004").mkdir()  # type change: file -> directory
    ref = tmp_path / "ref"  # what the snapshot holds, by a restore into a new directory
    engine.restore(1, dir_state(ref))
    return ref, cur


def test_patch_changes_only_what_differs(tmp_path: Path, engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
    before = _inodes(cur)
    r = engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    after = _inodes(cur)
    kept = [p for p in after if before.get(p) == after[p]]
    assert len(kept) >= 95  # patched in place: the untouched entries are the same inodes
    assert before["a/f000"] != after["a/f000"] and before["b/f002"] != after["b/f002"]
    assert r.files_reused == 96 and r.files_written == 6  # 4 files, gone-dir/inside, hl
    assert sorted(os.listdir(tmp_path)) == ["ref", "repo", "srv"]  # nothing left over
    # the trusted record covers the single-link files the patch wrote: the next restore
    # reads only the hard-linked one (b"linked", 6 bytes), which records never vouch for
    (cur / "c" / "f003").write_bytes(b"x")
    r = engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    assert (r.files_written, engine.last_bytes_read) == (1, 6)


def test_patch_never_follows_a_tenant_symlink(tmp_path: Path, engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
    out = tmp_path / "outside"
    out.mkdir()
    (out / "f002").write_text("host file with a name from the snapshot")
    os.chmod(out, 0o700)
    shutil.rmtree(cur / "b")
    os.symlink(out, cur / "b")  # a directory of the snapshot replaced by a symlink out
    outside = describe(out)
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    assert describe(out) == outside


def test_planner_gives_up_when_much_differs(tmp_path: Path, engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
    for p in [p for p in sorted((cur / "a").glob("f*")) if p.is_file()][:20]:
        p.write_text("changed")
    _h, body = engine.repo.get_manifest(1)
    entries = body.entries  # type: ignore[union-attr]

    def plan(limit: int) -> object:
        fd = os.open(cur, fsutil.DIR_FLAGS)
        try:
            return Planner(entries, limit, set(), ReuseCheck(engine.repo)).run(fd)
        finally:
            os.close(fd)

    assert plan(10) is None
    assert plan(1000) is not None
    engine.restore(1, dir_state(cur))  # through staging
    assert_same(src, cur)


def die_at_rename(n: int) -> str:
    return f"""
import os, signal
from workers.engine.fs import fsutil
from workers.engine.restore import patch
calls = [0]
orig = fsutil.renameat2
def dying(*a):
    calls[0] += 1
    if calls[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(*a)
patch.fsutil.renameat2 = dying
"""


def test_patch_killed_midway_is_undone(tmp_path: Path, repo_url: str, engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
    old = describe(cur)
    proc = spawn(die_at_rename(4) + f"""
from workers.engine import Engine
from tests.engine.conftest import dir_state
Engine({repo_url!r}).restore(1, dir_state({str(cur)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    assert describe(cur) != old  # killed mid-apply: a mix until recovery runs
    assert (tmp_path / ".srv.restore-patch" / "journal").exists()
    engine.recover(dir_state(cur))
    assert describe(cur) == old
    assert sorted(os.listdir(tmp_path)) == ["ref", "repo", "srv"]
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)


def test_capture_after_a_killed_patch_sees_the_old_state(tmp_path: Path, repo_url: str,
                                                          engine: Engine) -> None:
    _src, cur = _setup(tmp_path, engine)
    old = describe(cur)
    proc = spawn(die_at_rename(3) + f"""
from workers.engine import Engine
from tests.engine.conftest import dir_state
Engine({repo_url!r}).restore(1, dir_state({str(cur)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    engine.capture(make_meta(2), dir_state(cur))  # recovers first: never captures a mix
    assert describe(cur) == old
    out = tmp_path / "out"
    engine.restore(2, dir_state(out))
    assert describe(out) == old


def test_a_killed_patch_never_blocks_later_operations_once_its_tenant_changed_the_tree(
        tmp_path: Path, repo_url: str, engine: Engine) -> None:
    """The server ran again after the killed patch and its tenant removed a directory the
    undo journal names, replaced another by a symlink and took a name it would put back:
    undo puts back what it can, and every later operation works (each failed for good on
    a directory gone or made a symlink before: FileNotFoundError, NotADirectoryError)."""
    src, cur = _setup(tmp_path, engine)
    proc = spawn(die_at_rename(4) + f"""
from workers.engine import Engine
from tests.engine.conftest import dir_state
Engine({repo_url!r}).restore(1, dir_state({str(cur)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    shutil.rmtree(cur / "a")
    shutil.rmtree(cur / "b")
    os.symlink("/etc", cur / "b")
    if not (cur / "new-file").exists():
        (cur / "new-file").write_text("the tenant's own, made since")
    engine.capture(make_meta(2), dir_state(cur))
    assert not (tmp_path / ".srv.restore-patch").exists()
    assert os.readlink(cur / "b") == "/etc"  # the tenant's change stays as it made it
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)


def test_patch_killed_after_commit_keeps_the_new_state(tmp_path: Path, repo_url: str,
                                                        engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
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
    assert_same(src, cur)
    engine.recover(dir_state(cur))
    assert_same(src, cur)
    assert sorted(os.listdir(tmp_path)) == ["ref", "repo", "srv"]


def test_patch_failing_midway_rolls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         engine: Engine) -> None:
    _src, cur = _setup(tmp_path, engine)
    old = describe(cur)
    calls = [0]
    orig = fsutil.renameat2

    def failing(*a: object) -> None:
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        orig(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "renameat2", failing)
    with pytest.raises(StateFull, match="No space"):  # ENOSPC in a restore: state_full
        engine.restore(1, dir_state(cur))
    assert describe(cur) == old
    assert sorted(os.listdir(tmp_path)) == ["ref", "repo", "srv"]


def test_patch_leaves_a_mount_point_alone(tmp_path: Path, engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host data")
    (cur / "mnt").mkdir()
    if subprocess.run(["mount", "--bind", str(outside), str(cur / "mnt")],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot bind mount here")
    try:
        engine.restore(1, dir_state(cur))  # an extra mount point: the staging path
        assert (outside / "precious").read_text() == "host data"
        # the mount point went with the old tree, which is removed around it and set aside
        [old] = tmp_path.glob(".srv.restore-trash-*")
        assert (old / "mnt" / "precious").exists()
        assert_same(src, cur)
    finally:
        for old in tmp_path.glob(".srv.restore-*"):
            subprocess.run(["umount", "-l", str(old / "mnt")], check=False)
        subprocess.run(["umount", "-l", str(cur / "mnt")], check=False)


def test_a_live_server_is_patched_only_while_no_process_writes_a_kept_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: Engine) -> None:
    # Nothing stopped it. With no kept file open for writing anywhere, the patch is as safe
    # as the rebuild (leases.py): kept in place, the unchanged files' inodes stay.
    src, cur = _setup(tmp_path, engine)
    before = _inodes(cur)
    engine.restore(1, dir_state(cur), live=True)
    assert_same(src, cur)
    kept = _inodes(cur)
    assert kept["c/f007"] == before["c/f007"]  # patched in place, not rebuilt
    # A process holding one open for writing: rebuilt, never patched (the writer's inode
    # is copied, test_live_restore.py)
    (cur / "b" / "f010").write_text("changed")
    fd = os.open(cur / "c" / "f011", os.O_WRONLY)
    try:
        def no_patch(*a: object) -> None:
            raise AssertionError("a live server was patched under a writer")

        monkeypatch.setattr(patch.Patcher, "run", no_patch)
        engine.restore(1, dir_state(cur), live=True)
    finally:
        os.close(fd)
    assert_same(src, cur)
    assert _inodes(cur)["c/f007"] != kept["c/f007"]  # rebuilt, copied


def test_one_restore_at_a_time_per_state(tmp_path: Path, engine: Engine) -> None:
    # A job taken over while its first worker still runs (a long Redis outage) must not
    # undo, clean up or swap under it: the second restore fails with a retried error.
    src, cur = _setup(tmp_path, engine)
    old = describe(cur)
    with engine._state_lock(dir_state(cur)):  # what the running restore holds
        with pytest.raises(EngineError, match="still running") as exc:
            engine.restore(1, dir_state(cur))
        assert isinstance(exc.value, TransientEngineError)  # the job layer retries it
        with pytest.raises(EngineError, match="still running"):
            engine.recover(dir_state(cur))
        assert describe(cur) == old
        engine.restore(1, dir_state(tmp_path / "other"))  # other states are not blocked
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)


def test_patch_without_renameat2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 engine: Engine) -> None:
    src, cur = _setup(tmp_path, engine)

    def no_renameat2(*a: object) -> None:
        raise OSError(errno.ENOSYS, "renameat2 not available")

    monkeypatch.setattr(fsutil, "renameat2", no_renameat2)
    before = _inodes(cur)
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    assert before["c"] == _inodes(cur)["c"]  # the same directory: patched, not rebuilt
    assert sorted(os.listdir(tmp_path)) == ["ref", "repo", "srv"]


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_rebuilt_tree_is_trusted_by_the_next_restore(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path, engine: Engine,
                                                       processes: bool) -> None:
    # The rebuild records (inode, ctime) of every file it wrote (in threads or in worker
    # processes), so a patch restore right after it reads none of them back.
    if processes:
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "orig"
    _tree(src)
    engine.capture(make_meta(1), dir_state(src))
    cur = tmp_path / "srv"
    engine.restore(1, dir_state(cur))  # a new state: rebuilt
    assert_same(src, cur)
    (cur / "c" / "f003").write_bytes(b"changed")
    r = engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    # only the hard-linked file is re-read (records never vouch for hard links)
    assert (r.files_written, engine.last_bytes_read) == (1, len(b"linked"))


def test_a_slow_patch_walk_warms_the_metadata_ahead_of_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: Engine) -> None:
    # Cold, the planner's walk waits on one metadata read at a time: past PREFETCH_COLD_US
    # an entry (here: any walk) the prefetch threads list the directories ahead of it,
    # and stop with it; the patch is the same.
    from workers.engine.fs import prefetch

    src, cur = _setup(tmp_path, engine)
    monkeypatch.setattr(tuning, "PREFETCH_COLD_US", 0)
    monkeypatch.setattr(tuning, "PREFETCH_WINDOW", 8)
    started: list[prefetch.MetadataPrefetch] = []
    start = prefetch.MetadataPrefetch.start

    def counted(self: prefetch.MetadataPrefetch) -> None:
        started.append(self)
        start(self)

    monkeypatch.setattr(prefetch.MetadataPrefetch, "start", counted)
    before = _inodes(cur)
    engine.restore(1, dir_state(cur))
    assert_same(src, cur)
    assert _inodes(cur)["c/f007"] == before["c/f007"]  # patched
    [p] = started
    assert p._stopped and not any(t.is_alive() for t in p._threads)
    assert not p._todo  # every descriptor it held closed


def test_a_file_the_patch_cannot_rename_away_is_left_to_the_rebuild(
        tmp_path: Path, engine: Engine) -> None:
    # A file of the state made immutable (chattr +i: EPERM on its rename) failed the
    # patch, and so every attempt of the stopped server's restore; the rebuild sets the
    # old tree, that file in it, aside.
    src, cur = _setup(tmp_path, engine)
    target = cur / "a" / "f000"  # changed since the snapshot: the patch replaces it
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode:
        pytest.skip("cannot make a file immutable here (chattr +i)")
    try:
        engine.restore(1, dir_state(cur))
        assert_same(src, cur)
    finally:
        for held in [target, *tmp_path.glob(".srv.restore-trash-*/a/f000")]:
            subprocess.run(["chattr", "-i", str(held)], check=False)
    assert not (tmp_path / ".srv.restore-patch").exists()
