"""The files a restore leaves to its writer processes (writerpool.py), and their shares."""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..repository.manifest import Entry

FEW = 64  # a share's files of a pack another share mostly reads: moved to that one


def first_pack(e: Entry) -> bytes:
    """The pack a file's bytes (its first ones) are read from; b"" for none."""
    return e.pack or (e.slices[0][1] if e.slices else b"")


class Files:
    """The files a restore leaves to the worker processes: (index, cost) of each, in two
    arrays (a million files: 16 bytes each, not a tuple of two ints each), and the pack
    each one's bytes are (first) read from, numbered."""

    def __init__(self) -> None:
        self.indexes = array("q")
        self.costs = array("q")
        self.packs = array("i")  # pack number of each file, -1 for none
        self.boundaries = array("q")  # positions whose file is the first of its pack
        self._numbers: dict[bytes, int] = {}

    def add(self, idx: int, cost: int, pack: bytes = b"") -> None:
        """pack: the pack the file's bytes (or its first ones) are in (b"": none)."""
        number = -1
        if pack:
            number = self._numbers.get(pack, -1)
            if number < 0:
                number = self._numbers[pack] = len(self._numbers)
                if self.indexes:
                    self.boundaries.append(len(self.indexes))
        self.indexes.append(idx)
        self.costs.append(cost)
        self.packs.append(number)

    def split(self, n: int) -> list[array[int]]:
        """n runs of about equal cost: neighbours in a manifest share directories and pack
        frames, so each worker decodes each frame once. A pack read by two shares costs
        both its reads (on S3 two GETs more: the frame table, then the frames), so a cut
        within an eighth of the total cost of where a new pack starts moves there, and a
        share's few files (FEW) of a pack another share reads most of go to that one; the
        writers even out what this costs by taking over each other's rest (writerpool)."""
        total = sum(self.costs) or 1
        acc = array("q", itertools.accumulate(self.costs, initial=0))  # cost before each
        cuts = [0]
        for k in range(1, n):
            target = total * k // n
            cut = max(cuts[-1], bisect.bisect_left(acc, target, hi=len(self.indexes)))
            near = bisect.bisect_left(self.boundaries, cut)
            best = min((self.boundaries[j] for j in (near - 1, near)
                        if 0 <= j < len(self.boundaries)),
                       key=lambda b: abs(acc[b] - target), default=None)
            if best is not None and best >= cuts[-1] and abs(acc[best] - target) <= total // 8:
                cut = best
            cuts.append(cut)
        cuts.append(len(self.indexes))
        return self._regroup(cuts)

    def _regroup(self, cuts: list[int]) -> list[array[int]]:
        owner: dict[int, tuple[int, int]] = {}  # pack -> (files, share) of its main reader
        counts: Counter[tuple[int, int]] = Counter()
        for s, (a, b) in enumerate(itertools.pairwise(cuts)):
            for p in self.packs[a:b]:
                if p >= 0:
                    counts[(s, p)] += 1
        for (s, p), c in counts.items():
            if c > owner.get(p, (0, -1))[0]:
                owner[p] = (c, s)
        shares = [array("q") for _ in range(len(cuts) - 1)]
        for s, (a, b) in enumerate(itertools.pairwise(cuts)):
            for pos in range(a, b):
                p = self.packs[pos]
                to = s
                if p >= 0 and counts[(s, p)] <= FEW:
                    to = owner[p][1]
                shares[to].append(self.indexes[pos])
        return shares
