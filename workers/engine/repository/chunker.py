"""How a file is cut into chunks (shared by capture, its worker processes and restore's
identity check, so all three cut files identically).

Files below the repository's `big_file` size get content-defined chunks (FastCDC), which
survive insertions. Bigger files (disk images, databases, VM disks: rewritten in place, not
shifted) are cut like image states: `block_size` blocks at fixed offsets, so that
- the same bytes as a file in a directory state and as an image state share every block,
- blocks are independent: capture reads, hashes and compresses them on all cores and
  restore fetches, verifies and writes them likewise (blocks/pipeline.py),
- a change in place costs only the blocks it touches.
Either way holes are skipped and a chunk never spans two data extents.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..fs import fsutil
from .repository import Config, Repository

if TYPE_CHECKING:  # imported when a chunker is made: a restore writing files needs none
    from pyfastcdc import FastCDC


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
    from pyfastcdc import FastCDC  # ~4 ms of a fresh process's start: only when chunking

    cfg = repo.config
    return FastCDC(cfg.chunk_avg, min_size=cfg.chunk_min, max_size=cfg.chunk_max)


def fixed_block(cfg: Config, size: int) -> int:
    """The block size a file of `size` bytes is cut into, or 0: content-defined chunks."""
    return cfg.block_size if size >= cfg.big_file else 0


def fixed_ranges(fd: int, size: int, block: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of a big file's chunks: its data extents cut at multiples of
    `block` (an extent's first and last pieces may be shorter)."""
    for off, ln in fsutil.data_extents(fd, size):
        pos, end = off, off + ln
        while pos < end:
            nxt = min((pos // block + 1) * block, end)
            yield pos, nxt - pos
            pos = nxt


def iter_chunks(fd: int, size: int, cdc: FastCDC, min_size: int, counter: list[int],
                fixed: int = 0) -> Iterator[tuple[bytes | memoryview, int]]:
    """(data, file offset) of the chunks of a file's data extents; holes are skipped and a
    chunk never spans two extents. `fixed`: fixed_block() of the file (0: FastCDC). Data
    is only valid until the next item (cut_stream)."""
    if fixed:
        for off, ln in fixed_ranges(fd, size, fixed):
            data = fsutil.pread_full(fd, ln, off)
            counter[0] += len(data)
            yield data, off
        return
    for off, ln in fsutil.data_extents(fd, size):
        if ln <= min_size:  # small file or extent: one chunk, no CDC needed
            data = fsutil.pread_full(fd, ln, off)
            counter[0] += len(data)
            yield data, off
            continue
        if ln <= 2 * cdc.max_size:
            # read whole and cut in place: the same chunks as cut_stream, whose reader
            # zeroes a buffer of 2 * max_size (8 MiB) for every file it chunks (a patch
            # proving a 3.8 MB file paid 46 M instructions of memset for it under callgrind)
            data = fsutil.pread_full(fd, ln, off)
            counter[0] += len(data)
            for c in cdc.cut_buf(data):
                yield c.data, off + c.offset
            continue
        for c in cdc.cut_stream(_RegionReader(fd, off, ln, counter)):
            yield c.data, off + c.offset
