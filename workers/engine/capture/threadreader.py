"""A small capture's second pass: its files, opened by the archiver (through directory fds,
O_NOFOLLOW: never a device or fifo), each read whole by one of a pool of threads (blake3,
zstd and file IO release the GIL), chunked with FastCDC, hashed and compressed; a file
whose size/mtime/ctime change while being read is read again up to tuning.READ_RETRIES
times, then kept with a warning. A big capture's files are read by reader processes
instead (readerpool.py), with the same rules (readerproc.py).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

from pyfastcdc import FastCDC

from .. import tuning
from ..fs import fsutil
from ..inflight import prune
from ..progress import Progress
from ..repository.chunker import fixed_block, iter_chunks, make_cdc
from ..repository.packwriter import TinyPacker
from ..repository.repository import Repository
from .messages import FileDone, FileGone


class ThreadReader:
    """Reads the (fd, entry index) it is given, closing each fd; `done` gets each file
    read, `drop` each that is not a regular file any more."""

    def __init__(self, repo: Repository, packs: TinyPacker, progress: Progress,
                 done: FileDone, drop: FileGone) -> None:
        self._repo = repo
        self._packs = packs
        self._progress = progress
        self._done = done
        self._drop = drop
        self._min = repo.config.chunk_min
        self._local = threading.local()
        self._lock = threading.Lock()
        self.stored_bytes = 0  # once run() returned

    def run(self, items: Generator[tuple[int, int]]) -> None:
        sem = threading.BoundedSemaphore(tuning.CAPTURE_MAX_INFLIGHT)
        futures: list[Future[None]] = []
        failed = threading.Event()

        def job(fd: int, idx: int) -> None:
            try:
                if not failed.is_set():
                    self._read_one(fd, idx)
            except BaseException:
                failed.set()
                raise
            finally:
                os.close(fd)
                sem.release()

        with ThreadPoolExecutor(tuning.CAPTURE_THREADS, thread_name_prefix="capture") as pool:
            try:
                for fd, i in items:
                    if failed.is_set():
                        os.close(fd)
                        break
                    sem.acquire()
                    futures = prune(futures)
                    futures.append(pool.submit(job, fd, i))
            except BaseException:
                failed.set()
                raise
            finally:
                items.close()
                for f in futures:
                    f.exception()  # wait for everyone before raising
        for f in futures:
            f.result()

    def _cdc(self) -> FastCDC:
        c: FastCDC | None = getattr(self._local, "cdc", None)
        if c is None:  # FastCDC objects are not thread-safe
            c = make_cdc(self._repo)
            self._local.cdc = c
        return c

    def _read_one(self, fd: int, idx: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self._drop(idx, "replaced by a non-regular file during capture")
            return
        progress, packs = self._progress, self._packs
        stored = counted = nread_all = 0
        for attempt in range(tuning.READ_RETRIES + 1):
            progress.check()
            chunks: list[tuple[bytes, int]] = []
            nread = [0]
            small = st.st_size <= tuning.INLINE_MAX
            pieces: list[tuple[bytes, int]] = []
            for data, off in iter_chunks(fd, st.st_size, self._cdc(), self._min, nread,
                                         fixed_block(self._repo.config, st.st_size)):
                if small:  # decided below, once we know it is a single chunk
                    pieces.append((bytes(data), off))
                    continue
                cid, n = packs.store_chunk(data)
                stored += n
                chunks.append((cid, off))
                progress.add(len(data))
                counted += len(data)
                progress.check()
            tiny = b""
            if len(pieces) == 1:
                tiny = pieces[0][0]
                chunks.append((self._repo.chunk_id(tiny), pieces[0][1]))
            else:
                for data, off in pieces:
                    cid, n = packs.store_chunk(data)
                    stored += n
                    chunks.append((cid, off))
            xattrs = fsutil.read_xattrs(fd)  # a change to them moves ctime: seen just below
            st2 = os.fstat(fd)
            nread_all += nread[0]
            same = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if same or attempt == tuning.READ_RETRIES:
                break
            st = st2
        self._done(idx, chunks, tiny, (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns,
                                       st2.st_ino, st2.st_mode, st2.st_uid, st2.st_gid),
                   nread_all, not same, xattrs)
        progress.add(max(0, st2.st_size - counted))
        with self._lock:
            self.stored_bytes += stored
