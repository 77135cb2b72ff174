from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from workers.engine import (
    Engine,
    SnapshotNotFound,
    StateInvalid,
    StateSpec,
    tuning,
)

from .conftest import BOTH_BACKENDS, build_full_tree, dir_state, make_meta, record_barriers
from .treecmp import assert_same, describe

pytestmark = BOTH_BACKENDS


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_roundtrip_every_kind_of_entry(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                                       tmp_path: Path, processes: bool) -> None:
    if processes:  # big captures and restores use worker processes: force that path here
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
        monkeypatch.setattr(tuning, "PATCH_MIN", 0)  # rebuild below, not patch
    src = tmp_path / "src"
    build_full_tree(src)
    seen: list[tuple[int, int]] = []
    res = engine.capture(make_meta(1), dir_state(src), progress=lambda d, t: seen.append((d, t)))
    assert res.snapshot_id == 1 and not res.warnings
    assert res.size_bytes == sum(
        os.lstat(os.path.join(d, f)).st_size for d, _ds, fs in os.walk(src) for f in fs
        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    ) - 2 * len(b"linked content")  # hard links counted once
    assert res.stored_bytes < 8 << 20  # dup.bin, zeros and holes are not stored twice
    assert seen and seen[-1][0] == seen[-1][1]
    acl = os.getxattr(src / "tmp" / "owned", "system.posix_acl_access")
    assert acl and os.stat(src / "tmp" / "owned").st_mode & 0o070 == 0o070  # mask shows
    # restore into a path that does not exist yet
    dst = tmp_path / "restored" / "srv"
    dst.parent.mkdir()
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    # sparse file came back sparse
    assert os.stat(dst / "sparse.img").st_blocks * 512 < 1 << 20
    assert not [n for n in os.listdir(dst.parent) if n != "srv"]
    # restore over a tree that differs in every file: patched (threads), or rebuilt with
    # the worker processes writing the files beside the reuse checks of the threads
    for p in sorted(dst.rglob("*"), key=lambda q: -len(q.parts)):
        if p.is_file() and not p.is_symlink() and os.stat(p).st_nlink == 1:
            p.write_bytes(b"tenant data")
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)


def test_restore_over_modified_tree_is_exact(engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_full_tree(src)
    engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "srv"
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2,
                    ignore=lambda d, names: [n for n in names if n in ("fifo", "null", "loop9")])
    (dst / "etc" / "hostname").write_text("tampered")
    (dst / "new-file").write_text("extra")
    shutil.rmtree(dst / "empty-dir")
    os.chmod(dst / "suid", 0o755)
    r = engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert r.files_written >= 1


