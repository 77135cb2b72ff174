"""A restore into a new state: no state path yet, or an empty directory (a server made to
be restored into, as `POST /snapshots/{id}/restore/` with another server's id does). Both
start the writer processes before the manifest is read and leave every file to them, and
the special entries are made on a thread of the parent while they write."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine, tuning
from workers.engine.fs import syncpoint
from workers.engine.repository.repository import Repository
from workers.engine.restore import metadata, restorer, treewriter, writerpool

from .conftest import dir_state, make_meta
from .treecmp import assert_same


def _source(src: Path) -> None:
    for d in range(6):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(20):
            (sub / f"f{i}").write_bytes(os.urandom(100 + 37 * i))
        os.symlink(f"f{d}", sub / "link")
        os.mkfifo(sub / "fifo")
    os.link(src / "d0" / "f1", src / "hard")
    os.chmod(src / "d2", 0o750)


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the restore did, in order: 'pool' (writers started), 'manifest' (read),
    'sync' (the sync point before files are trusted or proven: its syncfs writes out what
    is dirty on the filesystem), 'fresh' (build_fresh) or 'build' (the rebuild that looks
    for files to reuse)."""
    seen: list[str] = []
    start, fresh, build = writerpool.start_pool, treewriter.TreeWriter.build_fresh, \
        treewriter.TreeWriter.build
    read = Repository.get_manifest_raw
    point = syncpoint.sync_point

    def sync_point(*a: Any, **k: Any) -> Any:
        seen.append("sync")
        return point(*a, **k)

    def start_pool(*a: Any) -> Any:
        seen.append("pool")
        return start(*a)

    def build_fresh(self: Any, *a: Any) -> None:
        seen.append("fresh")
        fresh(self, *a)

    def build_any(self: Any, *a: Any) -> None:
        seen.append("build")
        build(self, *a)

    def get_manifest_raw(self: Any, *a: Any) -> bytes:
        seen.append("manifest")
        return read(self, *a)

    monkeypatch.setattr(Repository, "get_manifest_raw", get_manifest_raw)
    monkeypatch.setattr(restorer, "sync_point", sync_point)
    monkeypatch.setattr(writerpool, "start_pool", start_pool)
    monkeypatch.setattr(treewriter.TreeWriter, "build_fresh", build_fresh)
    monkeypatch.setattr(treewriter.TreeWriter, "build", build_any)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    return seen


@pytest.mark.parametrize("target", ["missing", "empty"])
def test_a_restore_into_a_new_or_empty_state_starts_the_writers_first_and_writes_it_all(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, target: str) -> None:
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    if target == "empty":
        dst.mkdir()
    seen = _spied(monkeypatch)
    got = engine.restore(1, dir_state(dst), live=True)
    # before: into an empty directory, the writers started after the manifest was read
    # and the rebuild looked for files to reuse in it (none); and a sync point was taken
    # first though no file is trusted or proven
    assert seen == ["pool", "manifest", "fresh"]
    assert got.files_written == 6 * 20 + 0 and got.files_reused == 0
    assert_same(src, dst)
    assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == []


