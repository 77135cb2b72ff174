"""What a tenant plants beside its state under the names a killed restore leaves there.

A state may lie in a tree its tenant controls (a data directory inside a container's root
filesystem), so its parent directory is the tenant's too: every capture, restore and
recover() reads what it finds there under `.<base>.restore-*` (recovery.cleanup and
image_cleanup), and must neither act on a name from it nor block on it.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from workers.engine import Engine, StateSpec
from workers.engine.fs import fsutil
from workers.engine.image.image import J_MAGIC, J_REC, J_TRAILER
from workers.engine.model import StateInvalid
from workers.engine.restore.patch import Patcher
from workers.engine.restore.patchjournal import Journal
from workers.engine.restore.patchplan import DirState
from workers.engine.restore.treewriter import TreeWriter

from .conftest import dir_state, make_meta


def image_state(path: Path) -> StateSpec:
    return StateSpec(kind="image", path=str(path))


def _returns_within(fn: Callable[[], object], seconds: float = 10.0) -> None:
    """fn() returns (or raises) within `seconds`: it did not block on what was planted."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(seconds):
        # unblock the opener (a writer for a fifo) so the thread ends, then fail
        raise AssertionError(f"blocked for {seconds} s on a planted fifo")


def _host_dir(tmp_path: Path) -> Path:
    host = tmp_path / "host-secret"
    host.mkdir()
    (host / "id_rsa").write_text("KEY")
    return host


def test_a_planted_swap_journal_never_moves_a_directory_into_the_state(
        engine: Engine, tmp_path: Path) -> None:
    host = _host_dir(tmp_path)
    tenant = tmp_path / "tenant"  # the tenant's tree; its state is tenant/state
    tenant.mkdir()
    for named in (os.fsencode(host), b"../host-secret"):
        # the tenant removed its state dir and wrote a journal naming the host's directory
        (tenant / ".state.restore-journal").write_bytes(named)
        engine.recover(dir_state(tenant / "state"))
        assert (host / "id_rsa").read_text() == "KEY", named
        assert not (tenant / "state").exists(), named
        assert os.listdir(tenant) == [], named  # the planted journal is removed


def test_a_planted_fifo_journal_never_blocks_a_recover(engine: Engine, tmp_path: Path) -> None:
    tenant = tmp_path / "tenant"
    (tenant / "state").mkdir(parents=True)
    fifo = tenant / ".state.restore-journal"
    os.mkfifo(fifo)
    try:
        _returns_within(lambda: engine.recover(dir_state(tenant / "state")))
    finally:
        _unblock(fifo)
    assert os.listdir(tenant) == ["state"]
    shutil.rmtree(tenant)


def _unblock(fifo: Path) -> None:
    """A writer and a reader for a fifo an opener may still wait on (a failed test's)."""
    if fifo.exists():
        with open(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "wb"):
            pass


def test_what_is_planted_as_a_patch_work_dir_never_blocks_nor_fails_a_recover(
        engine: Engine, tmp_path: Path) -> None:
    tenant = tmp_path / "tenant"
    (tenant / "state").mkdir(parents=True)
    work = tenant / ".state.restore-patch"
    work.mkdir()
    os.mkfifo(work / "journal")
    try:
        _returns_within(lambda: engine.recover(dir_state(tenant / "state")))
    finally:
        _unblock(work / "journal")
    assert os.listdir(tenant) == ["state"]
    work.write_text("a file where the work directory would be")
    engine.recover(dir_state(tenant / "state"))
    assert os.listdir(tenant) == ["state"]


def test_an_image_swapped_for_a_fifo_is_refused_never_opened(
        engine: Engine, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(1 << 20))
    engine.capture(make_meta(1), image_state(img))
    img.unlink()
    os.mkfifo(img)
    try:
        for run in (lambda: engine.capture(make_meta(2), image_state(img)),
                    lambda: engine.restore(1, image_state(img))):
            failed: list[BaseException] = []

            def call(run: Callable[[], object] = run,
                     failed: list[BaseException] = failed) -> None:
                try:
                    run()
                except StateInvalid as e:
                    failed.append(e)

            _returns_within(call)
            assert len(failed) == 1 and "neither a regular file nor a block device" in str(
                failed[0])
    finally:
        _unblock(img)


def test_a_fifo_planted_as_the_image_journal_never_blocks_a_recover(
        engine: Engine, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"image")
    journal = tmp_path / ".disk.img.restore-journal"
    os.mkfifo(journal)
    try:
        _returns_within(lambda: engine.recover(image_state(img)))
    finally:
        _unblock(journal)
    (tmp_path / ".disk.img.restore-7").mkdir()  # a directory under a leftover's name
    engine.recover(image_state(img))
    assert sorted(os.listdir(tmp_path)) == ["disk.img", "repo"]
    assert img.read_bytes() == b"image"


def test_a_planted_patch_journal_never_sets_a_directorys_owner_mode_or_xattrs(
        engine: Engine, tmp_path: Path) -> None:
    # A tenant (uid 1000 here) owns the state's parent: it plants a patch's work directory
    # with a journal naming a directory of its state, to be "put back" owned by root,
    # setuid and world-writable, with a trusted.* xattr only root may set.
    tenant = tmp_path / "tenant"
    sub = tenant / "state" / "sub"
    sub.mkdir(parents=True)
    for p in (tenant, tenant / "state", sub):
        os.chown(p, 1000, 1000)
    sub.chmod(0o755)
    before = os.stat(sub)
    work = tenant / ".state.restore-patch"
    work.mkdir()
    forged = DirState(path=b"sub", mode=0o44777, uid=0, gid=0, mtime_ns=0,
                      xattrs=[("trusted.overlay.opaque", b"y")])
    (work / "journal").write_bytes(msgspec.msgpack.encode(Journal(ops=[], dirs=[forged])))
    for p in (work, work / "journal"):
        os.chown(p, 1000, 1000)
    engine.recover(dir_state(tenant / "state"))
    after = os.stat(sub)
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns) == (
        1000, 1000, before.st_mode, before.st_mtime_ns)
    assert os.listxattr(sub) == []
    assert sorted(os.listdir(tenant)) == ["state"]  # the planted directory is removed