def test_restore_reuses_identical_files(engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(100):
        (src / f"f{i:03}").write_bytes(os.urandom(20_000 + i))
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    (src / "f007").write_bytes(b"changed")
    # forged: same size and mtime as the snapshot's file, different content
    st = os.stat(src / "f008")
    with open(src / "f008", "r+b") as f:
        f.write(b"X" * 10)
    os.utime(src / "f008", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = engine.restore(1, dir_state(src))
    assert describe(src) == ref
    assert r.files_written == 2 and r.files_reused == 98
    assert r.bytes_written == 20_007 + 20_008
    # f007 was replaced (new inode) and f008 modified (ctime moved): only f008 is read; the
    # other 98 are the very inodes the snapshot captured, unchanged since (same ino, ctime)
    assert engine.last_bytes_read == 20_008
    # after a restore, its trusted record lets the next restore skip reading too
    (src / "f010").write_bytes(b"changed again")
    r = engine.restore(1, dir_state(src))
    assert describe(src) == ref
    assert (r.files_written, r.files_reused, engine.last_bytes_read) == (1, 99, 0)
    # a tenant edit that keeps size and mtime is still caught (ctime moved): read, rewritten
    st = os.stat(src / "f011")
    with open(src / "f011", "r+b") as f:
        f.write(b"Y" * 10)
    os.utime(src / "f011", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = engine.restore(1, dir_state(src))
    assert describe(src) == ref
    assert (r.files_written, r.files_reused, engine.last_bytes_read) == (1, 99, 20_011)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_incremental_capture_does_not_read_unchanged_files(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, processes: bool) -> None:
    if processes:
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(300_000))
    r1 = engine.capture(make_meta(1), dir_state(src))
    assert engine.last_bytes_read == 20 * 300_000
    (src / "f3").write_bytes(os.urandom(10_000))
    (src / "tiny").write_bytes(b"small files live inline in the manifest")
    puts = engine.backend.puts
    barriers = record_barriers(monkeypatch, engine)
    r2 = engine.capture(make_meta(2), dir_state(src))
    # fsyncs only for the new object: the tiny pack holding f3 and 'tiny' (its index is a
    # dedup hint, not synced)
    new = list(engine.backend.put_keys)[-3:-1]  # the pack and its index (S3: in either order)
    assert barriers == [[k for k in new if k.startswith("data/")]]
    assert engine.last_bytes_read == 10_000 + 39  # only the changed and new files were read
    assert engine.backend.puts == puts + 3  # the tiny pack, its index, the manifest
    manifest_size = engine.backend.stat("snapshots/2")
    assert manifest_size is not None
    assert 10_001 < r2.stored_bytes < 10_001 + manifest_size and r1.stored_bytes > 6_000_000
    # another server's snapshot is never used as parent
    engine.capture(make_meta(3, server_id=2), dir_state(src))
    assert engine.last_bytes_read == 19 * 300_000 + 10_039
    dst = tmp_path / "out"
    engine.restore(2, dir_state(dst))
    assert_same(src, dst)


def test_capture_is_idempotent_and_catalog_rebuilds(engine: Engine,
                                                     open_engine: Callable[[], Engine],
                                                     tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "a").write_text("a")
    r1 = engine.capture(make_meta(5), dir_state(src))
    puts = engine.backend.puts
    (src / "a").write_text("changed later")
    assert engine.capture(make_meta(5), dir_state(src)) == r1
    assert engine.backend.puts == puts
    other = open_engine()  # a new process reading only the repository
    snaps = other.list_snapshots()
    assert [s.meta for s in snaps] == [make_meta(5)]
    assert snaps[0].state_kind == "directory" and snaps[0].size_bytes == 1
    assert other.get_snapshot(5) == snaps[0] and other.get_snapshot(6) is None
    assert other.writable()
    with pytest.raises(SnapshotNotFound):
        other.restore(6, dir_state(tmp_path / "x"))


def test_invalid_state(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(StateInvalid):
        engine.capture(make_meta(1), dir_state(tmp_path / "missing"))
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(StateInvalid):
        engine.capture(make_meta(1), dir_state(tmp_path / "link"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateInvalid):
        engine.capture(make_meta(1), dir_state(tmp_path / "file"))
    engine.capture(make_meta(2), dir_state(tmp_path / "real"))
    with pytest.raises(StateInvalid, match=r"^snapshot 2 holds a directory state, not an image$"):
        engine.restore(2, StateSpec(kind="image", path=str(tmp_path / "img")))
    assert engine.list_snapshots()[0].meta.snapshot_id == 2


def test_concurrent_captures_on_one_engine(engine: Engine, tmp_path: Path) -> None:
    srcs = []
    for n in range(2):
        src = tmp_path / f"srv{n}"
        src.mkdir()
        for i in range(30):
            (src / f"f{i}").write_bytes(os.urandom(50_000))
        srcs.append(src)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: engine.capture(make_meta(n + 1, server_id=n + 1),
                                                         dir_state(srcs[n])), range(2)))
    assert [r.snapshot_id for r in results] == [1, 2]
    for n in range(2):
        assert engine.verify(n + 1).ok
        dst = tmp_path / f"out{n}"
        engine.restore(n + 1, dir_state(dst))
        assert_same(srcs[n], dst)


def test_small_files_spread_over_several_tiny_packs(monkeypatch: pytest.MonkeyPatch,
                                                    engine: Engine, tmp_path: Path) -> None:
    monkeypatch.setattr(tuning, "TINY_PACK", 1000)
    monkeypatch.setattr(tuning, "TINY_PACK_LOCAL", 1000)
    monkeypatch.setattr(tuning, "PACK_CACHE_OBJECTS", 1)  # restore re-reads evicted packs
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(20):
        (src / f"s{i}").write_bytes(os.urandom(300))
    engine.capture(make_meta(1), dir_state(src))
    _h, body = engine.repo.get_manifest(1)
    assert len({e.pack for e in body.entries if e.pack}) == 5  # type: ignore[union-attr]
    dst = tmp_path / "out"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert engine.verify(1).ok


def test_touched_files_right_after_a_full_capture_need_no_full_sync(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """Objects of the committed parent are durable however recent: reusing them (a touched
    file's chunk or pack slice) fsyncs only what is new, not the whole filesystem."""
    src = tmp_path / "srv"
    src.mkdir()
    # more new objects (2 packs) than FULL_SYNC_AT: the first capture syncs all (file://;
    # a stored S3 object is durable, so there no capture syncs all)
    monkeypatch.setattr(tuning, "FULL_SYNC_AT", 1)
    for i in range(70):
        (src / f"f{i}").write_bytes(os.urandom(300_000))
    (src / "small").write_bytes(os.urandom(5000))
    barriers = record_barriers(monkeypatch, engine)
    engine.capture(make_meta(1), dir_state(src))
    first = barriers[0] if engine.backend.durable_on_put else None
    assert barriers == [first]
    for name in ("f1", "small"):  # same content, new mtime: read again, found stored
        os.utime(src / name, ns=(1, 1))
    engine.capture(make_meta(2), dir_state(src))
    assert barriers == [first, []] and engine.last_bytes_read == 305_000


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_incremental_capture_sees_xattr_changes(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, processes: bool) -> None:
    """Unchanged files (same inode and ctime) keep the parent's xattrs without listing them;
    setting or removing an xattr changes ctime, so such a file's xattrs are read again."""
    if processes:
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "srv"
    src.mkdir()
    for name in ("keep", "add", "drop"):
        (src / name).write_bytes(name.encode() * 1000)
    os.setxattr(src / "keep", "user.k", b"1")
    os.setxattr(src / "drop", "user.d", b"2")
    engine.capture(make_meta(1), dir_state(src))
    os.setxattr(src / "add", "user.a", b"3")
    os.removexattr(src / "drop", "user.d")
    engine.capture(make_meta(2), dir_state(src))
    _h, body = engine.repo.get_manifest(2)
    got = {e.path: e.xattrs for e in body.entries if e.path}  # type: ignore[union-attr]
    assert got == {b"keep": [("user.k", b"1")], b"add": [("user.a", b"3")], b"drop": []}
    dst = tmp_path / "out"
    engine.restore(2, dir_state(dst))
    assert_same(src, dst)


def test_restore_under_a_setgid_parent_keeps_owners(engine: Engine, tmp_path: Path) -> None:
    """Files made in a setgid directory take its group: restore must chown them back even
    when the snapshot's owner is the restoring user (it skips chown otherwise)."""
    src = tmp_path / "srv"
    src.mkdir()
    (src / "mine").write_bytes(b"x" * 5000)
    os.chown(src / "mine", os.geteuid(), os.getegid())
    (src / "theirs").write_bytes(b"y" * 300_000)
    os.chown(src / "theirs", 4321, 4321)
    engine.capture(make_meta(1), dir_state(src))
    parent = tmp_path / "sgid"
    parent.mkdir()
    os.chown(parent, -1, 2345)
    parent.chmod(0o2775)
    dst = parent / "srv"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert (dst / "mine").stat().st_gid == os.getegid()


def test_pack_blocks_decoded_only_where_needed(monkeypatch: pytest.MonkeyPatch,
                                               engine: Engine, tmp_path: Path) -> None:
    """Packs are compressed in independent blocks; files straddling block boundaries come
    back exactly, and restoring one changed small file decodes only its blocks."""
    from workers.engine.repository import packformat

    monkeypatch.setattr(packformat, "BLOCK", 1000)
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(30):
        (src / f"s{i:02}").write_bytes(os.urandom(700 + i))
    engine.capture(make_meta(1), dir_state(src))
    assert engine.verify(1).ok
    dst = tmp_path / "out"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    ranges: list[int] = []
    wholes: list[str] = []
    backend = engine.backend
    get_range, get = backend.get_range, backend.get

    def counted_range(key: str, offset: int, n: int) -> bytes:
        ranges.append(n)
        return get_range(key, offset, n)

    def counted_get(key: str) -> bytes:
        wholes.append(key)
        return get(key)

    monkeypatch.setattr(backend, "get_range", counted_range)
    monkeypatch.setattr(backend, "get", counted_get)
    (dst / "s17").write_bytes(b"changed")
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    # only the one or two frames holding s17 were read, never the whole pack
    assert 1 <= len(ranges) <= 2 and sum(ranges) < 2 * 1100
    assert not [k for k in wholes if k.startswith("data/")]


def test_a_restore_writes_with_the_collector_paused_and_brings_it_back(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """Nothing a restore makes is cyclic garbage: it runs with the collector paused (the
    10k-file S3 bench's parent spent 7-40 ms in 30 collections), which is back after."""
    import gc

    from workers.engine.restore.treewriter import TreeWriter

    src = tmp_path / "srv"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(b"x%d" % i * 100)
    engine.capture(make_meta(1), dir_state(src))
    seen: list[bool] = []
    finish = TreeWriter._finish

    def noted(self: TreeWriter, fd: int, e: object) -> os.stat_result:
        seen.append(gc.isenabled())
        return finish(self, fd, e)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeWriter, "_finish", noted)
    assert gc.isenabled()
    engine.restore(1, dir_state(tmp_path / "out"))
    assert seen and not any(seen)
    assert gc.isenabled()
    assert_same(src, tmp_path / "out")
