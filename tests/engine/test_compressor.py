"""The capture's zstd settings (tuning.ZSTD_LEVEL, ZSTD_HASH_LOG) reach every place that
compresses a capture's data, the reader processes included (they get them in Setup)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import zstandard

from workers.engine import Engine, tuning
from workers.engine.repository import packformat
from workers.engine.repository.manifest import DirBody
from workers.engine.repository.repository import chunk_key, compressor, encode_payload

from .conftest import dir_state, make_meta


def _text(n: int) -> bytes:
    """Log-like text: compresses well, and differently with another hash table size."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < n:
        out += b"%d host%d " % (rng.randrange(10**9), rng.randrange(50))
        out += b" ".join(rng.choices(words, k=rng.randint(4, 14))) + b"\n"
    return bytes(out[:n])


def test_compressor_applies_the_hash_table_size() -> None:
    data = _text(1 << 20)
    tuned = compressor(2, 15).compress(data)
    assert zstandard.ZstdDecompressor().decompress(tuned) == data
    assert compressor(2, 0).compress(data) == zstandard.ZstdCompressor(level=2).compress(data)
    assert tuned != zstandard.ZstdCompressor(level=2).compress(data)  # the table size counts


@pytest.mark.parametrize("hash_log", [0, 15, 14])
def test_reader_processes_compress_with_the_tuned_settings(
        monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path, hash_log: int) -> None:
    monkeypatch.setattr(tuning, "CAPTURE_PROCESS_THRESHOLD", 0)  # reader processes read it
    monkeypatch.setattr(tuning, "ZSTD_HASH_LOG", hash_log)
    src = tmp_path / "srv"
    src.mkdir()
    data = _text(300_000)  # over INLINE_MAX: its chunks are compressed by a reader
    (src / "log").write_bytes(data)
    engine.capture(make_meta(1), dir_state(src))
    body = engine.repo.get_manifest(1)[1]
    assert isinstance(body, DirBody)
    e = next(e for e in body.entries if e.path == b"log")
    assert e.chunks and e.slices
    ends = [off for _cid, off in e.chunks[1:]] + [len(data)]
    zc = compressor(tuning.ZSTD_LEVEL, hash_log)
    for (i, pack, off, ln), end in zip(e.slices, ends, strict=True):
        lay = packformat.pack_layout(engine.backend.get_head(chunk_key(pack),
                                                             packformat.HEADER_MAX))
        (k,) = packformat.span(lay, off, ln)  # a big chunk is a frame of its own
        f = lay.frames[k]
        chunk = data[e.chunks[i][1]:end]
        assert f.end - f.start == len(encode_payload(zc, chunk))
