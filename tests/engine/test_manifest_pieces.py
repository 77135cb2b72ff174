"""A capture compresses its manifest body as entries become final (manifest.DirBodyWriter,
capture/tree.py EncodedTree): the body must stay what every engine reads, one zstd frame
that records its content size holding the DirBody's msgpack byte for byte; and entries
dropped after the walk (with the hard links naming them) must stay out of it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgspec
import pytest
import zstandard

from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.repository import manifest
from workers.engine.repository.manifest import DirBody, Entry


def _entries(n: int, rng: random.Random) -> list[Entry]:
    return [Entry(path=b"d%03d/f%06d" % (i // 100, i), kind="f", mode=0o100644,
                  uid=rng.randrange(70000), gid=0, mtime_ns=rng.randrange(1 << 62),
                  size=rng.randrange(9000), chunks=[(rng.randbytes(32), 0)],
                  pack=rng.randbytes(32), pack_off=rng.randrange(1 << 25), pack_len=100)
            for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536, 70_000])
def test_a_body_built_in_pieces_is_one_frame_of_the_same_msgpack(n: int) -> None:
    entries = _entries(n, random.Random(n))
    body = manifest.encode_dir_body(manifest.encode_entry(e) for e in entries)
    whole = msgspec.msgpack.encode(DirBody(entries))
    assert zstandard.frame_content_size(body) == len(whole)  # one-shot decompress needs it
    assert zstandard.ZstdDecompressor().decompress(body) == whole
    assert manifest._body_dec.decode(zstandard.ZstdDecompressor().decompress(body)) == \
        DirBody(entries)
    # compressed as well as in one piece (within 1 %)
    assert len(body) <= 1.01 * len(zstandard.ZstdCompressor(level=3).compress(whole)) + 64


def test_a_file_dropped_after_the_walk_leaves_out_its_hard_links(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    (state / "a").mkdir(parents=True)
    (state / "a" / "goes").write_bytes(b"gone before its read")
    os.link(state / "a" / "goes", state / "a" / "link-to-goes")
    os.link(state / "a" / "goes", state / "b-link-to-goes")
    for i in range(50):
        (state / "a" / f"stays{i:02d}").write_bytes(b"kept %d" % i)
    real_open = fsutil.open_regular

    def tenant_unlinks_first(name: bytes, dir_fd: int) -> int:
        if name == b"goes":
            raise FileNotFoundError(2, "No such file or directory")
        return real_open(name, dir_fd)

    monkeypatch.setattr(fsutil, "open_regular", tenant_unlinks_first)
    res = engine.capture(make_meta(1), dir_state(state))
    assert res.warnings == ["a/goes: vanished or replaced during capture ([Errno 2] No such "
                            "file or directory); not captured"]
    _h, body = engine.repo.get_manifest(1)
    assert isinstance(body, DirBody)
    paths = [e.path for e in body.entries]
    assert paths == [b"", b"a", *(b"a/stays%02d" % i for i in range(50))]
    restored = tmp_path / "restored"
    engine.restore(1, dir_state(restored))
    assert sorted(p.name for p in restored.rglob("*")) == sorted(
        ["a", *(f"stays{i:02d}" for i in range(50))])
