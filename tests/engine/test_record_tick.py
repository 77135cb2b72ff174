"""A restore's trusted record (statecache.py) must not vouch for a file changed in the
clock tick its restore wrote it in: a change within one timestamp granule keeps the ctime
(here a filesystem of whole-second timestamps, ext4 with 128-byte inodes; on kernels before
6.13 any filesystem within one coarse tick), so a record of that ctime would have the next
restore keep the changed file as the snapshot's."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine
from workers.engine.restore import patch

from .conftest import dir_state, make_meta
from .treecmp import describe


@pytest.fixture
def coarse_fs(tmp_path: Path) -> Iterator[Path]:
    img, mnt = tmp_path / "fs.img", tmp_path / "coarse"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-I", "128", str(img)], capture_output=True)
    if made.returncode or subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                                         capture_output=True).returncode:
        pytest.skip("cannot make and mount an ext4 with 128-byte inodes here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_file_changed_in_the_granule_its_restore_wrote_it_is_rewritten_next_time(
        engine: Engine, coarse_fs: Path) -> None:
    src = coarse_fs / "src"
    src.mkdir()
    (src / "config.txt").write_bytes(b"snapshot\n")
    engine.capture(make_meta(1), dir_state(src))
    state, target = coarse_fs / "state", coarse_fs / "state" / "config.txt"
    for _attempt in range(3):
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        engine.restore(1, dir_state(state), live=True)
        returned = time.time_ns()
        before = os.stat(target)
        # the running server rewrites the file at once: same size, its mtime put back
        with open(target, "r+b") as f:
            f.write(b"tampered\n")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        if (os.stat(target).st_ctime_ns == before.st_ctime_ns  # within the granule
                or returned >= before.st_ctime_ns + 10**9):  # returned past it: cannot be
            break
        # else the change crossed into the next second by chance: again
    engine.restore(1, dir_state(state))
    assert target.read_bytes() == b"snapshot\n"


TENANT = 1000


def _tamper(home: Path, path: str) -> str:
    """The tenant, a process of its own user working in its home (the state's parent; the
    tests' tmp dir above it is root's, 0700): rewrites the staged file `path` and puts its
    mtime back; says whether it got in and whether its change kept the file's ctime."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then _exit
        said = b"?"
        try:
            os.close(r)
            os.chdir(home)
            os.setgroups([])
            os.setgid(TENANT)
            os.setuid(TENANT)
            try:
                before = os.stat(path)
                fd = os.open(path, os.O_WRONLY)
                os.pwrite(fd, b"tampered\n", 0)
                os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
                os.close(fd)
            except PermissionError:
                said = b"denied"
            else:
                said = b"kept" if os.stat(path).st_ctime_ns == before.st_ctime_ns else b"moved"
        finally:
            os.write(w, said)
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            return f.read().decode()
    finally:
        os.waitpid(pid, 0)