def test_a_state_with_anything_in_it_is_not_taken_for_a_new_one(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink("d0", dst / "d0")  # one dangling name is enough: the tree is looked at
    seen = _spied(monkeypatch)
    engine.restore(1, dir_state(dst), live=True)
    assert seen == ["manifest", "sync", "pool", "build"]
    assert_same(src, dst)


def test_a_special_entry_that_cannot_be_made_fails_the_restore_and_changes_nothing(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """The symlinks and fifos are made on a thread while the writers write: its error is
    the restore's, the staging tree goes, the empty state stays as it was."""
    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    make_special = metadata.make_special
    made: list[bytes] = []

    def fails_at_the_third(dfd: int, name: bytes, e: Any) -> None:
        if len(made) == 2:
            raise OSError(errno.EPERM, "Operation not permitted", name)
        made.append(name)
        make_special(dfd, name, e)

    monkeypatch.setattr(treewriter, "make_special", fails_at_the_third)
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    with pytest.raises(OSError) as err:
        engine.restore(1, dir_state(dst), live=True)
    assert err.value.errno == errno.EPERM
    assert os.listdir(dst) == []
    assert [n for n in os.listdir(tmp_path) if ".restore-" in n] == []


MODES = {"rw-all": 0o666, "rwx-all": 0o777, "group-read": 0o640, "own": 0o600,
         "setuid": 0o4755, "setgid": 0o2755, "sticky": 0o1644, "nothing": 0o000}


def test_hard_links_are_made_as_their_targets_are_written_not_after_the_writers(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """Each link is made (by the parent, idle while the writers write) once the writer
    reports its target written: none is left for after the writers end, where 2,950 of
    them were the restore's last 0.35 s (300k tree)."""
    src = tmp_path / "src"
    _source(src)
    for d in range(6):
        os.link(src / f"d{d}" / "f3", src / f"d{5 - d}" / "also-f3")
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    staged: list[list[str]] = []
    run = writerpool.RestorePool.run

    def run_then_look(self: writerpool.RestorePool, st_fd: int, *a: Any) -> None:
        run(self, st_fd, *a)  # the writers are done: what links exist in staging now?
        staged.append(sorted(n for n in ("hard", *(f"d{d}/also-f3" for d in range(6)))
                             if os.path.lexists(f"/proc/self/fd/{st_fd}/{n}")))

    monkeypatch.setattr(writerpool.RestorePool, "run", run_then_look)
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    assert staged == [sorted(["hard", *(f"d{d}/also-f3" for d in range(6))])]
    assert_same(src, dst)
    for d in range(6):
        assert os.stat(dst / f"d{5 - d}" / "also-f3").st_ino == os.stat(
            dst / f"d{d}" / "f3").st_ino


def test_a_new_states_entries_are_sorted_out_on_the_tree_checks_pass(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """The writers started early (a new state): each entry is visited once, on the tree
    check's pass, not once more before the directories are made (a pass over a million
    entries, each decoded anew); the tree is restored all the same."""
    from workers.engine.restore import freshplan

    src = tmp_path / "src"
    _source(src)
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    visited: list[int] = []
    visit = freshplan.FreshPlan.visit

    def counted(self: freshplan.FreshPlan, idx: int, e: Any) -> None:
        visited.append(idx)
        visit(self, idx, e)

    monkeypatch.setattr(freshplan.FreshPlan, "visit", counted)
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    from workers.engine.repository.manifest import DirBody

    body = engine.repo.get_manifest(1)[1]
    assert isinstance(body, DirBody)
    assert visited == list(range(1, len(body.entries)))  # not twice each
    assert_same(src, dst)


def _modes_source(src: Path) -> None:
    src.mkdir()
    for name, mode in MODES.items():
        (src / name).write_bytes(name.encode() * 50)
        os.chmod(src / name, mode)
    (src / "theirs").write_bytes(b"x" * 100)
    os.chown(src / "theirs", 1234, 1234)
    os.chmod(src / "theirs", 0o4750)  # after the chown, which clears it


def _modes(root: Path) -> dict[str, tuple[int, int, int]]:
    return {n: (os.lstat(root / n).st_mode, os.lstat(root / n).st_uid,
                os.lstat(root / n).st_gid) for n in sorted(os.listdir(root))}


def test_the_writer_processes_restore_every_mode_and_owner_whatever_the_umask(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """They create each file with its final permission bits where no chown follows (their
    umask is 0), else 0600 and chown, chmod after: setuid, setgid and sticky bits and a
    file of another owner come back as they were, under this process's umask 022."""
    src = tmp_path / "src"
    _modes_source(src)
    engine.capture(make_meta(1), dir_state(src))
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    old = os.umask(0o022)
    try:
        engine.restore(1, dir_state(tmp_path / "dst"))
    finally:
        os.umask(old)
    assert _modes(tmp_path / "dst") == _modes(src)


def _default_acl(path: Path) -> None:
    """A default ACL that gives new entries nothing but their owner's rwx (setfacl -d -m
    u::rwx,g::-,o::-), in the kernel's xattr format."""
    entry = struct.Struct("<HHI")
    nobody = 0xFFFFFFFF
    acl = struct.pack("<I", 2) + b"".join(entry.pack(tag, perm, nobody) for tag, perm in (
        (0x01, 7), (0x04, 0), (0x20, 0)))  # ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER
    os.setxattr(path, "system.posix_acl_default", acl)


def test_under_a_parent_with_a_default_acl_every_file_still_gets_its_own_mode(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """A file made under a default ACL gets the ACL's bits whatever its create mode asks:
    there the writers chmod every file, as before (else rw-all came back 0600)."""
    src = tmp_path / "src"
    _modes_source(src)
    engine.capture(make_meta(1), dir_state(src))
    parent = tmp_path / "acl"
    parent.mkdir()
    try:
        _default_acl(parent)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e}")
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    engine.restore(1, dir_state(parent / "dst"))
    assert {n: m[0] for n, m in _modes(parent / "dst").items()} == {
        n: m[0] for n, m in _modes(src).items()}


def _default_acl_for(path: Path, uid: int) -> None:
    """A default ACL that also gives user `uid` rwx (setfacl -d -m u::rwx,u:UID:rwx,g::-,
    m::rwx,o::-): what an operator's parent directory may pass on to what is made in it."""
    entry = struct.Struct("<HHI")
    nobody = 0xFFFFFFFF
    acl = struct.pack("<I", 2) + b"".join(entry.pack(tag, perm, who) for tag, perm, who in (
        (0x01, 7, nobody), (0x02, 7, uid), (0x04, 0, nobody), (0x10, 7, nobody),
        (0x20, 0, nobody)))  # USER_OBJ, USER, GROUP_OBJ, MASK, OTHER
    os.setxattr(path, "system.posix_acl_default", acl)


@pytest.mark.parametrize("writers", [False, True])
def test_under_a_parent_with_a_default_acl_no_entry_keeps_an_acl_it_did_not_have(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path,
        writers: bool) -> None:
    """What is made under a default ACL inherits an access ACL: a file or node restored
    there kept it, so a user the snapshot's 0640 file gave nothing (the ACL's user 1000,
    whose rights the mask then cut to the group's r) could read it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_bytes(b"s" * 100)
    os.chmod(src / "secret", 0o640)
    os.mkfifo(src / "fifo", 0o600)
    (src / "d").mkdir()
    (src / "d" / "f").write_bytes(b"f")
    engine.capture(make_meta(1), dir_state(src))
    parent = tmp_path / "acl"
    parent.mkdir()
    try:
        _default_acl_for(parent, 1000)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e}")
    if writers:
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    dst = parent / "dst"
    engine.restore(1, dir_state(dst))
    acls = {str(p.relative_to(dst)) for p in dst.rglob("*")
            if "system.posix_acl_access" in os.listxattr(p, follow_symlinks=False)}
    assert acls == set()  # before: secret, fifo and d/f
    assert_same(src, dst)
