"""Issue 9, item 4: a live restore (power driver `none`) never puts into the restored tree
an inode that a process of the running server still has open or mapped.

The rebuild used to hard-link unchanged files into the new tree, so a process that kept
one open for writing went on writing into the restored state after the swap."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from workers.engine import Engine
from workers.engine.restore import leases, patch

from .conftest import dir_state, make_meta
from .tenant import _FD_WRITER, Tenant, fd_writer, mmap_writer
from .treecmp import describe


def test_a_process_writing_after_a_live_restore_never_changes_the_restored_tree(
        engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    (src / "db").mkdir(parents=True)
    (src / "db" / "log").write_bytes(os.urandom(64 << 10))  # held open for writing
    (src / "db" / "region").write_bytes(os.urandom(64 << 10))  # mapped shared, writable
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(10_000))
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    (src / "f3").write_text("changed: forces a restore")
    log, region = fd_writer(src / "db" / "log"), mmap_writer(src / "db" / "region")
    try:
        r = engine.restore(1, dir_state(src), live=True)
        assert describe(src) == ref
        # the running server goes on writing through what it had open before the swap
        assert log.send("0 written-after-the-restore") == "ok"
        assert region.send("0 stored-after-the-restore") == "ok"
    finally:
        log.close()
        region.close()
    assert describe(src) == ref
    assert r.files_written == 1  # the others were copied from the verified current files
    assert r.files_reused == 21


def _srv(tmp_path: Path, engine: Engine) -> tuple[Path, dict[bytes, dict[str, Any]]]:
    src = tmp_path / "srv"
    (src / "db").mkdir(parents=True)
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(10_000))
    (src / "db" / "log").write_bytes(os.urandom(64 << 10))
    engine.capture(make_meta(1), dir_state(src))
    return src, describe(src)


def test_a_live_restore_patches_in_place_when_no_process_writes(
        engine: Engine, tmp_path: Path) -> None:
    # Readers do not stop the patch: only a writer could change a kept inode afterwards.
    src, ref = _srv(tmp_path, engine)
    (src / "f3").write_text("changed: forces a restore")
    ino = (src / "f5").stat().st_ino
    reader = os.open(src / "db" / "log", os.O_RDONLY)
    try:
        r = engine.restore(1, dir_state(src), live=True)
    finally:
        os.close(reader)
    assert describe(src) == ref
    assert (src / "f5").stat().st_ino == ino  # kept where it is, not copied
    assert (r.files_written, r.files_reused) == (1, 20)
    assert r.bytes_written == 10_000  # the one changed file; none copied


def test_a_file_opened_for_writing_during_a_live_patch_sends_it_to_the_copying_rebuild(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A process of the running server opens a kept file for writing after the patch leased
    # it: its open waits on the lease, the patch sees the lease broken before its commit
    # mark, undoes itself, and the rebuild copies every file; what the process then writes
    # goes into the old tree's inode, never into the restored tree.
    src, ref = _srv(tmp_path, engine)
    (src / "f3").write_text("changed: forces a restore")
    apply = patch.Patcher._apply
    guards: list[leases.LiveGuard] = []
    opened: list[Tenant] = []

    class Guard(leases.LiveGuard):
        def __init__(self) -> None:
            super().__init__()
            guards.append(self)

    def apply_with_a_writer(self: patch.Patcher, *a: Any) -> None:
        [guard] = guards
        assert guard.leases_held()
        opened.append(Tenant(_FD_WRITER, src / "db" / "log"))  # waits in open()
        deadline = time.monotonic() + 30
        while guard.leases_held():  # until its open has broken the lease
            assert time.monotonic() < deadline, "the writer's open never broke the lease"
            time.sleep(0.01)
        apply(self, *a)

    monkeypatch.setattr(leases, "LiveGuard", Guard)  # taken by Restorer._patched
    monkeypatch.setattr(patch.Patcher, "_apply", apply_with_a_writer)
    try:
        r = engine.restore(1, dir_state(src), live=True)
        assert describe(src) == ref
        assert opened[0].line() == "ready"  # its open went on once the lease was released
        assert opened[0].send("0 written-after-the-restore") == "ok"
    finally:
        for t in opened:
            t.close()
    assert describe(src) == ref
    assert r.files_written == 1 and r.files_reused == 20  # rebuilt: 20 copied
    assert not (tmp_path / ".srv.restore-patch").exists()  # undone, then removed


@pytest.mark.parametrize("change", ["create", "chmod", "symlink"])
def test_a_tree_changed_by_its_server_during_a_live_patch_is_rebuilt(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    # The server runs: what it does to its tree while the patch works (a new file in a
    # directory the patch does not touch, a kept file's mode, a kept symlink replaced)
    # would stay in the restored tree. The patch sees it before its commit mark (a
    # ctime moved), undoes itself, and the rebuild makes the snapshot's tree.
    src, _ref = _srv(tmp_path, engine)
    os.symlink("f1", src / "db" / "latest")
    engine.capture(make_meta(2), dir_state(src))
    ref = describe(src)
    (src / "f3").write_text("changed: forces a restore")
    apply = patch.Patcher._apply

    def apply_while_the_server_changes_its_tree(self: patch.Patcher, *a: Any) -> None:
        apply(self, *a)
        if change == "create":
            (src / "db" / "new-log").write_text("made while the patch ran")
        elif change == "chmod":
            os.chmod(src / "f7", 0o600)
        else:
            os.unlink(src / "db" / "latest")
            os.symlink("f2", src / "db" / "latest")

    monkeypatch.setattr(patch.Patcher, "_apply", apply_while_the_server_changes_its_tree)
    ino = (src / "f5").stat().st_ino
    r = engine.restore(2, dir_state(src), live=True)
    assert describe(src) == ref
    # rebuilt: the others copied (and f7, its mode changed, written)
    assert (r.files_written, r.files_reused) == ((2, 19) if change == "chmod" else (1, 20))
    assert (src / "f5").stat().st_ino != ino


def test_a_file_the_server_rewrites_during_a_live_patch_is_never_recorded_as_the_snapshots(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new file is in its place from the patch's rename on, while the server runs, and no
    # lease is held on it: a process that writes into it and puts its mtime back (size
    # kept) leaves it as the snapshot's to any lstat. Recorded after the commit (its
    # ctime then), the next restore trusted it in place, a stopped one too: the server's
    # bytes stayed where the snapshot's belong, restore after restore.
    src, ref = _srv(tmp_path, engine)
    (src / "f3").write_text("changed: forces a restore")
    apply = patch.Patcher._apply

    def apply_then_the_server_rewrites_the_new_file(self: patch.Patcher, *a: Any) -> None:
        apply(self, *a)
        f3 = src / "f3"
        st = f3.stat()
        fd = os.open(f3, os.O_WRONLY)
        try:
            os.pwrite(fd, b"S" * st.st_size, 0)
        finally:
            os.close(fd)
        os.utime(f3, ns=(st.st_atime_ns, st.st_mtime_ns))

    monkeypatch.setattr(patch.Patcher, "_apply", apply_then_the_server_rewrites_the_new_file)
    ino = (src / "f5").stat().st_ino
    engine.restore(1, dir_state(src), live=True)
    assert (src / "f5").stat().st_ino == ino  # patched in place
    monkeypatch.setattr(patch.Patcher, "_apply", apply)
    r = engine.restore(1, dir_state(src))  # the server stopped now
    assert describe(src) == ref
    assert r.files_written == 1
