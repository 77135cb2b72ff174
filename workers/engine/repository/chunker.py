"""Content-defined chunking of a file's data extents (shared by capture, its worker
processes and restore's identity check, so all three cut files identically)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from pyfastcdc import FastCDC

from ..fs import fsutil
from .repository import Repository


class _RegionReader:
    """File-like reader of [offset, offset+length) of an fd, for FastCDC.cut_stream."""

    def __init__(self, fd: int, offset: int, length: int, counter: list[int]) -> None:
        self.fd, self.pos, self.end, self.counter = fd, offset, offset + length, counter

    def readinto(self, b: memoryview) -> int:
        n = min(len(b), self.end - self.pos)
        if n <= 0:
            return 0
        got = os.preadv(self.fd, [b[:n]], self.pos)
        self.pos += got
        self.counter[0] += got
        return got


def make_cdc(repo: Repository) -> FastCDC:
    cfg = repo.config
    return FastCDC(cfg.chunk_avg, min_size=cfg.chunk_min, max_size=cfg.chunk_max)


def iter_chunks(fd: int, size: int, cdc: FastCDC, min_size: int,
                counter: list[int]) -> Iterator[tuple[bytes | memoryview, int]]:
    """(data, file offset) of the chunks of a file's data extents; holes are skipped and a
    chunk never spans two extents. Data is only valid until the next item (cut_stream)."""
    for off, ln in fsutil.data_extents(fd, size):
        if ln <= min_size:  # small file or extent: one chunk, no CDC needed
            data = fsutil.pread_full(fd, ln, off)
            counter[0] += len(data)
            yield data, off
            continue
        for c in cdc.cut_stream(_RegionReader(fd, off, ln, counter)):
            yield c.data, off + c.offset