def test_a_tenant_owning_the_states_parent_gets_into_staging_only_once_changes_move_ctime(
        engine: Engine, coarse_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging directory is the worker's, 0700, while its files are written; its own
    owner and mode (the tenant's here) come only once no change to a file written there
    can keep the ctime its restore records (else the tenant, owning the state's parent,
    got in as the restore gave the staging root its metadata, within the second its files
    were written, and the next restore kept its bytes as the snapshot's)."""
    from workers.engine.restore import metadata, staging, treewriter

    home = coarse_fs / "home"  # the tenant's: the state's parent
    home.mkdir()
    os.chown(home, TENANT, TENANT)
    src = coarse_fs / "src"
    src.mkdir()
    (src / "config.txt").write_bytes(b"snapshot\n")
    for p in (src, src / "config.txt"):
        os.chown(p, TENANT, TENANT)
    engine.capture(make_meta(1), dir_state(src))
    state, target = home / "state", home / "state" / "config.txt"
    staged = ".state.restore-1/config.txt"
    got: list[str] = []

    def tamper() -> None:  # at each point the restore passes, until the tenant got in
        if not got or got[-1] == "denied":
            got.append(_tamper(home, staged))

    finish, swap = metadata.finish_dirs, staging.swap  # treewriter calls the first

    def finish_dirs(*a: Any, **k: Any) -> None:
        finish(*a, **k)
        tamper()

    def swap_(*a: Any, **k: Any) -> bytes:
        tamper()
        return swap(*a, **k)

    monkeypatch.setattr(treewriter, "finish_dirs", finish_dirs)
    monkeypatch.setattr(staging, "swap", swap_)
    for _attempt in range(2):  # before: "kept" at once, but for a second ticking over
        shutil.rmtree(state, ignore_errors=True)
        got.clear()
        engine.restore(1, dir_state(state))
        assert got[-1] in ("kept", "moved"), got  # it did get in, before the swap
        if got[-1] == "kept":  # before: it got in at finish_dirs, within the second
            break
    monkeypatch.undo()
    engine.restore(1, dir_state(state))
    assert target.read_bytes() == b"snapshot\n"


def test_a_name_made_in_the_granule_of_a_kept_directorys_ctime_during_a_live_patch_is_seen(
        engine: Engine, coarse_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A live patch leaves a directory it does not change alone if its ctime did not move
    # by the check; the server's chmod (same mode) just before the planner looked set that
    # ctime, and a file the server makes in the same second keeps it on this filesystem.
    src = coarse_fs / "srv"
    (src / "spool").mkdir(parents=True)
    for i in range(20):
        (src / f"f{i}").write_bytes(b"%d" % i * 1000)
    (src / "spool" / "job").write_text("queued\n")
    time.sleep(2.1)  # past two granules: the files' ctimes vouch (kept, not rewritten)
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    apply = patch.Patcher._apply
    made: list[bool] = []

    def apply_then_the_server_makes_a_file(self: patch.Patcher, *a: Any) -> None:
        apply(self, *a)
        before = os.stat(src / "spool").st_ctime_ns
        (src / "spool" / "new").write_text("made while the patch ran\n")
        made.append(os.stat(src / "spool").st_ctime_ns == before)

    monkeypatch.setattr(patch.Patcher, "_apply", apply_then_the_server_makes_a_file)
    for attempt in range(5):
        (src / "f3").write_text(f"changed {attempt}: forces a restore")
        while time.time() % 1 > 0.3:  # early in a second: the restore's patch fits in it
            time.sleep(0.01)
        os.chmod(src / "spool", os.stat(src / "spool").st_mode)  # the ctime now, mode kept
        engine.restore(1, dir_state(src), live=True)
        if made[-1]:  # made within the same second: a ctime check alone misses it
            break
        (src / "spool" / "new").unlink(missing_ok=True)
    assert made[-1], "no attempt made the file within the directory's ctime second"
    assert describe(src) == ref


def test_a_symlinks_owner_changed_in_the_granule_of_its_ctime_during_a_live_patch_is_seen(
        engine: Engine, coarse_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A kept symlink is watched by its ctime; the server's lchown (same owner) just before
    # the planner looked set it, and its lchown to another owner in the same second keeps
    # it on this filesystem (and its directory's mtime: no name changed).
    src = coarse_fs / "srv"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"%d" % i * 1000)
    os.symlink("f1", src / "latest")
    time.sleep(2.1)  # past two granules: the files' ctimes vouch (kept, not rewritten)
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    apply = patch.Patcher._apply
    same: list[bool] = []

    def apply_then_the_server_chowns_the_symlink(self: patch.Patcher, *a: Any) -> None:
        apply(self, *a)
        before = os.lstat(src / "latest").st_ctime_ns
        os.chown(src / "latest", TENANT, TENANT, follow_symlinks=False)
        same.append(os.lstat(src / "latest").st_ctime_ns == before)

    monkeypatch.setattr(patch.Patcher, "_apply", apply_then_the_server_chowns_the_symlink)
    for attempt in range(5):
        (src / "f3").write_text(f"changed {attempt}: forces a restore")
        while time.time() % 1 > 0.3:  # early in a second: the restore's patch fits in it
            time.sleep(0.01)
        st = os.lstat(src / "latest")
        os.chown(src / "latest", st.st_uid, st.st_gid, follow_symlinks=False)  # ctime now
        engine.restore(1, dir_state(src), live=True)
        if same[-1]:  # within the same second: a ctime check alone misses it
            break
        os.chown(src / "latest", 0, 0, follow_symlinks=False)
    assert same[-1], "no attempt changed the symlink within its ctime's second"
    assert describe(src) == ref
