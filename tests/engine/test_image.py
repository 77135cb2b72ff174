"""Image state: zero blocks as holes, block-diff restore, journaled crash safety."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from workers.engine import Engine, EngineError, SnapshotCorrupt, StateSpec
from workers.engine.blocks.pipeline import all_zero
from workers.engine.repository.manifest import Entry, ImageBody
from workers.engine.repository.repository import chunk_key

from .conftest import make_meta, repo_dir, stored_at
from .test_crash import spawn

MiB = 1 << 20
SIZE = 16 * MiB + 1000  # partial last block


def img_state(p: Path) -> StateSpec:
    return StateSpec(kind="image", path=str(p))


def make_image(p: Path) -> bytes:
    """Blocks 0,2-5,10 and the partial tail hold data; 1 is explicit zeros; others holes."""
    with open(p, "wb") as f:
        f.truncate(SIZE)
        for i in (0, 2, 3, 4, 5, 10):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))
        f.seek(MiB)
        f.write(bytes(MiB))
        f.seek(16 * MiB)
        f.write(os.urandom(1000))
    return p.read_bytes()


def data_puts(engine: Engine) -> int:
    return len([k for k in engine.backend.put_keys if k.startswith("data/")])


def image_body(engine: Engine, sid: int) -> ImageBody:
    body = engine.repo.get_manifest(sid)[1]
    assert isinstance(body, ImageBody)
    return body


def as_entry(body: ImageBody) -> Entry:
    """An image's blocks as a file entry's chunks and slices (conftest.stored_at)."""
    return Entry(path=b"", kind="f", mode=0, uid=0, gid=0, mtime_ns=0,
                 chunks=[(cid, i * body.block_size) for i, cid in body.blocks],
                 slices=body.slices)


def test_zero_check_sees_a_byte_past_the_prefix_and_short_tails() -> None:
    zero = bytes(MiB)
    block = bytearray(MiB)
    assert all_zero(memoryview(block), zero)
    assert all_zero(memoryview(block)[:1000], zero)  # a short last block
    block[-1] = 1  # beyond the 64-byte prefix checked first
    assert not all_zero(memoryview(block), zero)
    assert not all_zero(memoryview(block)[MiB - 10:], zero)


def test_block_that_is_zero_but_for_its_last_byte_is_stored(
        engine: Engine, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.write(bytes(MiB - 1) + b"\x01" + bytes(MiB))  # block 0: one byte; block 1: zeros
    original = img.read_bytes()
    engine.capture(make_meta(1), img_state(img))
    assert data_puts(engine) == 1  # one pack, the block in it
    img.unlink()
    engine.restore(1, img_state(img))
    assert img.read_bytes() == original


def modify(p: Path) -> None:
    with open(p, "r+b") as f:
        for i in (3, 10):
            f.seek(i * MiB + 12345)
            f.write(b"tenant changed this")
        f.seek(7 * MiB)  # a hole in the snapshot gets data
        f.write(b"x" * 5000)


def test_image_capture_skips_zero_blocks_and_restore_writes_only_diffs(
        engine: Engine, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    original = make_image(img)
    res = engine.capture(make_meta(1), img_state(img))
    assert res.size_bytes == SIZE and res.files == 1
    # 6 data blocks in one pack (each its own frame), the 1000-byte tail in a small pack;
    # zeros and holes not stored
    assert data_puts(engine) == 2
    body = image_body(engine, 1)
    assert [i for i, _c in body.blocks] == [0, 2, 3, 4, 5, 10, 16]
    assert sorted(k for k, _p, _o, _n in body.slices) == list(range(7))
    assert len({p for _k, p, _o, _n in body.slices}) == 2
    assert 6 * MiB < res.stored_bytes < 6 * MiB + 20_000
    assert engine.verify(1).ok
    # unchanged image: incremental capture reads nothing
    engine.capture(make_meta(2), img_state(img))
    assert engine.last_bytes_read == 0
    modify(img)
    r = engine.restore(1, img_state(img))
    assert r.bytes_written == 2 * MiB  # blocks 3 and 10; block 7 punched
    assert img.read_bytes() == original
    with open(img, "rb") as f:  # block 7 is a hole again
        assert os.lseek(f.fileno(), 7 * MiB, os.SEEK_DATA) >= 10 * MiB
    assert engine.restore(1, img_state(img)).bytes_written == 0
    # capture after a change reads and stores only what changed
    modify(img)
    puts = data_puts(engine)
    res3 = engine.capture(make_meta(3), img_state(img))
    assert data_puts(engine) - puts == 1  # one new pack: blocks 3, 7 and 10
    assert 2 * MiB < res3.stored_bytes < 2 * MiB + 20_000  # block 7 compresses
    old, new = image_body(engine, 1), image_body(engine, 3)
    where = {k: p for k, p, _o, _n in new.slices}
    fresh = {p for _k, p, _o, _n in new.slices} - {p for _k, p, _o, _n in old.slices}
    assert len(fresh) == 1
    assert sorted(new.blocks[k][0] for k, p in where.items() if p in fresh) == [3, 7, 10]
    # a missing image is created
    img.unlink()
    r = engine.restore(1, img_state(img))
    assert img.read_bytes() == original and r.bytes_written == 6 * MiB + 1000
    assert sorted(os.listdir(tmp_path)) == ["disk.img", "repo"]


def _killed_restore(tmp_path: Path, repo_url: str, patch: str) -> Path:
    img = tmp_path / "disk.img"
    proc = spawn(patch + f"""
