"""Directory capture: the Archiver runs the two passes over the tree, both through
directory fds without following any symlink:
1. walk (tree.py, Walker): lstat every entry, record metadata, xattrs (a file to read: by
   its reader), symlink targets, device numbers and hard-link groups, take the files
   unchanged since the parent snapshot from it (cheap; gives the progress total);
2. read (here): regular files that are not unchanged since the parent snapshot are opened
   (fsutil.open_regular: never a device or fifo, O_NOATIME when permitted) and read whole
   (only data extents: SEEK_DATA/SEEK_HOLE), chunked with FastCDC, hashed and compressed.
   A small capture: opened by the walker thread and read by a thread pool (blake3, zstd and
   file IO release the GIL). A big one: by reader processes (readerpool.py), each sent
   batches of a directory's names with its fd as soon as the walk has listed it, so they
   read while the walk goes on. Big files (chunker.py) are opened as soon as the walk sees
   them and read, once the walk is over, by a thread of their own, each cut in fixed blocks
   that several threads read, hash, compress and store (blocks/pipeline.py), as an image
   state's: their O_DIRECT reads and compression fill the cores while the small files'
   reads wait on a cold disk (they came last before: the bench's cold capture of a rootfs
   plus a 300 MiB disk image spent ~0.8 s with one core or the disk idle), but their 1 MiB
   reads no longer queue ahead of a cold walk's metadata reads (_big_go). A file whose
   size/mtime/ctime change while being read is read again up to 3 times, then kept with a
   warning.
A sync point comes first (fs/syncpoint.py): a file's ctime is recorded only where it
vouches for the bytes read, so "same inode and ctime" lets the next capture skip it.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import stat
import threading
import time
from array import array
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from pyfastcdc import FastCDC

from .. import gcpause, tuning
from ..blocks.pipeline import read_blocks
from ..fs import fsutil
from ..fs.prefetch import MetadataPrefetch
from ..fs.syncpoint import SyncPoint, sync_point
from ..inflight import prune
from ..model import StateInvalid
from ..progress import Progress
from ..repository.backend import LocalBackend
from ..repository.chunker import fixed_block, fixed_ranges, iter_chunks, make_cdc
from ..repository.manifest import Entry
from ..repository.packwriter import TinyPacker
from ..repository.repository import Repository
from .messages import REQUEST_FILES, REQUEST_NAME_BYTES
from .tree import EncodedTree, ParentCursor, Walker

if TYPE_CHECKING:
    from .readerpool import Batch, WorkerPool


def _vouch(e: Entry, walk_ctime: int, sync: SyncPoint) -> None:
    """Keep the ctime just read only where it stands for what was read: not when the inode
    changed between the walk (which read its xattrs) and the read of its data, nor when it
    changed after the capture's sync point (a store through a mapping may then follow
    without moving it). 0 vouches for nothing: the next capture reads the file again and
    no restore trusts it."""
    if e.ctime_ns != walk_ctime or not sync.vouches(e.ctime_ns):
        e.ctime_ns = 0


# a walked directory's path, inode, and the entry indexes and names of its files to read
_Dir = tuple[bytes, int, "array[int]", list[bytes]]


class _Stopped(Exception):
    """A big file's read ended early: the capture failed elsewhere."""


