"""A capture compresses its manifest body as entries become final (dirbody.DirBodyWriter,
capture/tree.py EncodedTree): the body must stay what every engine reads, one zstd frame
that records its content size holding the DirBody's msgpack byte for byte; and entries
dropped after the walk (with the hard links naming them) must stay out of it."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import pytest
import zstandard

from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine
from workers.engine.fs import fsutil
from workers.engine.repository import dirbody, lazyentries, manifest
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
    body = dirbody.encode_dir_body(manifest.encode_entry(e) for e in entries)
    whole = msgspec.msgpack.encode(DirBody(entries))
    assert zstandard.frame_content_size(body) == len(whole)  # one-shot decompress needs it
    assert zstandard.ZstdDecompressor().decompress(body) == whole
    assert manifest._body_dec.decode(zstandard.ZstdDecompressor().decompress(body)) == \
        DirBody(entries)
    # compressed as well as in one piece (within 1 %)
    assert len(body) <= 1.01 * len(zstandard.ZstdCompressor(level=3).compress(whole)) + 64


def test_a_body_is_written_from_its_pieces_never_joined(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body's compressed outputs go to the file as they are (put_manifest): joined
    (the frame, the body, then with the header) the body was in memory three times at
    once at the end of a capture, its peak."""
    entries = _entries(70_000, random.Random(7))
    w = dirbody.DirBodyWriter()
    w.add_many([manifest.encode_entry(e) for e in entries])
    pieces = w.finish_pieces()
    assert len(pieces) > 3  # one per ~256 KiB of msgpack compressed, not one
    body = b"".join(pieces)
    assert manifest._body_dec.decode(zstandard.ZstdDecompressor().decompress(body)) == \
        DirBody(entries)
    put: list[bytes | Sequence[bytes]] = []
    real_put = engine.repo.backend.put

    def recording_put(key: str, data: bytes | Sequence[bytes], **kw: bool) -> bool:
        put.append(data)
        return real_put(key, data, **kw)

    monkeypatch.setattr(engine.repo.backend, "put", recording_put)
    header = manifest.Header(meta=make_meta(5), state_kind="directory", size_bytes=0,
                             stored_bytes=0, files=len(entries), warnings=[],
                             completed_at="2026-12-03T00:00:00Z", pieces=w.pieces)
    assert engine.repo.put_manifest(header, pieces)
    assert isinstance(put[-1], list) and put[-1][1:] == pieces  # the very pieces
    assert engine.repo.get_manifest_raw(5) == manifest.assemble(header, body)
    assert engine.repo.get_manifest(5)[1] == DirBody(entries)


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


