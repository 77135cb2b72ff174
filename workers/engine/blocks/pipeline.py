"""Fixed blocks read and written by several threads: reading a file, BLAKE3, zstd and the
repository's IO release the GIL, so tuning.IMAGE_THREADS threads keep both cores busy
while the disk works. Results are consumed in order by the calling thread, at most
2 x IMAGE_THREADS blocks in flight (bounded memory).

Reads and writes go through a second fd with O_DIRECT (directio.py: no page-cache cost)
opened through /proc/self/fd on the caller's fd: the very inode the caller opened and
checked (fsutil.open_regular's rules), no name is looked up again.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, TypeVar

from .. import tuning
from ..fs import directio, fsutil
from ..progress import Progress

T = TypeVar("T")
R = TypeVar("R")
Store = Callable[[memoryview], tuple[bytes, int]]  # data -> (chunk id, bytes written)
# (chunk index, chunk id, the write's aligned buffer) -> the chunk's verified bytes, or
# their length when it put them at the start of that buffer (nothing to copy there)
Fetch = Callable[[int, bytes, mmap.mmap], bytes | int]
_NOATIME = getattr(os, "O_NOATIME", 0)


def pipelined(items: Iterable[T], job: Callable[[T], R], consume: Callable[[R], None],
              threads: int = 0, window: int = 0) -> None:
    """job(item) on `threads` (default IMAGE_THREADS) threads, results consumed in order by
    the calling thread, at most `window` (default 2 x threads) jobs submitted and not yet
    consumed. On an error the rest is cancelled and running jobs finish before this
    returns."""
    threads = threads or tuning.IMAGE_THREADS
    window = window or 2 * threads
    with ThreadPoolExecutor(threads, thread_name_prefix="blocks") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                if len(pending) >= window:
                    consume(pending.popleft().result())
                pending.append(pool.submit(job, item))
            while pending:
                consume(pending.popleft().result())
        finally:
            for f in pending:
                f.cancel()


def all_zero(data: memoryview, zero: bytes) -> bool:
    """Is data (at most len(zero) bytes) all zeros? `memoryview == bytes` compares item by
    item (3.7 ms a MiB here: 0.25 s of CPU for the 67 zero blocks of bench/engine.py's
    image); a copy and one memcmp take 0.09 ms."""
    return not any(data[:64]) and data.tobytes() == zero[:len(data)]


class _Buffers:
    """Page-aligned block buffers, reused: one per block read and not yet stored."""

    def __init__(self, block: int) -> None:
        self._block = block
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return directio.buffer(self._block)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)


class BlocksRead(NamedTuple):
    blocks: list[tuple[bytes, int]]  # (chunk id, offset) of the blocks stored, in order
    stored: int  # bytes newly written to the repository
    nread: int  # bytes read, every attempt counted
    # the file as it was when its last read began: a file that kept changing is recorded
    # as before that read, so the next capture reads it again
    st: os.stat_result
    changed: bool  # still changing after the last re-read


def read_blocks(fd: int, ranges: Callable[[int], Iterable[tuple[int, int]]], block: int,
                store: Store, progress: Progress, *, skip_zero: bool,
                stable: bool = True, threads: int = 0, read_ahead: int = 0) -> BlocksRead:
    """Read the (offset, length) ranges(size) of fd, each at most `block` bytes, and store
    each (all-zero ones are left out when skip_zero). The file is read again, up to
    tuning.READ_RETRIES times, while its size, mtime or ctime change under the read
    (stable=False: a block device, which has no such stamps). `threads`: pipelined()'s.
    `read_ahead`: blocks are read by this many threads of their own, up to that many
    ahead of the `threads` that hash and store them (0: each of those reads its block,
    then stores it; its core idles while the disk reads)."""
    local = threading.local()
    zero = bytes(block)
    st = os.fstat(fd)
    direct = (directio.reopen_direct(fd, os.O_RDONLY | _NOATIME) if _NOATIME else None) \
        or directio.reopen_direct(fd, os.O_RDONLY)
    buffers = _Buffers(block)

    def keep(off: int, data: memoryview) -> tuple[int, int, bytes | None, int]:
        if skip_zero and all_zero(data, zero):
            return off, len(data), None, 0
        cid, n = store(data)
        return off, len(data), cid, n

    def job(rng: tuple[int, int]) -> tuple[int, int, bytes | None, int]:
        off, ln = rng
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = directio.buffer(block)
        return keep(off, directio.pread(direct, fd, buf, ln, off))

    def read(off: int, ln: int) -> tuple[mmap.mmap, memoryview]:
        buf = buffers.take()
        try:
            return buf, directio.pread(direct, fd, buf, ln, off)
        except BaseException:
            buffers.give(buf)
            raise

    def job_read(item: tuple[int, Future[tuple[mmap.mmap, memoryview]]]
                 ) -> tuple[int, int, bytes | None, int]:
        off, reading = item
        buf, data = reading.result()
        try:
            return keep(off, data)
        finally:
            buffers.give(buf)  # store() keeps nothing of data (it copies or compresses)

    def read_ahead_of(size: int) -> None:
        with ThreadPoolExecutor(read_ahead, thread_name_prefix="blockread") as io:
            try:  # each block's read starts as its job is submitted
                items = ((off, io.submit(read, off, ln)) for off, ln in ranges(size))
                pipelined(items, job_read, consume, threads,
                          (threads or tuning.IMAGE_THREADS) + read_ahead)
            except BaseException:
                io.shutdown(wait=True, cancel_futures=True)
                raise

    stored = nread = 0
    blocks: list[tuple[bytes, int]] = []

    def consume(res: tuple[int, int, bytes | None, int]) -> None:
        nonlocal stored, nread
        off, ln, cid, n = res
        if cid is not None:
            blocks.append((cid, off))
        stored += n
        nread += ln
        progress.add(ln)
        progress.check()

    changed = False
    try:
        for attempt in range(tuning.READ_RETRIES + 1):
            blocks.clear()
            if read_ahead:
                read_ahead_of(st.st_size)
            else:
                pipelined(ranges(st.st_size), job, consume, threads)
            st2 = os.fstat(fd)
            if not stable or (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == (
                    st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                break
            if attempt == tuning.READ_RETRIES:
                changed = True
                break
            st = st2
    finally:
        if direct is not None:
            os.close(direct)
    return BlocksRead(blocks, stored, nread, st, changed)


def write_blocks(fd: int, chunks: list[tuple[bytes, int]], block: int, fetch: Fetch,
                 progress: Progress) -> int:
    """Write each (chunk id, offset) of `chunks` into fd (already sized: the writes fill
    it, holes stay holes) with the bytes fetch() returns, verified; returns bytes written.
    The caller fsyncs (O_DIRECT alone does not make data durable)."""
    local = threading.local()
    direct = directio.reopen_direct(fd, os.O_WRONLY)

    def job(item: tuple[int, tuple[bytes, int]]) -> int:
        i, (cid, off) = item
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = directio.buffer(block)
        data = fetch(i, cid, buf)
        if isinstance(data, int):
            directio.write_buffer(direct, fd, buf, data, off)
            return data
        directio.pwrite(direct, fd, buf, data, off)
        return len(data)

    try:
        return _counted(enumerate(chunks), job, progress)
    finally:
        if direct is not None:
            os.close(direct)


def copy_ranges(src: int, dst: int, ranges: Iterable[tuple[int, int]], block: int,
                progress: Progress) -> int:
    """Copy the (offset, length) ranges (each at most `block` bytes) of src into dst at
    the same offsets, on every core; dst already sized, so holes stay holes. Returns bytes
    copied. The caller checks src did not change meanwhile, and fsyncs."""
    local = threading.local()
    rdirect = directio.reopen_direct(src, os.O_RDONLY)
    wdirect = directio.reopen_direct(dst, os.O_WRONLY)

    def job(rng: tuple[int, int]) -> int:
        off, ln = rng
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = directio.buffer(block)
        data = directio.pread(rdirect, src, buf, ln, off)
        directio.pwrite(wdirect, dst, buf, data, off)
        return len(data)

    try:
        return _counted(ranges, job, progress)
    finally:
        for d in (rdirect, wdirect):
            if d is not None:
                os.close(d)


def _counted(items: Iterable[T], job: Callable[[T], int], progress: Progress) -> int:
    """pipelined() of jobs that return a byte count; the total, reported as progress."""
    total = 0

    def consume(n: int) -> None:
        nonlocal total
        total += n
        progress.add(n)
        progress.check()

    pipelined(items, job, consume)
    return total


class _Differs(Exception):
    pass


def same_blocks(fd: int, ranges: list[tuple[int, int]], chunks: list[tuple[bytes, int]],
                chunk_id: Callable[[bytes], bytes], counter: list[int]) -> bool:
    """Do the (offset, length) ranges of fd hash to `chunks` ((chunk id, offset) each)?
    Hashed on every core; stops at the first block that differs. Bytes read go to
    counter[0]. The caller checks the file did not change meanwhile."""
    if [off for off, _ln in ranges] != [off for _cid, off in chunks]:
        return False
    want = iter(chunks)

    def job(rng: tuple[int, int]) -> tuple[int, bytes]:
        data = fsutil.pread_full(fd, rng[1], rng[0])
        return len(data), chunk_id(data)

    def consume(res: tuple[int, bytes]) -> None:
        counter[0] += res[0]
        if res[1] != next(want)[0]:
            raise _Differs

    try:
        pipelined(ranges, job, consume)
    except _Differs:
        return False
    return True
