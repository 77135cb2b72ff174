"""Big files inside a directory state (disk images, databases): cut in fixed blocks like an
image state, read and written on every core, sharing their blocks with image states.

The repositories here use a 4 MiB big-file size (Config.big_file, 64 MiB by default) so
the files stay small; the blocks are the default 1 MiB."""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from workers.engine import Engine, StateSpec, tuning
from workers.engine.fs import directio
from workers.engine.repository.backend import LocalBackend
from workers.engine.repository.manifest import DirBody
from workers.engine.repository.packwriter import TinyPacker
from workers.engine.repository.repository import Config, chunk_key

from .conftest import BOTH_BACKENDS, dir_state, make_meta
from .test_crash import kill_when, spawn
from .treecmp import assert_same, data_extents, describe

MiB = 1 << 20
K64 = 64 << 10


def big_repo(path: Path) -> str:
    """A new file:// repository whose files of 4 MiB and more are big files."""
    cfg = Config(version=1, key=os.urandom(32), big_file=4 * MiB)
    LocalBackend(str(path)).put("config", msgspec.msgpack.encode(cfg), durable=True)
    return f"file://{path}"


def write_sparse_image(path: Path) -> None:
    """12 MiB: random data, a hole that starts and ends inside blocks, compressible text,
    and a hole up to the end."""
    with path.open("wb") as f:
        f.write(os.urandom(3 * MiB + 8 * K64))  # ends half-way into block 3
        f.seek(6 * MiB + 4 * K64)  # hole, then data from a quarter into block 6
        f.write(os.urandom(2 * MiB))
        f.write(b"log line of a disk image that compresses well\n" * 40_000)
        f.truncate(12 * MiB)  # a hole at the end


def make_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "vm").mkdir()
    img = root / "vm" / "disk.img"
    write_sparse_image(img)
    return img


def entry(engine: Engine, sid: int, path: bytes) -> tuple[list[tuple[bytes, int]], int]:
    body = engine.repo.get_manifest(sid)[1]
    assert isinstance(body, DirBody)
    e = next(e for e in body.entries if e.path == path)
    return e.chunks, e.size


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_big_file_with_holes_round_trips_and_a_change_in_the_middle_costs_one_block(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, processes: bool) -> None:
    if processes:  # reader and writer processes for the rest of the tree
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    img = make_tree(src)
    res = engine.capture(make_meta(1), dir_state(src))
    assert not res.warnings and res.files == 2
    chunks, size = entry(engine, 1, b"vm/disk.img")
    # fixed blocks inside each data extent: cut at every MiB, never across a hole
    offsets = [off for _c, off in chunks]
    assert offsets == [0, MiB, 2 * MiB, 3 * MiB, 6 * MiB + 4 * K64, 7 * MiB, 8 * MiB,
                       9 * MiB, 10 * MiB, 11 * MiB][: len(offsets)]
    assert size == 12 * MiB
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)  # bytes, metadata and the map of holes
    assert data_extents(bytes(out / "vm" / "disk.img")) == data_extents(bytes(img))

    # 64 KiB rewritten in place in the middle: the next capture stores that one block
    before = img.read_bytes()
    with img.open("r+b") as f:
        f.seek(7 * MiB + 3 * K64)
        f.write(os.urandom(K64))
    res2 = engine.capture(make_meta(2), dir_state(src))
    assert 0 < res2.stored_bytes < MiB + K64
    chunks2, _ = entry(engine, 2, b"vm/disk.img")
    assert [i for i, (a, b) in enumerate(zip(chunks, chunks2, strict=True)) if a != b] == [
        offsets.index(7 * MiB)]
    out2 = tmp_path / "out2"
    engine.restore(2, dir_state(out2))
    assert_same(src, out2)
    engine.restore(2, dir_state(out))  # onto the first restore: only the image differs
    assert_same(src, out)
    engine.restore(1, dir_state(out))  # and back: the old block again
    assert (out / "vm" / "disk.img").read_bytes() == before
    assert engine.verify(1).ok and engine.verify(2).ok


def image_state(path: Path) -> StateSpec:
    return StateSpec(kind="image", path=str(path))


