"""Where the members of the stored packs are: chunk id -> (pack, offset, length).

A repository of a million small files has a million pack members, and every capture loads
them (Repository.load_known) to find a small file's content already stored. Kept as a
(pack, offset, length) tuple each, that is ~110 bytes a member beside the dict's own;
here the three are one int (pack number, offset, length), ~40 bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

_BITS = 40  # offsets and lengths inside a pack (packs hold tens of MiB)
_MASK = (1 << _BITS) - 1


class PackIndex:
    def __init__(self) -> None:
        self._at: dict[bytes, int] = {}
        self._packs: list[bytes] = []
        self._number: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def add(self, cid: bytes, pack: bytes, off: int, length: int, *,
            replace: bool = True) -> None:
        if not replace and cid in self._at:
            return
        if not 0 <= off <= _MASK or not 0 <= length <= _MASK:
            return  # no pack is that big: a damaged index, and an index only saves space
        n = self._number.get(pack)
        if n is None:
            n = self._number[pack] = len(self._packs)
            self._packs.append(pack)
        self._at[cid] = (n << 2 * _BITS) | (off << _BITS) | length

    def get(self, cid: bytes) -> tuple[bytes, int, int] | None:
        v = self._at.get(cid)
        if v is None:
            return None
        return self._packs[v >> 2 * _BITS], (v >> _BITS) & _MASK, v & _MASK

    def members(self) -> Iterator[tuple[bytes, bytes]]:
        """(chunk id, pack) of every member."""
        packs = self._packs
        for cid, v in self._at.items():
            yield cid, packs[v >> 2 * _BITS]
