"""Tiny packs compressed block by block while files arrive read back like whole ones."""

from __future__ import annotations

import os
from pathlib import Path

import zstandard

from workers.engine import Engine
from workers.engine.repository import packformat
from workers.engine.repository.repository import chunk_key
from workers.engine.tuning import ZSTD_LEVEL

from .conftest import dir_state, make_meta
from .treecmp import assert_same


def test_streamed_pack_is_the_same_object_as_a_whole_one(engine: Engine,
                                                         tmp_path: Path) -> None:
    src = tmp_path / "srv"
    src.mkdir()
    for i in range(12):  # 2.4 MB of small files: two full blocks streamed, then the tail
        (src / f"s{i:02}").write_bytes(os.urandom(100_000) + bytes(100_000))
    (src / "dup").write_bytes((src / "s03").read_bytes())  # stored once in the pack
    engine.capture(make_meta(1), dir_state(src))
    _h, body = engine.repo.get_manifest(1)
    packs = {e.pack for e in body.entries if e.pack}  # type: ignore[union-attr]
    assert len(packs) == 1
    pack = packs.pop()
    obj = (tmp_path / "repo" / chunk_key(pack)).read_bytes()
    plain = engine.repo.read_chunk(pack)
    assert len(plain) == 12 * 200_000
    assert obj == packformat.encode(zstandard.ZstdCompressor(level=ZSTD_LEVEL), plain)
    assert engine.verify(1).ok
    dst = tmp_path / "out"
    engine.restore(1, dir_state(dst))
    assert_same(src, dst)