@pytest.mark.parametrize("image_first", [False, True], ids=["dir-then-image", "image-then-dir"])
def test_big_file_and_the_same_bytes_as_an_image_state_share_their_blocks(
        tmp_path: Path, image_first: bool) -> None:
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    (src / "vm").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_text("hello\n")
    with (src / "vm" / "disk.img").open("wb") as f:  # data, a zero block, data
        f.write(os.urandom(4 * MiB) + bytes(MiB) + os.urandom(3 * MiB + 12345))
    vm = tmp_path / "vm"
    vm.mkdir()
    shutil.copyfile(src / "vm" / "disk.img", vm / "disk.img")
    order = [(image_state(vm / "disk.img")), dir_state(src)]
    if not image_first:
        order.reverse()
    first = engine.capture(make_meta(1, server_id=1), order[0])
    second = engine.capture(make_meta(2, server_id=2), order[1])
    assert first.stored_bytes > 7 * MiB  # the random blocks
    # the second stores no data block of the image again: only a small file's pack (and,
    # after an image, the zero block an image leaves out)
    assert second.stored_bytes < 32 * 1024, second.stored_bytes
    out = tmp_path / "out"
    engine.restore(1 if not image_first else 2, dir_state(out))
    assert_same(src, out)
    engine.restore(2 if not image_first else 1, image_state(tmp_path / "vm2.img"))
    assert (tmp_path / "vm2.img").read_bytes() == (vm / "disk.img").read_bytes()


def test_big_file_changing_while_read_is_read_again(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    img = make_tree(src)
    orig = TinyPacker.store_block
    changed: list[int] = []

    def store(self: TinyPacker, data: bytes | memoryview) -> tuple[bytes, int]:
        if not changed:  # a tenant's write into the middle while the first read runs
            changed.append(1)
            with img.open("r+b") as f:
                f.seek(9 * MiB)
                f.write(b"written during the capture")
        return orig(self, data)

    monkeypatch.setattr(TinyPacker, "store_block", store)
    res = engine.capture(make_meta(1), dir_state(src))
    assert changed and not res.warnings  # read again; the second read is consistent
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert (out / "vm" / "disk.img").read_bytes() == img.read_bytes()


def test_big_file_read_failing_mid_file_fails_the_capture_and_a_rerun_completes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)
    orig = directio.pread
    calls = [0]

    def pread(direct: int | None, fd: int, buf: mmap.mmap, length: int,
              offset: int) -> memoryview:
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(5, "Input/output error")
        return orig(direct, fd, buf, length, offset)

    monkeypatch.setattr(directio, "pread", pread)
    with pytest.raises(OSError, match="Input/output"):
        engine.capture(make_meta(1), dir_state(src))
    assert engine.get_snapshot(1) is None
    res = engine.capture(make_meta(1), dir_state(src))
    assert not res.warnings
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)


def test_a_state_of_many_big_files_holds_few_open_and_captures_every_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each big file holds a descriptor from its walk to its read (one thread reads them in
    turn): a state of many (a database's 1 GiB segments) must not open them all at once.
    It did: at the process's fd limit the rest were dropped as "vanished" (EMFILE)."""
    import resource

    from workers.engine.capture.bigfiles import BigFiles

    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    src.mkdir()
    n = 120
    for i in range(n):  # 4 MiB each (big here), one 4 KiB extent: cheap to read
        with (src / f"seg.{i:03}").open("wb") as f:
            f.write(b"%03d" % i * 1365)
            f.truncate(4 * MiB)
    orig = BigFiles._read
    first = [True]

    def read_big(self: BigFiles, fd: int, idx: int) -> None:
        if first[0]:  # the walk gets well ahead of the reads
            first[0] = False
            time.sleep(0.3)
        orig(self, fd, idx)

    monkeypatch.setattr(BigFiles, "_read", read_big)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 60, hard))
    try:
        res = engine.capture(make_meta(1), dir_state(src))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not res.warnings and res.files == n  # every segment
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    for i in (0, 57, n - 1):
        data = (out / f"seg.{i:03}").read_bytes()
        assert len(data) == 4 * MiB and data[:4095] == b"%03d" % i * 1365


def test_capture_killed_mid_big_file_then_rerun_stores_no_block_twice(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A big file's blocks go into packs (4 blocks a pack here); the packs stored (with
    their index) before the kill are reused by the rerun, block for block."""
    monkeypatch.setattr(tuning, "PACK_SIZE", 4 * MiB)
    url = big_repo(tmp_path / "repo")
    src = tmp_path / "srv"
    (src / "vm").mkdir(parents=True)
    (src / "vm" / "disk.img").write_bytes(os.urandom(24 * MiB))
    proc = spawn(f"""
