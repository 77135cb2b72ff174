"""Where the members of the stored packs are: chunk id -> (pack, offset, length).

A repository of a million small files has a million pack members, and every capture loads
them (Repository.load_known) to find a small file's content already stored. As a dict of
chunk id -> one int that was ~150 bytes a member (the 32-byte id's bytes object, the int,
the dict's slot): 150 MB of a 1M-file incremental's peak. Here the members are rows of
flat arrays (the ids side by side in one bytearray, pack numbers, offsets, lengths) found
through an open-addressing table of row numbers (linear probing, at most half full):
~60 bytes a member. A pack's members are appended in bulk (C loops), then only their
slots are found one by one. Chunk ids are keyed blake3 digests (uniform, chosen by no
tenant): hash() spreads them.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator

_ID = 32  # bytes of a chunk id (blake3)
_MAX = (1 << 40) - 1  # offsets and lengths inside a pack (packs hold tens of MiB)


class PackIndex:
    def __init__(self) -> None:
        self._ids = bytearray()  # row r's chunk id at [r * 32, r * 32 + 32)
        self._pack = array("I")  # row -> pack number (self._packs)
        self._off = array("Q")
        self._len = array("Q")
        # row + 1 of each member, 0: empty. A member added again gets a new row and its
        # slot points there (or stays, replace=False): the other row is left unused.
        self._slots = array("I", bytes(4 * 8))
        self._mask = 7  # len(_slots) - 1
        self._live = 0  # slots in use
        self._packs: list[bytes] = []
        self._number: dict[bytes, int] = {}
        self._other: dict[bytes, int] = {}  # ids not 32 bytes long (none today): row

    def __len__(self) -> int:
        return self._live + len(self._other)

    def add(self, cid: bytes, pack: bytes, off: int, length: int, *,
            replace: bool = True) -> None:
        self.add_many(pack, ((cid, off, length),), replace=replace)

    def add_many(self, pack: bytes, members: Iterable[tuple[bytes, int, int]], *,
                 replace: bool = True) -> None:
        """Members (chunk id, offset, length) of one pack; one already indexed takes the
        new place (replace) or keeps its own."""
        n = self._number.get(pack)
        if n is None:
            n = self._number[pack] = len(self._packs)
            self._packs.append(pack)
        # out of range: no pack is that big, a damaged index (an index only saves space)
        ok = [m for m in members if 0 <= m[1] <= _MAX and 0 <= m[2] <= _MAX]
        rows = [m for m in ok if len(m[0]) == _ID]
        base = len(self._pack)
        self._ids += b"".join([m[0] for m in rows])
        self._pack.extend(itertools.repeat(n, len(rows)))
        self._off.extend([m[1] for m in rows])
        self._len.extend([m[2] for m in rows])
        while 2 * (self._live + len(rows)) > len(self._slots):
            self._grow()
        slots, ids, mask = self._slots, self._ids, self._mask
        live = 0
        for row, (cid, _o, _n) in enumerate(rows, base + 1):
            h = hash(cid) & mask
            while s := slots[h]:
                if ids.startswith(cid, (s - 1) * _ID):
                    break
                h = (h + 1) & mask
            if not s:
                live += 1
                slots[h] = row
            elif replace:
                slots[h] = row
        self._live += live
        for cid, off, length in ok:
            if len(cid) != _ID:
                row = self._other.get(cid, -1)
                if row < 0 or replace:
                    self._other[cid] = len(self._pack)
                    self._ids += bytes(_ID)  # a row of its own, never in the table
                    self._pack.append(n)
                    self._off.append(off)
                    self._len.append(length)

    def reserve(self, members: int) -> None:
        """Room for this many members without growing on the way (each growth finds
        every member's slot again)."""
        size = len(self._slots)
        while size < 2 * members:
            size *= 2
        if size > len(self._slots):
            self._grow(size)

    def _grow(self, size: int = 0) -> None:
        """Twice the slots (or `size`), every member's slot found again."""
        old, size = self._slots, size or 2 * len(self._slots)
        slots = array("I", bytes(4 * size))
        mask = size - 1
        with memoryview(self._ids) as ids:  # its slices copy nothing; let go before appends
            for s in old:
                if s:
                    k = (s - 1) * _ID
                    h = hash(ids[k : k + _ID].tobytes()) & mask
                    while slots[h]:
                        h = (h + 1) & mask
                    slots[h] = s
        self._slots, self._mask = slots, mask

    def get(self, cid: bytes) -> tuple[bytes, int, int] | None:
        # _row's probe, inlined: a capture asks once per small file it reads
        if len(cid) == _ID:
            slots, ids, mask = self._slots, self._ids, self._mask
            h = hash(cid) & mask
            while s := slots[h]:
                if ids.startswith(cid, (s - 1) * _ID):
                    return self._packs[self._pack[s - 1]], self._off[s - 1], self._len[s - 1]
                h = (h + 1) & mask
            return None
        row = self._other.get(cid, -1)
        if row < 0:
            return None
        return self._packs[self._pack[row]], self._off[row], self._len[row]

    def members(self) -> Iterator[tuple[bytes, bytes]]:
        """(chunk id, pack) of every member."""
        packs, ids, pack = self._packs, self._ids, self._pack
        for s in self._slots:
            if s:
                k = (s - 1) * _ID
                yield bytes(ids[k : k + _ID]), packs[pack[s - 1]]
        for cid, row in self._other.items():
            yield cid, packs[pack[row]]