class Archiver:
    """The tree is held encoded (tree.py): an entry is decoded while a reader fills it in
    and encoded again once its data is placed (for a small file, once its pack is stored:
    TinyPacker.on_stored); from then on it is final and joins the manifest body, which is
    compressed as it grows, so memory per entry is ~45 bytes, not an Entry object."""

    def __init__(self, repo: Repository, root: str, parent: ParentCursor,
                 progress: Progress) -> None:
        self.repo = repo
        self.root = root
        self.parent = parent
        self.progress = progress
        self.tree = EncodedTree()
        self.warnings: list[str] = []
        self.stored_bytes = 0
        self.bytes_read = 0  # observable proof that unchanged files are not read
        self.files_read = 0
        self._lock = threading.Lock()
        # each walked directory's path, inode and indexes of its small files to read (whole,
        # by one reader each), not yet handed to reader processes
        self._small: deque[_Dir] = deque()
        # the heavy files among them (tuning.READER_HEAVY), each on its own, the biggest
        # first: (-size, walk order, its directory's path, inode, [index], [name])
        self._heavy: list[tuple[int, int, _Dir]] = []
        # the big files, each read in blocks by one thread while the walk and the small
        # files go on (_walked_big); set: the capture failed, they stop at the next block
        self._big: list[Future[None]] = []
        self._big_thread: ThreadPoolExecutor | None = None
        self._big_stop = threading.Event()
        # each big file holds a descriptor from its walk to the end of its read: at most
        # this many at once (the walk waits), not every big file of the state
        self._big_open = threading.BoundedSemaphore(tuning.BIG_FILES_OPEN)
        # Set once big files may be read: the walk is over (or BIG_FILES_OPEN of them wait).
        # A cold walk is a chain of small metadata reads, each waiting behind the big files'
        # 1 MiB reads queued on the disk: the bench's cold rootfs + 300 MiB image walked in
        # 1.0-1.8 s with the image read meanwhile, 0.56-0.78 s with it read after the walk
        # (engine alone, chrt -r 1, 7 alternating pairs, load 8-13: whole capture medians
        # 2.19 vs 2.06 s, faster in 6 of 7). Warm, the walk is short (0.2-0.3 s) and the
        # image's read the last to end either way (x4: 1.28-2.12 vs 1.33-1.73 s). The walk's
        # pace does not tell: a cold rootfs walk averages ~80 us an entry, under
        # PREFETCH_COLD_US, and its first window is as fast as a warm one.
        self._big_go = threading.Event()
        self._walking = False
        self._root_fd = -1
        self._root_dev = 0
        # the walk's pace: (entries, time.monotonic()) at the start of its current window;
        # past PREFETCH_COLD_US an entry, its metadata is warmed ahead of it (prefetch.py)
        self._pace = (0, 0.0)
        self._prefetch: MetadataPrefetch | None = None
        cfg = repo.config
        self._cdc_args = (cfg.chunk_avg, cfg.chunk_min, cfg.chunk_max)
        self._local = threading.local()
        local = isinstance(repo.backend, LocalBackend)
        self._packs = TinyPacker(repo, tuning.TINY_PACK_LOCAL if local else tuning.TINY_PACK,
                                 one_stream=not local)
        # (index, entry) of the files whose packs are stored, a pack's at once
        self._packs.on_stored = self.tree.put_many
        self._pool: WorkerPool | None = None
        self._pool_tried = False
        self._feed: Generator[Batch | None] | None = None  # requests for the pool

    def run(self) -> None:
        # A capture makes a few small objects per file (stat results, entries, tuples) and
        # no cyclic garbage; with the collector on it walked the tree's lists again and
        # again (gcpause.py).
        with gcpause.paused():
            self._run()

    def _run(self) -> None:
        try:
            root_fd = fsutil.open_path(self.root)
        except OSError as e:
            raise StateInvalid(f"state directory {self.root} is missing or not a "
                               f"directory (symlinks are refused): {e.strerror}") from e
        self._root_fd = root_fd
        try:
            root_dev = self._root_dev = os.fstat(root_fd).st_dev
            # From here on every change to a file moves its ctime (see syncpoint.py).
            self.sync = sync_point(root_fd)
            # pass 1 (tree.py); once reader processes run (a big capture), they read each
            # walked directory's files while the walk goes on (_walked)
            walker = Walker(self.repo, self.tree, self.parent, self.progress, self.warnings,
                            root_dev, fsutil.mount_roots(self.root), self._start_pool,
                            self._walked, self._walked_big)
            self._walking = True
            self.progress.sized = False  # no share of a total known yet: reported as 0
            self._pace = (0, time.monotonic())
            try:
                walker.walk(root_fd, b"")
            except RecursionError as e:
                raise StateInvalid(f"directory tree under {self.root} is nested too deeply "
                                   "to capture") from e
            finally:
                self._end_prefetch()
            self._walking = False
            self._big_go.set()
            # Every object the parent names was made durable by its commit.
            self.repo.durable |= self.parent.finish()
            self.progress.total = walker.total
            self.progress.sized = True
            self.progress.add(walker.reused)
            self._read_files(root_fd)
            self._packs.finish()
            self.stored_bytes += self._packs.stored_bytes
        finally:
            self._end_big()
            if self._feed is not None:
                self._feed.close()  # closes the directory fd it may hold
            os.close(root_fd)
            if self._pool is not None:  # the walk failed after starting it
                self._pool.close(kill=True)
            self._packs.close()

    def body(self) -> tuple[list[bytes], int, int]:
        """(encoded manifest body in pieces, bytes of its regular files, its entries but
        directories), once run() returned: the entries captured, less those dropped on the
        way."""
        return self.tree.body()

    # --- pass 2 -----------------------------------------------------------------------
    def _walked(self, rel: bytes, ino: int, small: array[int], names: list[bytes]) -> None:
        """A directory walked (Walker.on_dir): its files to read are queued, and handed to
        the reader processes at once when they run."""
        walked, since = self._pace
        if len(self.tree) - walked >= tuning.PREFETCH_WINDOW and self._prefetch is None:
            now = time.monotonic()
            if now - since > (len(self.tree) - walked) * tuning.PREFETCH_COLD_US * 1e-6:
                self._prefetch = MetadataPrefetch(self._root_fd, self._root_dev)
                self._prefetch.start()
            self._pace = (len(self.tree), now)
        if small:
            sizes = self.tree.sizes
            heavy = tuning.READER_HEAVY
            if max(map(sizes.__getitem__, small)) >= heavy:  # rare: a loop in C first
                light = array("q")
                light_names = []
                for i, name in zip(small, names, strict=True):
                    if sizes[i] >= heavy:
                        heapq.heappush(self._heavy, (-sizes[i], i, (rel, ino, array("q", [i]),
                                                                    [name])))
                    else:
                        light.append(i)
                        light_names.append(name)
                small, names = light, light_names
            if small:
                self._small.append((rel, ino, small, names))
            if self._pool is not None and self._feed is not None:
                self._pool.pump(self._feed)

    def _walked_big(self, dir_fd: int, name: bytes, idx: int) -> None:
        """A big file walked (Walker.on_big): opened now beneath the walk's own directory fd
        (fsutil.open_regular) and read in blocks by the big-file thread once the walk is
        over (_big_go); the walk waits while tuning.BIG_FILES_OPEN of them are open and not
        read yet, and lets them be read from then on."""
        if not self._big_open.acquire(blocking=False):
            self._big_go.set()
            self._big_open.acquire()
        try:
            fd = fsutil.open_regular(name, dir_fd)
        except OSError as err:
            self._big_open.release()
            fsutil.check_opened(err, self.tree.path(idx))
            self._drop(idx, f"vanished or replaced during capture ({err})")
            return
        try:
            if self._big_thread is None:
                self._big_thread = ThreadPoolExecutor(1, thread_name_prefix="bigfile")
            self._big.append(self._big_thread.submit(self._big_job, fd, idx))
        except BaseException:
            os.close(fd)
            self._big_open.release()
            raise

    def _big_job(self, fd: int, idx: int) -> None:
        try:
            self._big_go.wait()
            if not self._big_stop.is_set():
                self._read_big(fd, idx)
        finally:
            os.close(fd)
            self._big_open.release()

    def _end_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None

    def _end_big(self) -> None:
        """Stop the big files' reads (the capture failed) and wait for them to end."""
        self._big_stop.set()
        self._big_go.set()
        if self._big_thread is not None:
            self._big_thread.shutdown(wait=True)  # queued jobs close their fds
            self._big_thread = None

    def _read_files(self, root_fd: int) -> None:
        self._read_small(root_fd)
        for f in self._big:  # raises what a big file's read raised
            f.result()
        self._big = []

    def _read_small(self, root_fd: int) -> None:
        """The files below the big-file size, by the reader processes (a big capture) or
        threads, each file whole by one of them."""
        sizes = self.tree.sizes
        if self._heavy:  # the biggest first, then the rest as walked
            self._small.extendleft(reversed([heapq.heappop(self._heavy)[2]
                                             for _ in range(len(self._heavy))]))
        if self._pool is None:
            to_read = sum(sizes[i] for _r, _i, idxs, _n in self._small for i in idxs)
            if to_read >= tuning.CAPTURE_PROCESS_THRESHOLD:
                self._start_pool()
        pool, self._pool = self._pool, None
        if pool is not None:
            assert self._feed is not None
            ok = False
            try:
                pool.run(self._feed, self.progress.check)
                ok = True
            finally:
                pool.close(kill=not ok)
                self._feed.close()  # closes the directory fd the generator may hold
                self._feed = None
            self.stored_bytes += pool.stored_bytes
        else:
            todo, self._small = list(self._small), deque()
            self._read_threads(self._open_files(root_fd, todo))
        self.progress.check()

    def _start_pool(self) -> None:
        """Worker processes, once the capture is known to be big: started while the walk
        goes on, so their start-up (~0.05 s warm) overlaps it instead of delaying reads."""
        if self._pool_tried or tuning.CAPTURE_PROCESSES <= 0:
            return
        self._pool_tried = True
        from .readerpool import Sinks, WorkerPool  # only big captures pay for its imports

        try:
            pool = WorkerPool(self.repo, tuning.CAPTURE_PROCESSES)
        except OSError as err:  # cannot start processes here: threads do the same work
            import logging

            logging.getLogger(__name__).warning(
                "capture worker processes unavailable (%s); using threads", err)
            return
        pool.sinks = Sinks(self._done, self._gone, self.progress.add,
                           lambda i: fsutil.shown(self.tree.path(i)), self._packs.add_piece)
        self._pool, self._feed = pool, self._batches()

    def _open_dir(self, root_fd: int, rel: bytes, ino: int, idxs: array[int]) -> int | None:
        """The directory `rel` opened beneath the root (O_NOFOLLOW each step) if it is still
        the walk's (same inode); else its files are dropped and None."""
        self.progress.poll()
        try:
            dfd = fsutil.open_dir_beneath(root_fd, fsutil.split(rel))
        except OSError as err:
            fsutil.check_exhausted(err)
            self._drop_all(idxs, f"directory changed during capture ({err})")
            return None
        if os.fstat(dfd).st_ino != ino:
            os.close(dfd)
            self._drop_all(idxs, "directory replaced during capture")
            return None
        return dfd

    def _batches(self) -> Generator[Batch | None]:
        """Requests for the reader processes: the files of each walked directory in
        batches of at most REQUEST_FILES, with the directory's fd (open while its batches
        are sent); the readers open the files themselves beneath it (readerproc.py).
        None: no directory walked yet whose files are not sent (the walk goes on)."""
        sizes = self.tree.sizes
        limit = tuning.REQUEST_BYTES
        while True:
            if self._heavy:
                rel, ino, idxs, all_names = heapq.heappop(self._heavy)[2]
            elif self._small:
                rel, ino, idxs, all_names = self._small.popleft()
            elif self._walking:
                yield None
                continue
            else:
                return
            dfd = self._open_dir(self._root_fd, rel, ino, idxs)
            if dfd is None:
                continue
            try:
                batch: list[int] = []
                names: list[bytes] = []
                name_bytes = nbytes = 0
                for i, name in zip(idxs, all_names, strict=True):
                    if len(batch) == REQUEST_FILES or name_bytes + len(name) > (
                            REQUEST_NAME_BYTES) or (nbytes >= limit):
                        yield dfd, batch, names, [sizes[k] for k in batch]
                        batch, names, name_bytes, nbytes = [], [], 0, 0
                    batch.append(i)
                    names.append(name)
                    name_bytes += len(name)
                    nbytes += sizes[i]
                yield dfd, batch, names, [sizes[k] for k in batch]
            finally:
                os.close(dfd)

    def _open_files(self, root_fd: int, todo: list[_Dir],
                    ) -> Generator[tuple[int, int]]:
        """(fd, entry index) of every file to read, opened through dir fds (O_NOFOLLOW)."""
        for rel, ino, idxs, names in todo:
            if not idxs:
                continue
            dfd = self._open_dir(root_fd, rel, ino, idxs)
            if dfd is None:
                continue
            try:
                for i, name in zip(idxs, names, strict=True):
                    size = self.tree.sizes[i]
                    try:
                        fd = fsutil.open_regular(name, dfd)
                    except OSError as err:
                        fsutil.check_opened(err, self.tree.path(i))
                        self._drop(i, f"vanished or replaced during capture ({err})")
                        continue
                    if size:
                        with contextlib.suppress(OSError):  # advice only
                            os.posix_fadvise(fd, 0, min(size, tuning.PREFETCH_MAX),
                                             os.POSIX_FADV_WILLNEED)
                    yield fd, i
            finally:
                os.close(dfd)

    def _done(self, idx: int, chunks: list[tuple[bytes, int]], tiny: bytes,
              info: tuple[int, ...], nread: int, changed: bool,
              xattrs: list[tuple[str, bytes]]) -> None:
        """A file read (by a reader process, or the big-file thread). Once per file of the
        state: kept to a few calls (it runs on the walk's thread, the capture's critical
        path)."""
        e = self.tree[idx]
        walk_ctime = e.ctime_ns
        e.size, e.mtime_ns, e.ctime_ns, e.ino, e.mode, e.uid, e.gid = info
        _vouch(e, walk_ctime, self.sync)
        e.chunks, e.xattrs = chunks, xattrs
        if self._packs.place(idx, e, tiny):
            self.tree.put(idx, e)
        with self._lock:
            self.bytes_read += nread
            self.files_read += 1
            if changed:
                self.warnings.append(f"{fsutil.shown(e.path)}: changed while being read "
                                     f"{tuning.READ_RETRIES + 1} times; stored as last read")

    def _read_big(self, fd: int, idx: int) -> None:
        """A big file, in fixed blocks (chunker.py) read, hashed, compressed and stored on
        every core (blocks/pipeline.py); small pieces (an extent's ends) go into the tiny
        packs like other small chunks. Re-read while it changes, as any file."""
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            self._gone(idx, "replaced by a non-regular file during capture")
            return
        bs = self.repo.config.block_size
        xattrs = fsutil.read_xattrs(fd)  # before the read: a change after moves its ctime

        def store(data: memoryview) -> tuple[bytes, int]:
            if self._big_stop.is_set():
                raise _Stopped  # the capture failed: no more blocks
            return self._packs.store_block(data)

        res = read_blocks(fd, lambda size: fixed_ranges(fd, size, bs), bs, store,
                          self.progress, skip_zero=False, threads=tuning.BIG_FILE_THREADS)
        st = res.st
        self._done(idx, res.blocks, b"", (st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                         st.st_ino, st.st_mode, st.st_uid, st.st_gid),
                   res.nread, res.changed, xattrs)
        self.progress.add(max(0, st.st_size - res.nread))  # its holes
        with self._lock:
            self.stored_bytes += res.stored

    def _gone(self, idx: int, why: str) -> None:
        self._drop(idx, why)

    def _place(self, idx: int, e: Entry, tiny: bytes) -> None:
        """A file read: its data placed in packs, and its entry encoded again once they
        all have their ids (now, or when the packer stores the pack: tree.put then)."""
        if self._packs.place(idx, e, tiny):
            self.tree.put(idx, e)

    def _read_threads(self, items: Generator[tuple[int, int]]) -> None:
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

    def _drop(self, idx: int, why: str) -> None:
        path = self.tree.drop(idx)
        with self._lock:
            self.warnings.append(f"{fsutil.shown(path)}: {why}; not captured")

    def _drop_all(self, idxs: array[int], why: str) -> None:
        for i in idxs:
            self._drop(i, why)

    def _cdc(self) -> FastCDC:
        c: FastCDC | None = getattr(self._local, "cdc", None)
        if c is None:  # FastCDC objects are not thread-safe
            c = make_cdc(self.repo)
            self._local.cdc = c
        return c

    def _read_one(self, fd: int, idx: int) -> None:
        e = self.tree[idx]
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            self._drop(idx, "replaced by a non-regular file during capture")
            return
        stored = 0
        counted = 0
        for attempt in range(tuning.READ_RETRIES + 1):
            self.progress.check()
            chunks: list[tuple[bytes, int]] = []
            nread = [0]
            small = st.st_size <= tuning.INLINE_MAX
            pieces: list[tuple[bytes, int]] = []
            for data, off in iter_chunks(fd, st.st_size, self._cdc(), self._cdc_args[1], nread,
                                         fixed_block(self.repo.config, st.st_size)):
                if small:  # decided below, once we know it is a single chunk
                    pieces.append((bytes(data), off))
                    continue
                cid, n = self._packs.store_chunk(data)
                stored += n
                chunks.append((cid, off))
                self.progress.add(len(data))
                counted += len(data)
                self.progress.check()
            tiny = b""
            if len(pieces) == 1:
                tiny = pieces[0][0]
                chunks.append((self.repo.chunk_id(tiny), pieces[0][1]))
            else:
                for data, off in pieces:
                    cid, n = self._packs.store_chunk(data)
                    stored += n
                    chunks.append((cid, off))
            xattrs = fsutil.read_xattrs(fd)  # a change to them moves ctime: seen just below
            st2 = os.fstat(fd)
            with self._lock:
                self.bytes_read += nread[0]
            same = (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if same or attempt == tuning.READ_RETRIES:
                if not same:
                    with self._lock:
                        self.warnings.append(
                            f"{fsutil.shown(e.path)}: changed while being read "
                            f"{tuning.READ_RETRIES + 1} times; stored as last read")
                break
            st = st2
        walk_ctime = e.ctime_ns
        e.size, e.mtime_ns, e.ctime_ns = st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns
        _vouch(e, walk_ctime, self.sync)
        e.ino = st2.st_ino
        e.mode, e.uid, e.gid = st2.st_mode, st2.st_uid, st2.st_gid
        e.chunks, e.xattrs = chunks, xattrs
        self._place(idx, e, tiny)
        self.progress.add(max(0, e.size - counted))
        with self._lock:
            self.stored_bytes += stored
            self.files_read += 1

