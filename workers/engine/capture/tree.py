"""The tree a capture builds (EncodedTree), held encoded while the walk (walk.py) and the
readers fill it in.

A capture of a million files used to hold a million Entry objects (~700 bytes each with
their path, lists and ints) until the manifest was encoded, and an incremental one the
parent's million decoded entries as well (parent.py reads those one at a time now). Here
each entry is kept as its msgpack bytes (~180 bytes held) while it may still change,
decoded only while a reader fills it in, and goes into the manifest body, compressed as
it is built (dirbody.DirBodyWriter: ~45 bytes), once it is final: the same format as
before.
"""

from __future__ import annotations

import itertools
import threading
from array import array
from collections import deque
from collections.abc import Sequence

import msgspec
import zstandard

from ..repository import dirbody, manifest
from ..repository.manifest import DIR, FILE, HARDLINK, Entry


class _PathOnly(msgspec.Struct, array_like=True):
    path: bytes  # an array-like struct ignores the entry's trailing fields


_path_dec = msgspec.msgpack.Decoder(_PathOnly)


_DROPPED, _DIR, _LINK = 1, 2, 4  # EncodedTree's flags of an entry
_FLAGS = {DIR: _DIR, HARDLINK: _LINK}
_BATCH = 1024  # final entries walked that wait to go into the body together
_RUN = 4096  # final entries behind a pending one that are held compressed together
_encode = manifest.encode_entry


_HOLE = 0xFFFFFFFF  # a _Run's length of an entry it does not hold (still pending)


class _Run:
    """Final entries of [start, end) held compressed while a pending entry before them
    keeps them from the body: their msgpack joined and compressed, and each one's length;
    the pending entries among them (`holes`) stay in EncodedTree.raw."""

    __slots__ = ("data", "end", "holes", "lengths", "start")

    def __init__(self, zc: zstandard.ZstdCompressor, start: int, raws: list[bytes],
                 holes: list[int]) -> None:
        self.start, self.end = start, start + len(raws)
        self.holes = array("q", holes)
        self.lengths = array("I", map(len, raws))
        for k in holes:
            self.lengths[k - start] = _HOLE
        held = set(holes)
        data = zc.compress(b"".join(r for k, r in enumerate(raws, start)
                                    if k not in held) if holes else b"".join(raws))
        # a copy of its size: zstandard's compress() returns its output in a buffer of the
        # input's bound, shortened but not shrunk (~2.4x the data here, the 100k
        # incremental's 19 runs held 12.8 MiB for 5.0 MiB of data)
        self.data = bytes(memoryview(data))

    def raws(self) -> list[bytes | None]:
        """Its entries in order, None for each hole."""
        joined = zstandard.ZstdDecompressor().decompress(self.data)
        out: list[bytes | None] = []
        at = 0
        for n in self.lengths:
            if n == _HOLE:
                out.append(None)
                continue
            out.append(joined[at : at + n])
            at += n
        return out


