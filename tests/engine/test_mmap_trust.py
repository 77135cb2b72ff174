"""Issue 9, item 1: "same inode and ctime" must really mean "same bytes".

A real process writes a file through a shared writable mapping: v1, then v2 into the same
page while it is still dirty. Linux moves ctime/mtime only at the first write fault after
the page was cleaned, so the second store changes no metadata at all. Before the fix an
incremental capture stored v1 while the file held v2, and a restore kept v2 as "the very
inode that was captured, unchanged since". Each test here steps the writer exactly into
that window.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from workers.engine import Engine, StateSpec
from workers.engine.fs import directio

from .conftest import dir_state, make_meta
from .tenant import mmap_writer

PAGE = 4096


def _state(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "srv"
    src.mkdir()
    region = src / "region.dat"  # e.g. an LMDB file opened with MDB_WRITEMAP
    region.write_bytes(b"-" * (4 * PAGE))
    (src / "config.txt").write_text("unchanged\n")
    return src, region


def test_incremental_capture_stores_what_a_mapping_wrote_into_a_dirty_page(
        engine: Engine, tmp_path: Path) -> None:
    src, region = _state(tmp_path)
    w = mmap_writer(region)
    try:
        assert w.send("0 v1") == "ok"
        engine.capture(make_meta(1), dir_state(src))
        assert w.send("0 v2") == "ok"  # same page, no syscall, no fault before the fix
        assert region.read_bytes()[:2] == b"v2"
        engine.capture(make_meta(2), dir_state(src))
    finally:
        w.close()
    out = tmp_path / "out"
    engine.restore(2, dir_state(out))
    assert (out / "region.dat").read_bytes() == region.read_bytes()


@pytest.mark.parametrize("live", [False, True], ids=["stopped", "live"])
def test_restore_never_keeps_a_file_a_mapping_changed_unseen(
        engine: Engine, tmp_path: Path, live: bool) -> None:
    src, region = _state(tmp_path)
    w = mmap_writer(region)
    try:
        assert w.send("0 v1") == "ok"
        engine.capture(make_meta(1), dir_state(src))
        assert w.send("0 v2") == "ok"
        engine.restore(1, dir_state(src), live=live)
    finally:
        w.close()
    assert region.read_bytes()[:2] == b"v1"


def test_a_file_proven_by_hashing_is_not_trusted_after_unseen_mapping_writes(
        engine: Engine, tmp_path: Path) -> None:
    src, region = _state(tmp_path)
    engine.capture(make_meta(1), dir_state(src))  # holds "----..."
    mtime = region.stat().st_mtime_ns
    w = mmap_writer(region)
    stores: list[str] = []

    def after_the_proof(done: int, total: int) -> None:
        if not stores:  # the first report comes once the current tree was checked
            stores.append(w.send("0 v2"))

    try:
        # The same bytes written again through the mapping: ctime moves, so the restore
        # must hash the file; it finds it identical and keeps it, recording its inode and
        # ctime as trusted. Then, still inside that restore, a store into the page.
        assert w.send("0 --") == "ok"
        os.utime(region, ns=(mtime, mtime))  # the fault moved mtime: put it back
        r = engine.restore(1, dir_state(src), progress=after_the_proof)
        assert r.files_written == 0 and stores == ["ok"]
        assert region.read_bytes()[:2] == b"v2"
        engine.restore(1, dir_state(src))
    finally:
        w.close()
    assert region.read_bytes()[:2] == b"--"


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "buffered"])
def test_image_capture_stores_what_a_mapping_wrote_into_a_dirty_page(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, direct: bool) -> None:
    if not direct:  # as on a filesystem without O_DIRECT (an O_DIRECT read flushes first)
        monkeypatch.setattr(directio, "reopen_direct", lambda fd, flags: None)
    disk = tmp_path / "vm.img"
    disk.write_bytes(os.urandom(4 << 20))
    state = StateSpec(kind="image", path=str(disk))
    w = mmap_writer(disk)
    try:
        assert w.send(f"{1 << 20} v1") == "ok"
        engine.capture(make_meta(1), state)
        assert w.send(f"{1 << 20} v2") == "ok"
        engine.capture(make_meta(2), state)
    finally:
        w.close()
    out = tmp_path / "out.img"
    engine.restore(2, StateSpec(kind="image", path=str(out)))
    assert out.read_bytes() == disk.read_bytes()


def test_on_tmpfs_no_ctime_vouches_for_anything(engine: Engine, tmp_path: Path) -> None:
    # tmpfs never writes pages back, so a page once stored into through a mapping stays
    # writable for ever and later stores never move ctime, syncfs or not.
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src, region = _state(mnt)
        size = sum(p.stat().st_size for p in src.iterdir())
        w = mmap_writer(region)
        try:
            assert w.send("0 v1") == "ok"
            engine.capture(make_meta(1), dir_state(src))
            assert w.send("0 v2") == "ok"
            engine.capture(make_meta(2), dir_state(src))
            assert engine.last_bytes_read == size  # nothing skipped on a ctime
            r = engine.restore(1, dir_state(src))
            assert r.files_reused == 0 and region.read_bytes()[:2] == b"v1"
        finally:
            w.close()
        out = tmp_path / "out"
        engine.restore(2, dir_state(out))
        assert (out / "region.dat").read_bytes()[:2] == b"v2"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
