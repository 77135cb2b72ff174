"""A capture's big files (repository config big_file, chunker.fixed_block): each opened as
soon as the walk sees it and read, once the walk is over, by a thread of its own, cut in
fixed blocks that several threads read, hash, compress and store (blocks/pipeline.py), as
an image state's: their O_DIRECT reads and compression fill the cores while the small
files' reads wait on a cold disk (they came last before: the bench's cold capture of a
rootfs plus a 300 MiB disk image spent ~0.8 s with one core or the disk idle), but their
1 MiB reads no longer queue ahead of a cold walk's metadata reads (`go`).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from .. import tuning
from ..blocks.pipeline import read_blocks
from ..fs import fsutil
from ..progress import Progress
from ..repository.chunker import fixed_ranges
from ..repository.packwriter import TinyPacker
from .messages import FileDone, FileGone


class _Stopped(Exception):
    """A big file's read ended early: the capture failed elsewhere."""


class BigFiles:
    """The big files of one capture: `walked` while the walk goes on, `go` once it is
    over, `wait` for their reads, `end` always (stops them when the capture failed)."""

    def __init__(self, packs: TinyPacker, block_size: int, progress: Progress,
                 done: FileDone, drop: FileGone, path: Callable[[int], bytes]) -> None:
        self._packs = packs
        self._block_size = block_size
        self._progress = progress
        self._done = done
        self._drop = drop
        self._path = path
        self.stored_bytes = 0  # once wait() returned
        # each read in blocks by one thread while the walk and the small files go on;
        # set: the capture failed, they stop at the next block
        self._reads: list[Future[None]] = []
        self._thread: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        # each big file holds a descriptor from its walk to the end of its read: at most
        # this many at once (the walk waits), not every big file of the state
        self._open = threading.BoundedSemaphore(tuning.BIG_FILES_OPEN)
        # Set once big files may be read: the walk is over (or BIG_FILES_OPEN of them wait).
        # A cold walk is a chain of small metadata reads, each waiting behind the big files'
        # 1 MiB reads queued on the disk: the bench's cold rootfs + 300 MiB image walked in
        # 1.0-1.8 s with the image read meanwhile, 0.56-0.78 s with it read after the walk
        # (engine alone, chrt -r 1, 7 alternating pairs, load 8-13: whole capture medians
        # 2.19 vs 2.06 s, faster in 6 of 7). Warm, the walk is short (0.2-0.3 s) and the
        # image's read the last to end either way (x4: 1.28-2.12 vs 1.33-1.73 s). The walk's
        # pace does not tell: a cold rootfs walk averages ~80 us an entry, under
        # PREFETCH_COLD_US, and its first window is as fast as a warm one.
        self._go = threading.Event()

    def walked(self, dir_fd: int, name: bytes, idx: int) -> None:
        """A big file walked (Walker.on_big): opened now beneath the walk's own directory fd
        (fsutil.open_regular) and read in blocks by the big-file thread once the walk is
        over (go); the walk waits while tuning.BIG_FILES_OPEN of them are open and not
        read yet, and lets them be read from then on."""
        if not self._open.acquire(blocking=False):
            self._go.set()
            self._open.acquire()
        try:
            fd = fsutil.open_regular(name, dir_fd)
        except OSError as err:
            self._open.release()
            fsutil.check_opened(err, self._path(idx))
            self._drop(idx, f"vanished or replaced during capture ({err})")
            return
        try:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="bigfile")
            self._reads.append(self._thread.submit(self._job, fd, idx))
        except BaseException:
            os.close(fd)
            self._open.release()
            raise

    def go(self) -> None:
        """The walk is over: the big files may be read."""
        self._go.set()

    def wait(self) -> None:
        """Raises what a big file's read raised."""
        for f in self._reads:
            f.result()
        self._reads = []

    def end(self) -> None:
        """Stop the big files' reads (the capture failed) and wait for them to end."""
        self._stop.set()
        self._go.set()
        if self._thread is not None:
            self._thread.shutdown(wait=True)  # queued jobs close their fds
            self._thread = None

    def _job(self, fd: int, idx: int) -> None:
        try:
            self._go.wait()
            if not self._stop.is_set():
                self._read(fd, idx)
        finally:
            os.close(fd)
            self._open.release()

    def _read(self, fd: int, idx: int) -> None:
        """A big file, in fixed blocks (chunker.py) read, hashed, compressed and stored on
        every core (blocks/pipeline.py); small pieces (an extent's ends) go into the tiny
        packs like other small chunks. Re-read while it changes, as any file."""
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            self._drop(idx, "replaced by a non-regular file during capture")
            return
        bs = self._block_size
        xattrs = fsutil.read_xattrs(fd)  # before the read: a change after moves its ctime

        def store(data: memoryview) -> tuple[bytes, int]:
            if self._stop.is_set():
                raise _Stopped  # the capture failed: no more blocks
            return self._packs.store_block(data)

        res = read_blocks(fd, lambda size: fixed_ranges(fd, size, bs), bs, store,
                          self._progress, skip_zero=False, threads=tuning.BIG_FILE_THREADS,
                          read_ahead=tuning.BIG_FILE_READ_AHEAD)
        st = res.st
        self._done(idx, res.blocks, b"", (st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                         st.st_ino, st.st_mode, st.st_uid, st.st_gid),
                   res.nread, res.changed, xattrs)
        self._progress.add(max(0, st.st_size - res.nread))  # its holes
        self.stored_bytes += res.stored  # one thread reads them: no lock