import time
from workers.engine import tuning
from workers.engine.repository.repository import Repository
tuning.PACK_SIZE = 4 << 20
_orig = Repository.store_pack
def _slow(self, *args):
    time.sleep(0.2)
    return _orig(self, *args)
Repository.store_pack = _slow
from workers.engine import Engine
from tests.engine.conftest import make_meta, dir_state
Engine({url!r}).capture(make_meta(1), dir_state({str(src)!r}))
""")
    repo = tmp_path / "repo"

    def indexed() -> set[str]:
        return set(os.listdir(repo / "packidx")) if (repo / "packidx").exists() else set()

    kill_when(proc, lambda: len(indexed()) >= 2)  # mid-file: 2+ of its 6 packs stored
    before = indexed()
    assert 2 <= len(before) < 6
    engine = Engine(url)
    assert engine.get_snapshot(1) is None
    res = engine.capture(make_meta(1), dir_state(src))
    written = [k for k in engine.backend.put_keys if k.startswith("packidx/")]

    def members(names: Iterable[str]) -> list[bytes]:
        return [cid for n in names for cid, _o, _n in msgspec.msgpack.decode(
            (repo / "packidx" / n.rsplit("/", 1)[-1]).read_bytes())]

    old, new = members(before), members(written)
    assert len(old) == 4 * len(before) and not set(old) & set(new)  # none stored again
    assert len(set(old) | set(new)) == 24
    assert res.stored_bytes < (24 - len(old) + 1) * (MiB + 1024)
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)


def test_live_restore_copies_an_unchanged_big_file_into_a_new_inode_with_its_holes(
        tmp_path: Path) -> None:
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    img = make_tree(src)
    engine.capture(make_meta(1), dir_state(src))
    (src / "etc" / "hosts").write_text("changed\n")
    old_ino = img.stat().st_ino
    before = describe(src)
    writer = os.open(img, os.O_WRONLY)  # the running VM's: no lease, so no patch in place
    try:
        res = engine.restore(1, dir_state(src), live=True)
    finally:
        os.close(writer)
    assert res.files_reused == 1 and res.files_written == 1  # the image copied, hosts written
    assert img.stat().st_ino != old_ino  # a new inode: a running process keeps the old one
    after = describe(src)
    assert after[b"vm/disk.img"] == before[b"vm/disk.img"]  # bytes, holes, metadata
    assert (src / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


@pytest.mark.parametrize("differs", [False, True], ids=["same", "one-block-differs"])
def test_restore_proves_an_untrusted_big_file_by_its_blocks(tmp_path: Path,
                                                            differs: bool) -> None:
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    img = make_tree(src)
    engine.capture(make_meta(1), dir_state(src))
    other = tmp_path / "other"  # another copy of the tree: no inode the repository knows
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(other)], check=True)
    copy = other / "vm" / "disk.img"
    assert data_extents(bytes(copy)) == data_extents(bytes(img))
    if differs:  # same size and mtime, one byte different in block 7: hashing must see it
        st = copy.stat()
        with copy.open("r+b") as f:
            f.seek(7 * MiB + 5)
            f.write(b"\x00" if img.read_bytes()[7 * MiB + 5] else b"\x01")
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = engine.restore(1, dir_state(other))
    assert res.files_reused == (1 if differs else 2)  # etc/hosts always, the image if same
    assert_same(src, other)


@BOTH_BACKENDS
def test_a_big_files_blocks_of_zeros_are_allocated_not_written_and_still_prove_it(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """A disk image's blocks of zeros (written zeros, not holes) are restored allocated as
    they were and read as zeros, without being fetched or written (file://: by the
    restoring process; S3: in a writer's share, read ahead without them); a later restore
    onto a copy of that file (no record vouches for it) proves it by its blocks."""
    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "srv"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    img = src / "disk.img"  # 64 MiB (a big file by default): 6 MiB of data, then a hole
    with img.open("wb") as f:
        f.write(os.urandom(2 * MiB) + bytes(3 * MiB) + os.urandom(MiB))
        f.truncate(64 * MiB)
    engine.capture(make_meta(1), dir_state(src))
    out = tmp_path / "out"
    res = engine.restore(1, dir_state(out))
    assert (out / "disk.img").read_bytes() == img.read_bytes()
    assert res.bytes_written == 3 * MiB + len("127.0.0.1 localhost\n")  # no zero written
    assert os.stat(out / "disk.img").st_blocks * 512 >= 6 * MiB  # allocated as the original
    # A copy whose zeros are a hole (as SEEK_DATA may show the restored file's, or sparse
    # copies make them), the rest the same: proven, not rewritten. With zeros written in a
    # quarter of that hole, its blocks are not the snapshot's: rewritten.
    other = tmp_path / "other"
    subprocess.run(["cp", "-a", str(src), str(other)], check=True)
    for data_in_hole in (False, True):
        data = img.read_bytes()
        copy = other / "disk.img"
        st = copy.stat()
        copy.unlink()
        with copy.open("wb") as f:
            f.write(data[:2 * MiB])
            f.seek(5 * MiB if not data_in_hole else 4 * MiB + MiB // 4)
            f.write(data[f.tell():6 * MiB])
            f.truncate(64 * MiB)
        assert data_extents(bytes(copy))[0] == (0, 2 * MiB)
        os.chmod(copy, st.st_mode)
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
        again = engine.restore(1, dir_state(other))
        assert again.files_reused == (1 if data_in_hole else 2), data_in_hole
        assert (other / "disk.img").read_bytes() == img.read_bytes()


def test_a_new_state_gets_its_big_file_and_links_to_it_and_a_rotten_block_fails_it_whole(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Into a new state from file://, the big files are written by the restoring process
    while the writer processes write the small ones: a hard link to one is made once it
    exists; a block that does not match its id fails the restore, which leaves nothing."""
    from workers.engine import SnapshotCorrupt
    from workers.engine.restore import writerpool

    from .conftest import repo_dir, stored_at

    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)
    for i in range(40):
        (src / "etc" / f"f{i}").write_bytes(os.urandom(500 + i))
    os.link(src / "vm" / "disk.img", src / "disk-link")
    engine.capture(make_meta(1), dir_state(src))
    shares: list[list[int]] = []
    offer = writerpool.RestorePool.offer

    def spied(self: writerpool.RestorePool, given: list[Any], *a: Any) -> None:
        shares.extend(list(s) for s in given)
        offer(self, given, *a)

    monkeypatch.setattr(writerpool.RestorePool, "offer", spied)
    out = tmp_path / "out"
    got = engine.restore(1, dir_state(out))
    assert_same(src, out)
    assert os.stat(out / "disk-link").st_ino == os.stat(out / "vm" / "disk.img").st_ino
    body = engine.repo.get_manifest(1)[1]
    assert isinstance(body, DirBody)
    img = next(i for i, e in enumerate(body.entries) if e.size == 12 * MiB and e.chunks)
    assert sum(len(s) for s in shares) == got.files_written - 1 == 41  # all but the image
    assert img not in {i for s in shares for i in s}

    e = body.entries[img]
    pack, at = stored_at(engine, e, 4)
    obj = repo_dir(engine) / chunk_key(pack)
    raw = bytearray(obj.read_bytes())
    raw[at] ^= 0xFF
    obj.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt, match=pack.hex()):
        engine.restore(1, dir_state(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["out", "repo", "srv"]


def _evict(root: Path) -> None:
    """Every file under root out of the page cache (written back first)."""
    for d, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _cached(path: Path, at: int) -> bool:
    """Is the page of path holding byte `at` in the page cache? mincore(2) on a mapping of
    it: a read to find out, even an RWF_NOWAIT one, starts the read-ahead that puts it
    there."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    page = at - at % mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, page)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        vec = (ctypes.c_ubyte * 1)()
        try:
            assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE),
                                vec) == 0, ctypes.get_errno()
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE))
    finally:
        os.close(fd)
    return bool(vec[0] & 1)


@pytest.mark.parametrize("cached", [False, True], ids=["cold", "warm"])
def test_a_big_files_blocks_are_read_past_the_page_cache_and_checked_where_they_land(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cached: bool) -> None:
    """From a local repository a big file's block (a frame of its own in a pack) is read
    with O_DIRECT (a cold pack is not cached by the restore, a warm one stays cached) and
    decoded into the buffer it is written from: a byte flipped on disk (or in the cache,
    not yet written back), or a pack cut short, still fails the restore as corrupt, naming
    the pack."""
    from workers.engine import SnapshotCorrupt

    from .conftest import repo_dir, stored_at

    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)  # as a big file's restore
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)
    engine.capture(make_meta(1), dir_state(src))
    body = engine.repo.get_manifest(1)[1]
    assert isinstance(body, DirBody)
    e = next(e for e in body.entries if e.path == b"vm/disk.img")
    stored = {i: stored_at(engine, e, i) for i, _p, _o, _n in e.slices}
    repo = repo_dir(engine)

    def warm_or_cold() -> None:
        _evict(repo)
        if cached:
            for pack, _at in stored.values():
                (repo / chunk_key(pack)).read_bytes()

    warm_or_cold()
    engine.restore(1, dir_state(tmp_path / "out"))
    assert_same(src, tmp_path / "out")
    # past what reading a pack's frame table (and the read-ahead after it) caches
    far = [(pack, at) for pack, at in stored.values() if at >= 256 << 10]
    assert len(far) >= 4
    for pack, at in far:
        assert _cached(repo / chunk_key(pack), at) == cached

    pack, at = stored[4]
    obj = repo / chunk_key(pack)
    good = obj.read_bytes()
    raw = bytearray(good)
    raw[at] ^= 0xFF
    obj.write_bytes(bytes(raw))
    warm_or_cold()
    with pytest.raises(SnapshotCorrupt, match=f"does not match its id in object {pack.hex()}"
                       f"|{pack.hex()} does not decompress"):
        engine.restore(1, dir_state(tmp_path / "rotten"))
    obj.write_bytes(good[:at])  # cut short in the middle of block 4's frame
    warm_or_cold()
    with pytest.raises(SnapshotCorrupt, match=f"{pack.hex()} does not decompress"):
        engine.restore(1, dir_state(tmp_path / "short"))
    assert sorted(os.listdir(tmp_path)) == ["out", "repo", "srv"]


def test_a_new_states_big_file_is_under_way_before_the_writers_get_their_shares(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Its directories are made and its thread started first (the longest path of the
    bench's cold restore); should the shares not go out, that thread is stopped and waited
    for, and the restore leaves nothing."""
    import threading

    from workers.engine import TransientEngineError
    from workers.engine.restore import treewriter, writerpool

    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)  # vm/disk.img: in a directory of its own
    for i in range(40):
        (src / "etc" / f"f{i}").write_bytes(os.urandom(500 + i))
    engine.capture(make_meta(1), dir_state(src))
    started = threading.Event()
    offer, write_big = writerpool.RestorePool.offer, treewriter.TreeWriter._write_big
    seen: list[bool] = []

    def big(self: treewriter.TreeWriter, *a: Any) -> None:
        started.set()
        write_big(self, *a)

    def offer_once_big_started(self: writerpool.RestorePool, *a: Any) -> None:
        seen.append(started.wait(30))
        if len(seen) == 2:
            raise TransientEngineError("a restore worker process died")
        offer(self, *a)

    monkeypatch.setattr(treewriter.TreeWriter, "_write_big", big)
    monkeypatch.setattr(writerpool.RestorePool, "offer", offer_once_big_started)
    engine.restore(1, dir_state(tmp_path / "out"))
    assert seen == [True]
    assert_same(src, tmp_path / "out")
    started.clear()
    with pytest.raises(TransientEngineError):
        engine.restore(1, dir_state(tmp_path / "new"))
    assert seen == [True, True]
    assert sorted(os.listdir(tmp_path)) == ["out", "repo", "srv"]


def test_a_new_states_bytes_written_count_the_big_file_written_beside_the_writers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The restoring process adds its big files' bytes to the count while the writers'
    are added in: the image, written here as the writers' count was being added, was lost
    from it (an unlocked += against the block thread's locked one)."""
    import threading

    from workers.engine.restore import treewriter, writerpool

    monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)
    for i in range(40):
        (src / "etc" / f"f{i}").write_bytes(os.urandom(500 + i))
    engine.capture(make_meta(1), dir_state(src))
    expected = engine.restore(1, dir_state(tmp_path / "first")).bytes_written
    assert expected > 5 * MiB  # the image's data

    ran, big_done = threading.Event(), threading.Event()
    run, write_big = writerpool.RestorePool.run, treewriter.TreeWriter._write_big

    def run_then_say(self: writerpool.RestorePool, *a: Any) -> None:
        run(self, *a)
        ran.set()

    def big_once_ran(self: treewriter.TreeWriter, *a: Any) -> None:
        ran.wait(30)  # the image is written as the writers' count is added in
        write_big(self, *a)
        big_done.set()

    def count(self: writerpool.RestorePool) -> int:
        if ran.is_set():
            big_done.wait(30)
        return int(self.__dict__["_count"])

    monkeypatch.setattr(writerpool.RestorePool, "run", run_then_say)
    monkeypatch.setattr(treewriter.TreeWriter, "_write_big", big_once_ran)
    monkeypatch.setattr(writerpool.RestorePool, "bytes_written", property(
        count, lambda self, v: self.__dict__.__setitem__("_count", v)), raising=False)
    got = engine.restore(1, dir_state(tmp_path / "second"))
    assert got.bytes_written == expected  # before: the image's bytes missing


def test_big_files_are_read_once_the_walk_is_over(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A big file's 1 MiB reads would queue on the disk ahead of a cold walk's metadata
    reads: it is opened when walked (its inode pinned) but read after the walk."""
    from workers.engine.capture.bigfiles import BigFiles
    from workers.engine.capture.walk import Walker

    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    (src / "a").mkdir(parents=True)
    write_sparse_image(src / "a" / "disk.img")  # walked first (sorted names)
    for d in ("b", "c", "d"):
        (src / d).mkdir()
        for i in range(20):
            (src / d / f"f{i}").write_bytes(os.urandom(3000))
    events: list[str] = []
    orig_walk, orig_read = Walker.walk, BigFiles._read

    def walk(self: Walker, fd: int, rel: bytes) -> None:
        if rel == b"d":
            time.sleep(0.3)  # a slow last directory: the big file would be read meanwhile
        orig_walk(self, fd, rel)
        if rel == b"":
            events.append("walk over")

    def read_big(self: BigFiles, fd: int, idx: int) -> None:
        events.append("big file read")
        orig_read(self, fd, idx)

    monkeypatch.setattr(Walker, "walk", walk)
    monkeypatch.setattr(BigFiles, "_read", read_big)
    res = engine.capture(make_meta(1), dir_state(src))
    assert events == ["walk over", "big file read"] and not res.warnings
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)


def test_a_big_files_blocks_are_read_ahead_of_the_threads_storing_them_and_bounded(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A block thread that read its own block left its core idle while the disk read it:
    the reads run ahead on threads of their own, while every store is held, but no more
    than the pipeline's window ahead (bounded memory)."""
    import threading

    engine = Engine(big_repo(tmp_path / "repo"))
    src = tmp_path / "srv"
    make_tree(src)  # 9 ranges of data: more than the window
    orig_pread, orig_store = directio.pread, TinyPacker.store_block
    reads = [0]
    lock = threading.Lock()
    release = threading.Event()
    seen: list[int] = []

    def pread(direct: int | None, fd: int, buf: mmap.mmap, length: int,
              offset: int) -> memoryview:
        with lock:
            reads[0] += 1
        return orig_pread(direct, fd, buf, length, offset)

    def held() -> None:
        time.sleep(0.5)  # the reads that may run meanwhile have
        with lock:
            seen.append(reads[0])
        release.set()

    def store(self: TinyPacker, data: bytes | memoryview) -> tuple[bytes, int]:
        with lock:
            if not seen and not release.is_set() and not getattr(store, "timer", None):
                store.timer = threading.Thread(target=held)  # type: ignore[attr-defined]
                store.timer.start()  # type: ignore[attr-defined]
        release.wait()
        return orig_store(self, data)

    monkeypatch.setattr(directio, "pread", pread)
    monkeypatch.setattr(TinyPacker, "store_block", store)
    res = engine.capture(make_meta(1), dir_state(src))
    assert not res.warnings
    threads, ahead = tuning.BIG_FILE_THREADS, tuning.BIG_FILE_READ_AHEAD
    # each held store took one block; the others were read meanwhile, up to the window
    # (threads + read-ahead submitted, and the next one taken)
    assert threads < seen[0] <= threads + ahead + 1
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert_same(src, out)
