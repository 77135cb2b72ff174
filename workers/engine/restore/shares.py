"""The files a restore leaves to its writer processes (writerpool.py), and their shares."""

from __future__ import annotations

from array import array


class Files:
    """The files a restore leaves to the worker processes: (index, cost) of each, in two
    arrays (a million files: 16 bytes each, not a tuple of two ints each)."""

    def __init__(self) -> None:
        self.indexes = array("q")
        self.costs = array("q")

    def add(self, idx: int, cost: int) -> None:
        self.indexes.append(idx)
        self.costs.append(cost)

    def split(self, n: int) -> list[array[int]]:
        """n contiguous runs of about equal cost: neighbours in a manifest share
        directories and pack blocks, so each worker decodes each block once."""
        total = sum(self.costs) or 1
        shares = [array("q") for _ in range(n)]
        acc = 0
        for idx, cost in zip(self.indexes, self.costs, strict=True):
            shares[min(n - 1, acc * n // total)].append(idx)
            acc += cost
        return shares
