"""The tree a capture builds, held encoded, and the parent snapshot read beside the walk.

A capture of a million files used to hold a million Entry objects (~700 bytes each with
their path, lists and ints) until the manifest was encoded, and an incremental one the
parent's million decoded entries as well. Here each entry is kept as its msgpack bytes
(~180 bytes held), decoded only while a reader fills it in; the manifest body is the
concatenation of those bytes (manifest.encode_dir_body), the same format as before. The
parent is decoded one entry at a time as the walk passes its path: both are in walk order
(depth first, names sorted), so finding a path's parent entry is a merge, not a lookup in a
dict of every path.
"""

from __future__ import annotations

from array import array

import msgspec

from ..repository import manifest
from ..repository.manifest import FILE, Entry


class _PathOnly(msgspec.Struct, array_like=True):
    path: bytes  # an array-like struct ignores the entry's trailing fields


_path_dec = msgspec.msgpack.Decoder(_PathOnly)


class EncodedTree:
    """Entries in walk order, each msgpack-encoded; the size of each regular file beside."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.sizes = array("q")  # a regular file's size, 0 for any other entry
        self.dirs = 0

    def __len__(self) -> int:
        return len(self.raw)

    def append(self, e: Entry) -> int:
        self.raw.append(manifest.encode_entry(e))
        self.sizes.append(e.size if e.kind == FILE else 0)
        self.dirs += e.kind == manifest.DIR
        return len(self.raw) - 1

    def __getitem__(self, i: int) -> Entry:
        return manifest.entry(self.raw[i])

    def put(self, i: int, e: Entry) -> None:
        """Entry i as it is now (a reader filled it in)."""
        self.raw[i] = manifest.encode_entry(e)
        self.sizes[i] = e.size if e.kind == FILE else 0

    def path(self, i: int) -> bytes:
        return _path_dec.decode(self.raw[i]).path


class ParentCursor:
    """The parent snapshot's entries, decoded one at a time as the walk passes their paths;
    and the set of objects they name (what its commit made durable, Repository.durable).
    `vouched` False: its ctimes do not stand for its bytes, so no file is taken from it."""

    def __init__(self, raws: list[msgspec.Raw], vouched: bool) -> None:
        self._raws = raws
        self._next = 0
        self._cur: Entry | None = None
        self._key: list[bytes] = []
        self.vouched = vouched
        self.objects: set[bytes] = set()
        self._advance()

    def _advance(self) -> None:
        if self._next >= len(self._raws):
            self._cur = None
            return
        e = self._cur = manifest.entry(self._raws[self._next])
        self._next += 1
        self._key = e.path.split(b"/")
        self.objects |= e.objects()

    def get(self, path: bytes) -> Entry | None:
        """The parent's regular file at `path`, if any. Paths must be asked in walk order
        (a path asked out of order is simply not found: the file is read again)."""
        key = path.split(b"/")
        while self._cur is not None and self._key < key:
            self._advance()
        cur = self._cur
        if cur is None or self._key != key or cur.kind != FILE or not self.vouched:
            return None
        return cur

    def finish(self) -> set[bytes]:
        """Every object the parent names (its remaining entries decoded too)."""
        while self._cur is not None:
            self._advance()
        self._raws = []
        return self.objects

