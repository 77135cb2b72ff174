"""Fixed blocks in packs on a real SeaweedFS: an image state and a directory's big file are
a few PUTs per pack (not one per MiB), restore byte for byte (holes too) with one GET per
pack, share their blocks, and keep them through a reclaim; a rotten pack is refused."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine import Engine, SnapshotCorrupt, StateSpec, tuning
from workers.engine.repository.manifest import DirBody, ImageBody
from workers.engine.repository.repository import Config, chunk_key
from workers.engine.repository.s3backend import S3Backend

from .conftest import dir_state, make_meta, stored_at
from .test_image import as_entry
from .treecmp import assert_same, data_extents

MiB = 1 << 20


def image_state(p: Path) -> StateSpec:
    return StateSpec(kind="image", path=str(p))


def open_engine(seaweed: SeaweedProcess, tmp_path: Path, url: str | None = None) -> Engine:
    """An engine on a new prefix whose files of 4 MiB and more are big files."""
    opts = seaweed.options(cache_dir=str(tmp_path / "cache"), lock_settle=0.05,
                           reclaim_margin=0.001)
    if url is None:
        url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
        cfg = Config(version=1, key=os.urandom(32), big_file=4 * MiB)
        S3Backend.from_url(url, opts).put("config", msgspec.msgpack.encode(cfg), durable=True)
    return Engine(url, opts)


def write_image(p: Path, seed: int = 1) -> None:
    """24 MiB: 14 random blocks, a 6 MiB hole, an explicit zero block, 3 random blocks
    and a 1000-byte tail."""
    rnd = __import__("random").Random(seed)
    with p.open("wb") as f:
        f.write(rnd.randbytes(14 * MiB))
        f.seek(20 * MiB)
        f.write(bytes(MiB) + rnd.randbytes(3 * MiB) + rnd.randbytes(1000))


def count(seaweed: SeaweedProcess) -> dict[str, int]:
    return seaweed.requests(S3_BUCKET)


def since(seaweed: SeaweedProcess, before: dict[str, int]) -> dict[str, int]:
    now = count(seaweed)
    return {k: now.get(k, 0) - before.get(k, 0) for k in ("PUT", "GET", "LIST", "DELETE")}


def body_of(engine: Engine, sid: int) -> ImageBody:
    body = engine.repo.get_manifest(sid)[1]
    assert isinstance(body, ImageBody)
    return body


def test_image_state_is_a_few_puts_per_pack_and_restores_with_a_get_per_pack(
        seaweed: SeaweedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PACK_SIZE", 8 * MiB)  # 17 random MiB: 3 packs
    # the read-ahead holds less than a pack: reads claim the packs ahead of it (the first
    # pack released made its next one, claimed and released already, a KeyError)
    monkeypatch.setattr(tuning, "IMAGE_FETCH_BYTES", 4 * MiB)
    engine = open_engine(seaweed, tmp_path)
    img = tmp_path / "disk.img"
    write_image(img)
    before = count(seaweed)
    res = engine.capture(make_meta(1), image_state(img))
    puts = since(seaweed, before)["PUT"]
    body = body_of(engine, 1)
    packs = {p for _k, p, _o, _n in body.slices}
    assert len(body.blocks) == 18 and len(body.slices) == 18  # every block in a pack
    assert len(packs) == 4  # 3 of blocks, 1 small pack of the tail
    # per pack its object and its index; the manifest, the lock object: 10, where one
    # object per block was 18 blocks + manifest + lock = 20
    assert puts <= 2 * len(packs) + 3, puts
    assert 17 * MiB < res.stored_bytes < 17 * MiB + 100_000

    before = count(seaweed)
    out = tmp_path / "out.img"
    engine.restore(1, image_state(out))
    gets = since(seaweed, before)["GET"]
    assert out.read_bytes() == img.read_bytes()
    # the hole stays a hole, and so does the zero block (an image leaves it out)
    assert data_extents(bytes(out)) == [(0, 14 * MiB), (21 * MiB, 24 * MiB + 1000)]
    assert gets <= len(packs) + 3, gets  # a pack a GET; the manifest, the lock's checks

    # two blocks rewritten: the incremental stores them only, in one new pack
    with img.open("r+b") as f:
        for i in (2, 22):
            f.seek(i * MiB + 4096)
            f.write(os.urandom(5000))
    before = count(seaweed)
    res2 = engine.capture(make_meta(2), image_state(img))
    assert since(seaweed, before)["PUT"] <= 5  # a pack, its index, the manifest, the lock
    assert 2 * MiB < res2.stored_bytes < 2 * MiB + 20_000
    new = body_of(engine, 2)
    fresh = {p for _k, p, _o, _n in new.slices} - packs
    assert len(fresh) == 1
    assert sorted(new.blocks[k][0] for k, p, _o, _n in new.slices if p in fresh) == [2, 22]

    # snapshot 1 over the changed image: only the two blocks, read from their frames
    before = count(seaweed)
    assert engine.restore(1, image_state(img)).bytes_written == 2 * MiB
    assert since(seaweed, before)["GET"] <= 8
    assert img.read_bytes() == out.read_bytes()
    assert engine.verify(1).ok and engine.verify(2).ok


def test_big_file_and_image_share_blocks_and_reclaim_keeps_every_packed_block(
        seaweed: SeaweedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PACK_SIZE", 4 * MiB)
    engine = open_engine(seaweed, tmp_path)
    src = tmp_path / "srv"
    (src / "vm").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_text("hello\n")
    write_image(src / "vm" / "disk.img")
    before = count(seaweed)
    first = engine.capture(make_meta(1, server_id=1), dir_state(src))
    assert since(seaweed, before)["PUT"] <= 2 * 7 + 3  # 5 packs of blocks, 2 small ones
    img = tmp_path / "disk.img"
    shutil.copyfile(src / "vm" / "disk.img", img)
    before = count(seaweed)
    second = engine.capture(make_meta(2, server_id=2), image_state(img))
    # the image stores none of the file's blocks again (only the zero block it leaves out
    # is not in it): the manifest, its lock object
    assert second.stored_bytes < 16 * 1024 < first.stored_bytes
    assert since(seaweed, before)["PUT"] <= 3
    dirbody = engine.repo.get_manifest(1)[1]
    assert isinstance(dirbody, DirBody)
    big = next(e for e in dirbody.entries if e.path == b"vm/disk.img")
    assert len(big.slices) == len(big.chunks) == 19  # the zero block too, in a pack
    assert {p for _k, p, _o, _n in body_of(engine, 2).slices} <= {
        p for _i, p, _o, _n in big.slices}

    before = count(seaweed)
    engine.restore(1, dir_state(tmp_path / "out"))
    assert_same(src, tmp_path / "out")  # bytes, metadata and the map of holes
    assert since(seaweed, before)["GET"] <= 6 + 4  # a GET per pack, the manifest...

    # the image changes wholly: its snapshot 3 shares nothing with 1 and 2; snapshot 1 goes
    write_image(img, seed=2)
    engine.capture(make_meta(3, server_id=2), image_state(img))
    engine.delete(1)
    engine.reclaim(wait=True)  # condemns what nobody references
    time.sleep(1.1)
    # every pack of snapshot 1 holds a block (or the tail) snapshot 2 names: all kept
    assert engine.reclaim(wait=True).objects_removed == 0
    out = tmp_path / "out2.img"
    engine.restore(2, image_state(out))
    assert out.read_bytes() == (src / "vm" / "disk.img").read_bytes()
    engine.restore(3, image_state(tmp_path / "out3.img"))
    assert (tmp_path / "out3.img").read_bytes() == img.read_bytes()
    engine.delete(2)
    engine.reclaim(wait=True)
    time.sleep(1.1)
    # now they go: its 5 packs, of the blocks, the motd and the tail (a directory capture
    # on S3 fills one stream of packs: no pack of small files of their own)
    assert engine.reclaim(wait=True).objects_removed == 5
    engine.restore(3, image_state(tmp_path / "again.img"))
    assert (tmp_path / "again.img").read_bytes() == img.read_bytes()
    assert engine.verify(3).ok


def test_a_rotten_pack_of_blocks_is_refused_and_named_by_verify(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    engine = open_engine(seaweed, tmp_path)
    img = tmp_path / "disk.img"
    write_image(img)
    engine.capture(make_meta(1), image_state(img))
    body = body_of(engine, 1)
    pack, at = stored_at(engine, as_entry(body), 5)
    raw = bytearray(engine.backend.get(chunk_key(pack)))
    raw[at] ^= 0xFF
    engine.backend.put(chunk_key(pack), bytes(raw), durable=True)
    with img.open("r+b") as f:  # block 5 differs now: the restore must read it
        f.seek(5 * MiB)
        f.write(b"changed")
    current = img.read_bytes()
    with pytest.raises(SnapshotCorrupt, match=f"snapshot 1 .*{pack.hex()}"):
        engine.restore(1, image_state(img))
    assert img.read_bytes() == current  # refused before the image was touched
    assert not (tmp_path / ".disk.img.restore-journal").exists()
    with pytest.raises(SnapshotCorrupt, match=pack.hex()):
        engine.restore(1, image_state(tmp_path / "new.img"))
    assert not (tmp_path / "new.img").exists()
    report = engine.verify(1)
    assert not report.ok and any(chunk_key(pack) in e for e in report.errors)