import pytest

from workers.engine import Engine, SnapshotCorrupt, StateSpec
from workers.engine.blocks.pipeline import all_zero
from workers.engine.repository.repository import chunk_key
Engine({repo_url!r}).restore(1, StateSpec(kind="image", path={str(img)!r}))
""")
    assert proc.wait() == -signal.SIGKILL
    return tmp_path / ".disk.img.restore-journal"


def test_image_restore_killed_while_applying_is_rolled_forward(
        engine: Engine, repo_url: str, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    original = make_image(img)
    engine.capture(make_meta(1), img_state(img))
    modify(img)
    journal = _killed_restore(tmp_path, repo_url, """
import os, signal
from workers.engine.fs import fsutil
_orig = fsutil.write_full
_n = [0]
def _write(fd, data, off):
    _n[0] += 1
    if _n[0] == 2:  # one block applied in place, then killed: the image is a mix now
        os.kill(os.getpid(), signal.SIGKILL)
    _orig(fd, data, off)
fsutil.write_full = _write
""")
    assert journal.exists() and img.read_bytes() != original
    engine.recover(img_state(img))
    assert not journal.exists()
    assert img.read_bytes() == original


def test_image_restore_killed_while_journaling_leaves_old_image(
        engine: Engine, repo_url: str, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    make_image(img)
    engine.capture(make_meta(1), img_state(img))
    modify(img)
    before = img.read_bytes()
    journal = _killed_restore(tmp_path, repo_url, """
import os, signal
from workers.engine.repository.packreader import PackCache
_orig = PackCache.read_member
_n = [0]
def _read(self, *args):
    _n[0] += 1
    if _n[0] == 2:  # one block fetched and journaled, then killed
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, *args)
PackCache.read_member = _read
""")
    assert journal.exists() and img.read_bytes() == before
    engine.recover(img_state(img))
    assert not journal.exists() and img.read_bytes() == before


def test_image_restore_refuses_corrupt_data_before_touching_the_image(
        engine: Engine, tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    make_image(img)
    engine.capture(make_meta(1), img_state(img))
    body = image_body(engine, 1)
    k = [i for i, _c in body.blocks].index(10)
    cid, at = stored_at(engine, as_entry(body), k)  # the pack holding block 10, where
    obj = repo_dir(engine) / chunk_key(cid)
    raw = bytearray(obj.read_bytes())
    raw[at] ^= 0xFF
    obj.write_bytes(bytes(raw))
    modify(img)
    before = img.read_bytes()
    with pytest.raises(SnapshotCorrupt, match=f"snapshot 1 .*{cid.hex()}"):
        engine.restore(1, img_state(img))
    assert img.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["disk.img", "repo"]
    report = engine.verify(1)
    assert not report.ok and cid.hex() in report.errors[0]


def test_blocks_stored_as_objects_by_an_older_engine_are_not_stored_again(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image captured before manifest version 4 (a block an object of its own) still
    restores, and a capture of the same bytes now stores none of them again."""
    from workers.engine.repository.packwriter import TinyPacker

    img = tmp_path / "disk.img"
    original = make_image(img)
    with monkeypatch.context() as old:  # the older engine: every block its own object
        old.setattr(TinyPacker, "store_block", lambda self, data: self.repo.store_object(data))
        engine.capture(make_meta(1), img_state(img))
    assert data_puts(engine) == 7 and not image_body(engine, 1).slices
    res = engine.capture(make_meta(2, server_id=2), img_state(img))
    assert data_puts(engine) == 7 and res.stored_bytes < 4096  # the manifest only
    assert image_body(engine, 2).blocks == image_body(engine, 1).blocks
    modify(img)  # blocks 3, 7, 10 change: those go into a pack, the rest stay objects
    engine.capture(make_meta(3, server_id=2), img_state(img))
    assert data_puts(engine) == 8
    assert sorted(image_body(engine, 3).blocks[k][0]
                  for k, _p, _o, _n in image_body(engine, 3).slices) == [3, 7, 10]
    engine.restore(3, img_state(tmp_path / "new.img"))
    assert (tmp_path / "new.img").read_bytes() == img.read_bytes()
    engine.restore(1, img_state(img))
    assert img.read_bytes() == original
    assert engine.verify(1).ok and engine.verify(3).ok


def test_an_older_engine_refuses_an_image_manifest_with_packed_blocks(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 4: an engine that reads up to 3 (which would look for packed blocks as
    objects and call the snapshot corrupt, and reclaim their packs) refuses it instead."""
    from workers.engine.repository import manifest

    img = tmp_path / "disk.img"
    make_image(img)
    engine.capture(make_meta(1), img_state(img))
    assert engine.repo.get_header(1).version == 4
    objects = sorted(p for p in (repo_dir(engine) / "data").rglob("*") if p.is_file())
    monkeypatch.setattr(manifest, "MANIFEST_VERSION", 3)
    with pytest.raises(SnapshotCorrupt, match="newer engine"):
        engine.restore(1, img_state(tmp_path / "new.img"))
    with pytest.raises(EngineError, match="newer engine"):
        engine.reclaim(wait=True)
    assert sorted(p for p in (repo_dir(engine) / "data").rglob("*") if p.is_file()) == objects