def test_a_run_holds_only_its_compressed_bytes() -> None:
    """A run's compressed entries take their own size, not the compressor's output buffer
    (zstandard allocates the input's bound and only shortens it): the 100k incremental's
    runs held 12.8 MiB for 5.0 MiB of data. Entries as a capture's are (one pack, paths in
    order: ~40 % of their msgpack compressed)."""
    from workers.engine.capture import tree as treemod

    rng = random.Random(3)
    pack = rng.randbytes(32)
    raws = [manifest.encode_entry(Entry(
        path=b"d%03d/s%02d/f%07d" % (i // 1000, i // 100 % 10, i), kind="f",
        mode=0o100644, uid=0, gid=0, mtime_ns=1_700_000_000_000_000_000 + i * 1000,
        size=rng.randrange(200, 8000), chunks=[(rng.randbytes(32), 0)], pack=pack,
        pack_off=i * 4000, pack_len=4000)) for i in range(treemod._RUN)]
    zc = zstandard.ZstdCompressor(level=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = treemod._Run(zc, 0, raws, [])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(run.data) < 0.6 * sum(map(len, raws))  # compressible, as in a capture
    assert grown < len(run.data) + 4 * len(raws) + 4096, (grown, len(run.data))


@pytest.mark.parametrize("spread", [False, True], ids=["few", "spread"])
@pytest.mark.parametrize("drop", [False, True], ids=["put", "dropped"])
def test_final_entries_behind_a_file_still_to_read_are_held_compressed(
        drop: bool, spread: bool) -> None:
    """An incremental reads its changed files after its walk: the entries walked behind
    the first one wait in compressed runs (tree._Run), and come out in order, the hard
    links to a file dropped left out, the body as if nothing had waited. Spread: a file
    to read every 1,000 entries (no stretch of _RUN between two), as the scale run's 100
    changed files of 300,000: held encoded whole before."""
    from workers.engine.capture import tree as treemod

    rng = random.Random(7)
    n = 5 * treemod._RUN
    entries = _entries(n, rng)
    pending = {3, 2 * treemod._RUN + 5, n - 10}
    if spread:
        pending |= set(range(1_000, n, 1_000)) | {1_001}
    links = {i for i in range(4, n, 997)}
    for i in links:  # a further name of entry 3 (pending: read after the walk)
        entries[i] = Entry(path=entries[i].path, kind="h", mode=0o100644, uid=0, gid=0,
                           mtime_ns=0, target=entries[3].path)
    t = treemod.EncodedTree()
    for i, e in enumerate(entries):
        t.append(e, pending=i in pending)
    held = sum(r is not None for r in t.raw)
    # compressed meanwhile but the files to read and the walk's last stretch (< 2 runs)
    assert t._runs and held < 2 * treemod._RUN + len(pending), held
    for i in sorted(pending):
        if drop and i == 3:
            t.drop(i)
        else:
            t.put(i, entries[i])
    pieces, _size, _files = t.body()
    body = b"".join(pieces)
    kept = [e for i, e in enumerate(entries) if not (drop and (i == 3 or i in links))]
    assert manifest._body_dec.decode(zstandard.ZstdDecompressor().decompress(body)) == \
        DirBody(kept)


def test_a_parent_is_read_a_piece_at_a_time_and_an_old_or_damaged_one_still_serves(
        engine: Engine, tmp_path: Path) -> None:
    """Header.pieces lets the next capture decode its parent beside its walk, ~256 KiB at
    a time (manifest.iter_pieces); a manifest without them (written before) is decoded
    whole; one whose pieces do not match its body fails where it no longer matches, and
    the capture reads the files it could not take from it."""
    state = tmp_path / "state"
    for d in range(30):
        (state / f"d{d:02d}").mkdir(parents=True)
        for i in range(100):
            (state / f"d{d:02d}" / f"f{i:03d}-{'x' * 60}").write_bytes(b"%d %d" % (d, i))
    engine.capture(make_meta(1), dir_state(state))
    data = engine.repo.get_manifest_raw(1)
    header, pieces = manifest.iter_pieces(data)
    got = [bytes(r) for piece in pieces for r in piece]
    assert len(header.pieces) > 1 and sum(c for c, _n in header.pieces) == len(got) == 3031
    assert got == [bytes(r) for r in lazyentries.decode_lazily(data)[1]]
    old = msgspec.structs.replace(header, pieces=[])
    _h, whole = manifest.iter_pieces(manifest.encode(old, engine.repo.get_manifest(1)[1]))
    assert [bytes(r) for piece in whole for r in piece] == got
    # pieces that claim the body ends early: decoding stops there, the capture goes on
    bad = msgspec.structs.replace(header, pieces=[*header.pieces[:1], (1, 10)])
    _head, body = manifest._split(data)
    engine.repo.backend.put(engine.repo.manifest_key(1), manifest.assemble(bad, body))
    res = engine.capture(make_meta(2), dir_state(state))
    assert res.files == 3000
    assert engine.last_bytes_read > 0  # the files past the damage read again
    restored = tmp_path / "restored"
    engine.restore(2, dir_state(restored))
    assert sorted(p.name for p in restored.rglob("*")) == sorted(p.name for p in state.rglob("*"))


def _manifest(n: int, rng: random.Random) -> tuple[bytes, bytes]:
    """(a manifest of n entries with pieces, the same without): small files sharing packs
    of 1,000 as a capture's do, every 5,000th a bigger file (chunks, one of them in a slice)."""
    entries = _entries(n, rng)
    packs = [rng.randbytes(32) for _ in range(n // 1000 + 1)]
    for i, e in enumerate(entries):
        e.pack = packs[i // 1000]
    for i in range(0, n, 5_000):
        e = entries[i]
        e.pack, e.pack_off, e.pack_len = b"", 0, 0
        e.chunks = [(rng.randbytes(32), k << 20) for k in range(3)]
        e.slices = [(2, rng.randbytes(32), 0, 10)]
    w = dirbody.DirBodyWriter()
    w.add_many([manifest.encode_entry(e) for e in entries])
    header = manifest.Header(meta=make_meta(1), state_kind="directory", size_bytes=0,
                             stored_bytes=0, files=n, warnings=[],
                             completed_at="2026-12-03T00:00:00Z", pieces=w.pieces)
    body = w.finish()
    return (manifest.assemble(header, body),
            manifest.assemble(msgspec.structs.replace(header, pieces=[]), body))


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_reclaim_marks_a_manifest_a_piece_at_a_time() -> None:
    """manifest.object_ids (a reclaim's mark) names what chunk_ids of the whole decoded
    body names, holding one piece of decoded entries at a time: decoded whole, a million
    -entry manifest took ~1 GiB in the worker process that reclaims (and its heap kept
    it). Its peak does not grow with the entries; the whole decode's does."""
    rng = random.Random(3)
    small, _ = _manifest(6_000, rng)
    big, old = _manifest(30_000, rng)
    want = manifest.chunk_ids(manifest.decode(big)[1])
    assert len(want) == 30 + 6 * 3  # packs; 2 chunks and a slice's pack each big file
    assert manifest.object_ids(big) == want
    assert manifest.object_ids(old) == want  # a manifest from before pieces: still marked
    few, many = _peak(lambda: manifest.object_ids(small)), _peak(lambda: manifest.object_ids(big))
    whole = _peak(lambda: manifest.decode(big))
    assert many < 1.5 * few and many < whole / 3, (few, many, whole)