def test_a_planted_image_journal_is_never_applied(engine: Engine, tmp_path: Path) -> None:
    # The tenant (uid 1000) owns the image's directory but not the image (root's, 0600):
    # a complete journal it wrote was applied to the image by the next recover or restore.
    tenant = tmp_path / "tenant"
    tenant.mkdir()
    os.chown(tenant, 1000, 1000)
    img = tenant / "disk.img"
    img.write_bytes(b"image" * 1000)
    img.chmod(0o600)
    block = b"EVIL" * 1024
    journal = tenant / ".disk.img.restore-journal"
    journal.write_bytes(J_MAGIC + struct.pack(">QIB", len(block), len(block), 0)
                        + J_REC.pack(0, len(block), 1) + block + J_TRAILER.pack(1, b"DONE"))
    os.chown(journal, 1000, 1000)
    engine.recover(image_state(img))
    assert img.read_bytes() == b"image" * 1000
    assert sorted(os.listdir(tenant)) == ["disk.img"]  # the planted journal is removed


@pytest.mark.parametrize("patched", [False, True])
def test_a_restores_durability_point_is_the_filesystem_it_swaps_on(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patched: bool) -> None:
    # A tenant holding a directory above the state swaps the state's parent for a symlink
    # (to a directory elsewhere) while the restore writes: the sync before the swap (or
    # the patch's commit mark) went by the parent's path, so it flushed the symlink's
    # target, and a crash after the swap could leave the restored tree's data unwritten.
    top = tmp_path / "tenant"
    parent = top / "srv"
    state = parent / "state"
    state.mkdir(parents=True)
    for i in range(40):
        (state / f"f{i}").write_text(f"v1 {i}\n")
    engine.capture(make_meta(1), dir_state(state))
    # a patch: one file differs; a rebuild: more than a patch takes (tuning.PATCH_MIN)
    for i in range(1 if patched else 30):
        (state / f"f{i}").write_text("changed\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = os.stat(parent)
    synced: list[tuple[int, int]] = []
    real_syncfs_fd = fsutil.syncfs_fd

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_syncfs_fd(fd)

    def swap_parent() -> None:  # what the tenant does, once the restore is under way
        if not (top / "srv.real").exists():
            os.rename(parent, top / "srv.real")
            os.symlink(elsewhere, parent)

    monkeypatch.setattr(fsutil, "syncfs_fd", recording)
    if patched:
        apply = Patcher._apply

        def swapping_apply(self: Patcher, *a: Any) -> None:
            swap_parent()
            apply(self, *a)

        monkeypatch.setattr(Patcher, "_apply", swapping_apply)
    else:
        build = TreeWriter.build

        def swapping_build(self: TreeWriter, *a: Any) -> None:
            build(self, *a)
            swap_parent()

        monkeypatch.setattr(TreeWriter, "build", swapping_build)
    engine.restore(1, dir_state(state))
    assert (top / "srv.real").exists()  # the swap happened under the restore
    assert (real.st_dev, real.st_ino) in synced
    assert (os.stat(elsewhere).st_dev, os.stat(elsewhere).st_ino) not in synced
    assert (top / "srv.real" / "state" / "f0").read_text() == "v1 0\n"


def test_a_rebuilds_background_flush_stays_on_the_filesystem_it_swaps_on(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, for the syncfs the rebuild runs every FLUSH_EVERY while it writes: by the
    parent's path it flushed whatever the tenant's symlink named from then on (another
    filesystem, one that hangs); by the parent's fd, the one the restore swaps on."""
    from workers.engine import tuning

    top = tmp_path / "tenant"
    src, parent = tmp_path / "src", top / "srv"
    src.mkdir()
    parent.mkdir(parents=True)
    for i in range(10):
        (src / f"f{i}").write_text(f"v1 {i}\n")
    engine.capture(make_meta(1), dir_state(src))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = os.stat(parent)
    synced: list[tuple[int, int]] = []
    after_swap = threading.Event()
    real_syncfs_fd = fsutil.syncfs_fd

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        if (top / "srv.real").exists():
            after_swap.set()
        real_syncfs_fd(fd)

    build = TreeWriter.build

    def swapping_build(self: TreeWriter, *a: Any) -> None:
        os.rename(parent, top / "srv.real")  # the tenant, once the restore is under way
        os.symlink(elsewhere, parent)
        assert after_swap.wait(10)  # a background flush came meanwhile
        build(self, *a)

    monkeypatch.setattr(tuning, "FLUSH_EVERY", 0.001)
    monkeypatch.setattr(fsutil, "syncfs_fd", recording)
    monkeypatch.setattr(TreeWriter, "build", swapping_build)
    engine.restore(1, dir_state(parent / "state"))
    assert (top / "srv.real" / "state" / "f0").read_text() == "v1 0\n"
    assert set(synced) == {(real.st_dev, real.st_ino)}  # before: elsewhere's too
