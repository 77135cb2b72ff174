"""Symlink attacks, corruption, concurrent reclaim, delete, live changes, storage full."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engine import (
    Cancelled,
    Engine,
    SnapshotCorrupt,
    StateInvalid,
    StateSpec,
    StorageFull,
    tuning,
)
from workers.engine.capture import threadreader
from workers.engine.repository import chunker
from workers.engine.repository.repository import Repository, chunk_key

from .conftest import dir_state, make_meta, repo_dir, stored_at
from .treecmp import assert_same, describe


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(os.urandom(1 << 20))
    (out / "f1").write_bytes(b"same content as the snapshot file")
    os.chmod(out, 0o700)
    os.utime(out, ns=(1, 1_000_000_000))
    return out


def test_capture_stores_symlinks_and_never_reads_their_targets(engine: Engine,
                                                               tmp_path: Path) -> None:
    out = _outside(tmp_path)
    src = tmp_path / "srv"
    src.mkdir()
    (src / "own").write_bytes(b"12345")
    os.symlink(out / "secret", src / "to-secret")
    os.symlink(out, src / "to-dir")
    before = describe(out)
    engine.capture(make_meta(1), dir_state(src))
    assert engine.last_bytes_read == 5  # the 1 MiB target was never read
    assert describe(out) == before
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
    assert os.readlink(dst / "to-dir") == str(out)


def test_a_symlink_above_a_nested_state_is_never_followed(engine: Engine,
                                                          tmp_path: Path) -> None:
    # A state nested in a tree its tenant controls (a data directory, or a disk image, in a
    # container's root filesystem): the tenant swaps a directory above it for a symlink to
    # the host's own. Capture and restore followed it (the state path was opened whole).
    host = tmp_path / "host"
    (host / "lib" / "mysql").mkdir(parents=True)
    (host / "lib" / "mysql" / "ibdata1").write_bytes(b"the host's own database")
    (host / "lib" / "disk.img").write_bytes(b"the host's own disk" * 100)
    rootfs = tmp_path / "rootfs"
    state = rootfs / "var" / "lib" / "mysql"
    state.mkdir(parents=True)
    (state / "ibdata1").write_bytes(b"the tenant's database")
    image = StateSpec(kind="image", path=str(rootfs / "var" / "lib" / "disk.img"))
    (rootfs / "var" / "lib" / "disk.img").write_bytes(b"the tenant's disk" * 100)
    engine.capture(make_meta(1), dir_state(state))
    engine.capture(make_meta(2), image)
    subprocess.run(["rm", "-rf", str(rootfs / "var")], check=True)
    os.symlink(host, rootfs / "var")
    before = describe(host)
    for spec, sid in ((dir_state(state), 1), (image, 2)):
        with pytest.raises(StateInvalid, match=r"var in state path .* is a symlink"):
            engine.capture(make_meta(3), spec)
        with pytest.raises(StateInvalid, match=r"var in state path .* is a symlink"):
            engine.recover(spec)
        with pytest.raises(StateInvalid, match=r"var in state path .* is a symlink"):
            engine.restore(sid, spec)
    assert describe(host) == before
    assert engine.snapshot_ids() == [1, 2]


def test_restore_with_tenant_symlinks_in_current_tree(engine: Engine, tmp_path: Path) -> None:
    out = _outside(tmp_path)
    src = tmp_path / "srv"
    (src / "data").mkdir(parents=True)
    (src / "data" / "f1").write_bytes(b"same content as the snapshot file")
    (src / "data" / "secret").write_bytes(b"tenant's own")
    (src / "file").write_bytes(b"same content as the snapshot file")
    engine.capture(make_meta(1), dir_state(src))
    ref = describe(src)
    # make outside look exactly like the snapshot to tempt reuse, then plant symlinks
    for p in (out / "f1",):
        st = os.stat(src / "data" / "f1")
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(out, ns=(1, 1_000_000_000))
    outside_before = describe(out)
    outside_stat = os.stat(out)
    (src / "data" / "f1").unlink()
    (src / "data" / "secret").unlink()
    (src / "data").rmdir()
    os.symlink(out, src / "data")  # directory replaced by a symlink to outside
    (src / "file").unlink()
    os.symlink(out / "f1", src / "file")  # file replaced by a symlink to outside
    r = engine.restore(1, dir_state(src))
    assert r.files_reused == 0
    assert describe(src) == ref
    assert describe(out) == outside_before
    st = os.stat(out)
    assert (st.st_mode, st.st_uid, st.st_mtime_ns) == (
        outside_stat.st_mode, outside_stat.st_uid, outside_stat.st_mtime_ns)
    assert os.stat(src / "data" / "f1").st_ino != os.stat(out / "f1").st_ino


def test_restore_of_stored_symlink_pointing_outside(engine: Engine, tmp_path: Path) -> None:
    out = _outside(tmp_path)
    src = tmp_path / "srv"
    src.mkdir()
    os.symlink(out, src / "escape")
    os.symlink(out / "secret", src / "escape-file")
    os.lchown(src / "escape", 4321, 4321)
    os.setxattr(src / "escape", "trusted.x", b"on the link", follow_symlinks=False)
    os.utime(src / "escape", ns=(5, 5), follow_symlinks=False)
    engine.capture(make_meta(1), dir_state(src))
    before = describe(out)
    st0 = os.stat(out)
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    engine.restore(1, dir_state(dst))  # and over an existing tree
    assert_same(src, dst)
    assert describe(out) == before
    st = os.stat(out)
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (
        st0.st_mode, st0.st_uid, st0.st_gid, st0.st_mtime_ns)
    assert "trusted.x" not in os.listxattr(out)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_corruption_is_detected_and_restore_refuses(monkeypatch: pytest.MonkeyPatch,
                                                    engine: Engine, tmp_path: Path,
                                                    processes: bool) -> None:
    if processes:  # a worker process finds the corruption: the parent raises it the same
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "srv"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(300_000))  # above INLINE_MAX: big chunks, packed
    (src / "b").write_bytes(b"compressible " * 30_000)
    engine.capture(make_meta(7), dir_state(src))
    (src / "a").write_bytes(b"current state")
    (src / "b").write_bytes(b"current state too")
    current = describe(src)
    _h, body = engine.repo.get_manifest(7)
    for target in ("a", "b"):
        entry = next(e for e in body.entries if e.path == target.encode())  # type: ignore[union-attr]
        cid, at = stored_at(engine, entry)  # the object (pack) holding it, where
        obj = repo_dir(engine) / chunk_key(cid)
        raw = bytearray(obj.read_bytes())
        raw[at] ^= 0x01
        obj.write_bytes(bytes(raw))
        report = engine.verify(7)
        assert not report.ok
        assert any("snapshot 7" in e and cid.hex() in e for e in report.errors)
        # workers write only into a new state: the processes variant restores into one
        dst = tmp_path / "new" if processes else src
        with pytest.raises(SnapshotCorrupt) as exc:
            engine.restore(7, dir_state(dst))
        assert "snapshot 7" in str(exc.value) and cid.hex() in str(exc.value)
        assert describe(src) == current  # the current state was not touched
        assert sorted(os.listdir(tmp_path)) == ["repo", "srv"]  # no new state, no leftovers
        raw[at] ^= 0x01
        obj.write_bytes(bytes(raw))
    assert engine.verify(7).ok


def test_capture_and_reclaim_at_once(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                                     repo_url: str, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(30):
        (src / f"f{i:02}").write_bytes(os.urandom(200_000))
    engine.capture(make_meta(1), dir_state(src))
    engine.delete(1)  # every chunk is now unreferenced...
    (src / "new").write_bytes(os.urandom(200_000))
    orig = Repository.store_chunk

    def slow(self: Repository, data: bytes | memoryview) -> tuple[bytes, int]:
        time.sleep(0.01)
        return orig(self, data)

    monkeypatch.setattr(Repository, "store_chunk", slow)
    inside = threading.Event()
    orig_load = Repository.load_known

    def load(self: Repository) -> None:
        orig_load(self)
        inside.set()  # the capture now holds its lock and knows the (orphaned) chunks

    monkeypatch.setattr(Repository, "load_known", load)
    other = Engine(repo_url)  # ...but a concurrent capture is about to reference them
    errors: list[BaseException] = []

    def run() -> None:
        try:
            other.capture(make_meta(2), dir_state(src))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    assert inside.wait(10)
    assert engine.reclaim().skipped_locked
    stats = engine.reclaim(wait=True)  # blocks until the capture committed
    t.join()
    assert not errors
    assert stats.objects_removed == 0 and not stats.skipped_locked
    # the capture found the 30 orphaned chunks stored and stored only 'new'
    assert len([k for k in other.backend.put_keys if k.startswith("data/")]) == 1
    assert engine.verify(2).ok
    dst = tmp_path / "dst"
    engine.restore(2, dir_state(dst))
    assert_same(src, dst)


def test_delete_and_reclaim(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                            tmp_path: Path) -> None:
    # these files: big chunks (not small files), each capture's new ones in a pack
    monkeypatch.setattr(tuning, "INLINE_MAX", 4096)
    src = tmp_path / "srv"
    src.mkdir()
    (src / "shared").write_bytes(os.urandom(100_000))
    engine.capture(make_meta(1), dir_state(src))
    (src / "only1").write_bytes(os.urandom(70_000))
    engine.capture(make_meta(2), dir_state(src))  # its pack: only1's chunk alone
    (src / "only1").unlink()
    (src / "only2").write_bytes(os.urandom(60_000))
    engine.capture(make_meta(3), dir_state(src))
    leftover = repo_dir(engine) / "data" / "ab" / ".tmp-leftover"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"killed writer")
    assert engine.reclaim().objects_removed == 0
    engine.delete(2)
    engine.delete(2)  # idempotent
    assert engine.get_snapshot(2) is None
    assert [s.meta.snapshot_id for s in engine.list_snapshots()] == [1, 3]
    stats = engine.reclaim()
    # the pack (70,000 bytes stored raw, plus its tables) and its index
    assert stats.objects_removed == 1 and 70_000 <= stats.bytes_removed <= 70_300
    assert not list(repo_dir(engine).rglob(".tmp-*"))
    assert engine.verify(3).ok
    dst = tmp_path / "dst"
    engine.restore(3, dir_state(dst))
    assert_same(src, dst)
    engine.delete(1)
    engine.delete(3)
    assert engine.reclaim().objects_removed == 2


@pytest.mark.parametrize("changes", [1, 100])
def test_file_changing_while_read(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                                  tmp_path: Path, changes: int) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    live = src / "live.log"
    live.write_bytes(b"start\n")
    (src / "calm").write_bytes(b"calm")
    ino = os.stat(live).st_ino
    orig = chunker.iter_chunks
    done = [0]

    def changing(fd: int, size: int, *a: object) -> Iterator[tuple[bytes | memoryview, int]]:
        yield from orig(fd, size, *a)  # type: ignore[arg-type]
        if os.fstat(fd).st_ino == ino and done[0] < changes:
            done[0] += 1
            with open(live, "ab") as f:
                f.write(b"line %d\n" % done[0])

    monkeypatch.setattr(threadreader, "iter_chunks", changing)
    res = engine.capture(make_meta(1), dir_state(src))
    dst = tmp_path / "dst"
    engine.restore(1, dir_state(dst))
    if changes == 1:  # read again, consistent, no warning
        assert res.warnings == []
        assert (dst / "live.log").read_bytes() == live.read_bytes()
    else:
        assert len(res.warnings) == 1 and "live.log" in res.warnings[0]
        assert done[0] == 4  # first read + 3 retries
    assert (dst / "calm").read_bytes() == b"calm"


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_storage_full(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, processes: bool) -> None:
    if processes:
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        engine = Engine(f"file://{small}/repo")
        src = tmp_path / "srv"
        src.mkdir()
        for i in range(8):
            (src / f"f{i}").write_bytes(os.urandom(1 << 20))
        with pytest.raises(StorageFull):
            engine.capture(make_meta(1), dir_state(src))
        assert engine.get_snapshot(1) is None
        assert not (small / "repo" / "snapshots").exists() or not os.listdir(
            small / "repo" / "snapshots")
        assert not [p for p in (small / "repo").rglob(".tmp-*")]
        engine.reclaim()  # frees the partial capture's chunks: the service can retry
        (src / "f0").unlink()
        for i in range(1, 8):
            (src / f"f{i}").write_bytes(os.urandom(100_000))
        assert engine.capture(make_meta(1), dir_state(src)).files == 7
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_cancelled_capture_commits_nothing(monkeypatch: pytest.MonkeyPatch, engine: Engine,
                                           tmp_path: Path, processes: bool) -> None:
    if processes:
        monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)
    src = tmp_path / "srv"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(1000))
    with pytest.raises(Cancelled):
        engine.capture(make_meta(1), dir_state(src), should_stop=lambda: True)
    assert engine.get_snapshot(1) is None


def test_unreadable_manifest_is_not_listed_and_blocks_reclaim(engine: Engine,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    engine.capture(make_meta(1), dir_state(src))
    (repo_dir(engine) / "snapshots" / "99").write_bytes(b"garbage")
    assert [s.meta.snapshot_id for s in engine.list_snapshots()] == [1]
    assert not engine.verify(99).ok
    with pytest.raises(SnapshotCorrupt):  # never sweep when the mark may be incomplete
        engine.reclaim()
    assert engine.verify(1).ok


def test_corrupt_tiny_pack_is_detected(engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(20):  # small files share one "tiny pack" object
        (src / f"small{i}").write_bytes(b"small file %d " % i * 20)
    engine.capture(make_meta(3), dir_state(src))
    _h, body = engine.repo.get_manifest(3)
    packs = {e.pack for e in body.entries if e.pack}  # type: ignore[union-attr]
    assert len(packs) == 1
    pack = packs.pop()
    obj = repo_dir(engine) / chunk_key(pack)
    raw = bytearray(obj.read_bytes())
    _pack, at = stored_at(engine, body.entries[-1])  # type: ignore[union-attr]
    raw[at] ^= 0x10  # inside its (only) frame
    obj.write_bytes(bytes(raw))
    report = engine.verify(3)
    assert not report.ok and "snapshot 3" in report.errors[0] and pack.hex() in report.errors[0]
    # Every file changed, so the restore must write every member of the pack. (With only
    # small0 changed it needs small0's bytes alone, which the flip may leave intact: the
    # members' order in the frame follows the readers' timing, and a member before the flip
    # decodes right and matches its id, so that restore was correct to succeed.)
    for i in range(20):
        (src / f"small{i}").write_bytes(b"current %d" % i)
    current = describe(src)
    with pytest.raises(SnapshotCorrupt, match=f"snapshot 3 .*{pack.hex()}"):
        engine.restore(3, dir_state(src))
    assert describe(src) == current


def test_small_files_dedup_across_packs_and_reclaim(engine: Engine, tmp_path: Path) -> None:
    """A small file's content already in a tiny pack is not stored again (even by another
    server's capture); a pack and its index live while any snapshot references the pack."""
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(5):
        (src / f"s{i}").write_bytes(os.urandom(3000 + i))
    (src / "twin").write_bytes((src / "s0").read_bytes())  # same content, one copy
    engine.capture(make_meta(1), dir_state(src))
    (src / "new").write_bytes(os.urandom(2000))
    engine.capture(make_meta(2, server_id=99), dir_state(src))  # no parent: all read
    bodies = [engine.repo.get_manifest(i)[1] for i in (1, 2)]
    packs = [{e.path: (e.pack, e.pack_off) for e in b.entries if e.pack}  # type: ignore[union-attr]
             for b in bodies]
    assert packs[0][b"twin"] == packs[0][b"s0"]
    assert all(packs[1][p] == packs[0][p] for p in packs[0])
    assert packs[1][b"new"][0] != packs[0][b"s0"][0]
    root = repo_dir(engine)
    assert len(list((root / "packidx").iterdir())) == 2
    engine.delete(1)
    assert engine.reclaim().objects_removed == 0  # snapshot 2 still uses the first pack
    dst = tmp_path / "dst"
    engine.restore(2, dir_state(dst))
    assert_same(src, dst)
    assert engine.verify(2).ok
    engine.delete(2)
    engine.reclaim()
    assert not list((root / "packidx").iterdir())
    assert not [p for p in (root / "data").rglob("*") if p.is_file()]


def test_the_janitor_outlives_a_symlink_planted_above_its_work(tmp_path: Path) -> None:
    # A removal left to the janitor, whose parent then went through a symlink: the refusal
    # (StateInvalid, not an OSError) ended the janitor's thread, and with it every removal
    # scheduled after it.
    from workers.engine.fs.removal import Janitor

    host, rootfs = tmp_path / "host", tmp_path / "rootfs"
    (host / "old").mkdir(parents=True)
    (host / "old" / "keep").write_bytes(b"the host's")
    (rootfs / "var" / "old").mkdir(parents=True)
    subprocess.run(["rm", "-rf", str(rootfs / "var")], check=True)
    os.symlink(host, rootfs / "var")
    (tmp_path / "other" / "old").mkdir(parents=True)
    janitor = Janitor()
    janitor.schedule(str(rootfs / "var"), b"old", delay=0.0)
    time.sleep(0.3)
    janitor.schedule(str(tmp_path / "other"), b"old", delay=0.0)
    deadline = time.monotonic() + 5
    while (tmp_path / "other" / "old").exists():
        assert time.monotonic() < deadline, "the janitor stopped"
        time.sleep(0.05)
    assert (host / "old" / "keep").read_bytes() == b"the host's"