class EncodedTree:
    """Entries in walk order, each msgpack-encoded until it is final, then added to the
    manifest body being compressed (dirbody.DirBodyWriter); the size of each regular file
    beside. An entry is final once nothing changes it any more: when walked, unless it is
    a file to read (`pending`); a file read, once put() with its pack ids; or dropped. The
    final entries before the first pending one go into the body, so the tree holds
    encoded only the entries from the oldest file still being read on (readers follow
    the walk; a pack names its files once stored), ~45 compressed bytes for the others.
    Behind a file still to read, final entries wait: an incremental's changed files are
    read after its walk (a small capture reads with threads once the walk is done), so its
    first changed file held every later entry encoded, ~200 bytes each (a million files,
    100 touched: ~190 MB). Runs of _RUN final entries or more behind a pending one are
    therefore held compressed (_Run, ~50 bytes an entry) until the body reaches them.
    Thread-safe: the packer thread puts entries while the walk appends."""

    def __init__(self) -> None:
        self.raw: list[bytes | None] = []  # None once in the body (or dropped)
        self.sizes = array("q")  # a regular file's size, 0 for any other entry
        self.dropped: set[bytes] = set()  # paths of the files dropped (not captured)
        self._pending = bytearray()  # 1: a file still to read
        self._flags = bytearray()
        self._lock = threading.Lock()
        self._next = 0  # the first entry not yet in the body
        self._runs: deque[_Run] = deque()  # in order, all at or after _next
        self._packed_to = 0  # entries before it are in the body, pending, or in a run
        self._zc = zstandard.ZstdCompressor(level=1)  # the runs' (used under _lock)
        self._body = dirbody.DirBodyWriter()
        self._files_size = 0  # of the regular files in the body
        self._others = 0  # entries but directories in the body

    def __len__(self) -> int:
        return len(self.raw)

    def append(self, e: Entry, *, pending: bool = False) -> int:
        """Entry e, walked (the walk's thread only). Not under the lock: _advance reads
        the entries below len(raw), and raw is appended last."""
        kind = e.kind
        self._pending.append(pending)
        self._flags.append(_FLAGS.get(kind, 0))
        self.sizes.append(e.size if kind == FILE else 0)
        self.raw.append(_encode(e))
        i = len(self.raw) - 1
        if i - self._next >= _BATCH:
            with self._lock:
                self._advance()
                if i - max(self._next, self._packed_to) >= 2 * _RUN:
                    self._pack_runs(i + 1)
        return i

    def __getitem__(self, i: int) -> Entry:
        raw = self.raw[i]
        assert raw is not None, "an entry already final"
        return manifest.entry(raw)

    def put(self, i: int, e: Entry) -> None:
        """Entry i as it is now (a reader filled it in): final."""
        raw = manifest.encode_entry(e)
        with self._lock:
            assert self._pending[i], "an entry put twice"
            self.raw[i] = raw
            self.sizes[i] = e.size if e.kind == FILE else 0
            self._pending[i] = 0
            if i == self._next:
                self._advance()

    def put_many(self, items: list[tuple[int, Entry]]) -> None:
        """put() of each (index, entry): a stored pack's thousands of files, encoded
        before and set under one taking of the lock (the packer thread holds the GIL
        for this, beside the walk's thread)."""
        enc = [(i, _encode(e), e.size if e.kind == FILE else 0) for i, e in items]
        with self._lock:
            raw, sizes, pending = self.raw, self.sizes, self._pending
            for i, r, size in enc:
                assert pending[i], "an entry put twice"
                raw[i] = r
                sizes[i] = size
                pending[i] = 0
            self._advance()

    def drop(self, i: int) -> bytes:
        """A file to read that is not captured after all; returns its path."""
        path = self.path(i)
        with self._lock:
            assert self._pending[i], "a final entry dropped"
            self.dropped.add(path)
            self._pending[i] = 0
            self._flags[i] |= _DROPPED
            if i == self._next:
                self._advance()
        return path

    def path(self, i: int) -> bytes:
        raw = self.raw[i]
        assert raw is not None, "an entry already final"
        return _path_dec.decode(raw).path

    def _pack_runs(self, n: int) -> None:
        """Under _lock: runs of at least _RUN final entries among the entries below n not
        yet in the body or a run, compressed (_Run) and let go of; the pending entries
        among them stay (a run's holes). Runs stopped at each pending entry before: an
        incremental's changed files spread closely over the tree (the scale run's 100 at
        100k, one every ~1,000 entries) left no stretch of _RUN, so every entry walked
        behind the first was held encoded (+12 MiB peak at 100k)."""
        raw, pending = self.raw, self._pending
        start = k = max(self._next, self._packed_to)
        held = 0  # final entries in [start, k)
        holes: list[int] = []
        while k < n:
            j = pending.find(1, k, n)
            end = n if j < 0 else j
            held += end - k
            if held >= _RUN:
                self._runs.append(_Run(self._zc, start, raw[start:end], holes))  # type: ignore[arg-type]
                for a, b in itertools.pairwise([start - 1, *holes, end]):  # all but holes
                    raw[a + 1 : b] = [None] * (b - a - 1)
                start, held, holes = end, 0, []
            if j < 0:
                break  # a short last run: it may grow with the next entries walked
            holes.append(j)
            if len(holes) * 16 > held:
                # no run starts with a pending entry, nor holds many (a full capture's
                # files are all pending: scanned again from its start at every call, the
                # walk was quadratic)
                start, held, holes = j + 1, 0, []
            k = j + 1
        self._packed_to = start

    def _advance(self) -> None:
        """Under _lock: the final entries from _next on into the body, up to a pending one
        (those held in a run decompressed on the way)."""
        while True:
            i = self._next
            if self._runs and self._runs[0].start == i:
                run = self._runs.popleft()
                got, raw = run.raws(), self.raw
                if any(self._pending[h] for h in run.holes):
                    # one still to read: its entries back, to go in as those before it do
                    for k, r in enumerate(got, i):
                        if r is not None:
                            raw[k] = r
                    continue
                for h in run.holes:  # read (or dropped) by now: final
                    got[h - i], raw[h] = raw[h], None
                self._add(i, run.end, got)
                continue
            raw = self.raw
            n = len(raw)
            j = self._pending.find(1, i, n)
            if j < 0:
                j = n
            if self._runs and self._runs[0].start < j:
                j = self._runs[0].start
            if j == i:
                return
            batch = raw[i:j]
            raw[i:j] = [None] * (j - i)
            self._add(i, j, batch)

    def _add(self, i: int, j: int, batch: Sequence[bytes | None]) -> None:
        """Under _lock: entries [i, j) into the body. A hard link's target comes before it
        in walk order, so it is final (kept or dropped) by the time the link is."""
        self._next = j
        if not self.dropped:
            self._body.add_many(batch)  # type: ignore[arg-type]
            self._files_size += sum(self.sizes[i:j])
            self._others += (j - i) - self._flags.count(_DIR, i, j)
            return
        for k, r in enumerate(batch, i):  # some files were dropped: one at a time
            f = self._flags[k]
            assert r is not None
            if f & _DROPPED or (f & _LINK and manifest.entry(r).target in self.dropped):
                continue
            self._body.add_many([r])
            self._files_size += self.sizes[k]
            self._others += not f & _DIR

    def body(self) -> tuple[list[bytes], int, int]:
        """(encoded manifest body in pieces, bytes of its regular files, its entries but
        directories) once every entry is final: those captured, less those dropped on the
        way."""
        with self._lock:
            self._advance()
            if self._next != len(self.raw):
                raise AssertionError(f"entry {self._next} is still being read")
            return self._body.finish_pieces(), self._files_size, self._others

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """The body's pieces (manifest.Header.pieces), once body() returned."""
        return self._body.pieces
