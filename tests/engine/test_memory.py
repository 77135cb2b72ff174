"""Memory per entry of a big tree (issue 12: a million files in under 1 GiB): a capture keeps
its tree encoded, not as Entry objects; an incremental reads its parent beside the walk
instead of holding it decoded; a restore keeps the manifest's entries encoded and its record
of written files as msgpack. Measured with tracemalloc (Python allocations made during the
operation and alive at its peak), as the slope between trees of 4,000 and 16,000 files,
after a warm-up operation has done the imports."""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from tests.engine.conftest import dir_state, make_meta
from workers.engine import Engine, inflight, tuning
from workers.engine.repository.lazyentries import LazyEntries
from workers.engine.repository.manifest import Entry, encode_entry

SMALL, BIG, PER_DIR = 4_000, 16_000, 100
# The slope of the peak between the two trees, measured: capture ~225, incremental ~390,
# restore ~550 bytes an entry (at 5a511dc, before these changes: ~2,560, ~1,650, ~2,620).
# The restore's peak depended on how far its threads had got when it was taken (466-574 on
# a quiet machine, 763 once in CI beside the rest of the suite): the test now holds its
# bounded buffers (read-ahead, kept futures) to one at a time, see below; its bound sits
# well above that and well below the ~2,620 of an entry held decoded.
CAPTURE_MAX, INCREMENTAL_MAX, RESTORE_MAX = 600, 700, 1_100


def _tree(root: Path, files: int) -> int:
    """files small files (each its own bytes), PER_DIR to a directory; returns entries."""
    for i in range(files):
        d = root / f"d{i // PER_DIR:03d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        fd = os.open(d / f"file-{i:06d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"line %d of a small file\n" % i * (1 + i % 5))
        os.close(fd)
    return 1 + files + files // PER_DIR


def _peak(op: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        op()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def _peaks(engine: Engine, tmp_path: Path, files: int, sid: int) -> tuple[int, list[float]]:
    """(entries, peak bytes of capture, incremental, restore) of a tree of `files`."""
    state = tmp_path / f"state-{files}"
    entries = _tree(state, files)
    full = _peak(lambda: engine.capture(make_meta(sid, server_id=sid), dir_state(state)))
    incremental = _peak(lambda: engine.capture(make_meta(sid + 1, server_id=sid),
                                               dir_state(state)))
    assert engine.last_bytes_read == 0  # the incremental took every file from its parent
    restored = tmp_path / f"restored-{files}"
    restore = _peak(lambda: engine.restore(sid + 1, dir_state(restored)))
    got = sorted(p.relative_to(restored) for p in restored.rglob("*"))
    assert got == sorted(p.relative_to(state) for p in state.rglob("*"))
    return entries, [full, incremental, restore]


def test_capture_incremental_and_restore_hold_little_per_entry(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Entries wait decoded for their pack's id: at most PACK_MAX_FILES a pack (a bound,
    # not a cost per entry); small here, so that the slope below measures what is.
    monkeypatch.setattr(tuning, "PACK_MAX_FILES", 512, raising=False)
    # The bound is for big manifests; these small ones would be kept decoded (faster).
    monkeypatch.setattr(tuning, "DECODED_ENTRIES_MAX", 0)
    # A restore's read-ahead (packs being read, frames decoded ahead of the writers: up to
    # RESTORE_FETCH_STREAMS at once) and its list of finished futures (pruned at
    # inflight._KEEP, ~1 KB each) are bounds too, whose level at the peak depended on the
    # threads' timing: the same 16k-file restore peaked at 9.2-15 MB run to run, and at
    # 8.83-8.88 MB with one pack read ahead at a time and 64 futures kept.
    monkeypatch.setattr(tuning, "RESTORE_FETCH_STREAMS", 1)
    monkeypatch.setattr(tuning, "RESTORE_FETCH_BYTES", 1)
    monkeypatch.setattr(inflight, "_KEEP", 64)
    warm = tmp_path / "warm"
    _tree(warm, 300)
    engine.capture(make_meta(1, server_id=1), dir_state(warm))  # imports, caches
    engine.capture(make_meta(2, server_id=1), dir_state(warm))
    engine.restore(2, dir_state(tmp_path / "warm-restored"))

    small, at_small = _peaks(engine, tmp_path, SMALL, 10)
    big, at_big = _peaks(engine, tmp_path, BIG, 20)
    per_entry = [(b - a) / (big - small) for a, b in zip(at_small, at_big, strict=True)]
    print("bytes an entry (capture, incremental, restore):", [round(x) for x in per_entry])
    assert per_entry[0] < CAPTURE_MAX
    assert per_entry[1] < INCREMENTAL_MAX
    assert per_entry[2] < RESTORE_MAX


def test_a_small_manifest_is_decoded_once_and_a_big_one_on_every_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [Entry(path=b"f%d" % i, kind="f", mode=0o100644, uid=0, gid=0, mtime_ns=1)
               for i in range(3)]
    raws = [msgspec.Raw(encode_entry(e)) for e in entries]
    small = LazyEntries(raws)
    assert [e.path for e in small] == [b"f0", b"f1", b"f2"]
    assert small[1] is small[1] and next(iter(small)) is small[0]  # kept, not decoded anew
    monkeypatch.setattr(tuning, "DECODED_ENTRIES_MAX", 2)
    big = LazyEntries(raws)
    assert big[1] == small[1] and big[1] is not big[1]  # decoded on every use
    assert [e.path for e in big] == [b"f0", b"f1", b"f2"]
