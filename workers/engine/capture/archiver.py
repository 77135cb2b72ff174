"""Directory capture: the Archiver runs the two passes over the tree, both through
directory fds without following any symlink:
1. walk (walk.py, Walker): lstat every entry, record metadata, xattrs (a file to read: by
   its reader), symlink targets, device numbers and hard-link groups, take the files
   unchanged since the parent snapshot from it (cheap; gives the progress total);
2. read: regular files that are not unchanged since the parent snapshot are opened
   (fsutil.open_regular: never a device or fifo, O_NOATIME when permitted) and read whole
   (only data extents: SEEK_DATA/SEEK_HOLE), chunked with FastCDC, hashed and compressed.
   A small capture: opened by the walker thread and read by a thread pool
   (threadreader.py). A big one: by reader processes (readerpool.py), each sent batches
   of a directory's names with its fd as soon as the walk has listed it, so they read
   while the walk goes on. Big files (chunker.py) are opened as soon as the walk sees
   them and read in fixed blocks once the walk is over (bigfiles.py). A file whose
   size/mtime/ctime change while being read is read again up to 3 times, then kept with a
   warning.
A sync point comes first (fs/syncpoint.py): a file's ctime is recorded only where it
vouches for the bytes read, so "same inode and ctime" lets the next capture skip it.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import time
from array import array
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING

from .. import gcpause, tuning
from ..fs import fsutil, statepath
from ..fs.prefetch import MetadataPrefetch
from ..fs.syncpoint import SyncPoint, sync_point
from ..model import StateInvalid
from ..progress import Progress
from ..repository.backend import LocalBackend
from ..repository.manifest import Entry
from ..repository.packwriter import TinyPacker
from ..repository.repository import Repository
from .bigfiles import BigFiles
from .messages import REQUEST_FILES, REQUEST_NAME_BYTES
from .parent import ParentCursor
from .threadreader import ThreadReader
from .tree import EncodedTree
from .walk import Walker

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
        self._walking = False
        self._root_fd = -1
        self.root_dev = 0
        # the walk's pace: (entries, time.monotonic()) at the start of its current window;
        # past PREFETCH_COLD_US an entry, its metadata is warmed ahead of it (prefetch.py)
        self._pace = (0, 0.0)
        self._prefetch: MetadataPrefetch | None = None
        local = isinstance(repo.backend, LocalBackend)
        self._packs = TinyPacker(repo, tuning.TINY_PACK_LOCAL if local else tuning.TINY_PACK,
                                 one_stream=not local)
        # (index, entry) of the files whose packs are stored, a pack's at once
        self._packs.on_stored = self.tree.put_many
        self._bigs = BigFiles(self._packs, repo.config.block_size, progress, self._done,
                              self._drop, self.tree.path)
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
            root_fd = statepath.open_path(self.root)
        except OSError as e:
            raise StateInvalid(f"state directory {self.root} is missing or not a "
                               f"directory (symlinks are refused): {e.strerror}") from e
        self._root_fd = root_fd
        try:
            root_dev = self.root_dev = os.fstat(root_fd).st_dev
            if self.parent.dev != root_dev:  # its inodes were another filesystem's
                self.parent.vouched = False
            # From here on every change to a file moves its ctime (see syncpoint.py).
            self.sync = sync_point(root_fd)
            # pass 1 (tree.py); once reader processes run (a big capture), they read each
            # walked directory's files while the walk goes on (_walked)
            walker = Walker(self.repo, self.tree, self.parent, self.progress, self.warnings,
                            root_dev, statepath.mount_roots(self.root), self._start_pool,
                            self._walked, self._bigs.walked)
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
            self._bigs.go()
            # Every object the parent names was made durable by its commit.
            self.repo.durable |= self.parent.finish()
            self.progress.total = walker.total
            self.progress.sized = True
            self.progress.add(walker.reused)
            prog = self.progress
            self._packs.remaining = lambda: prog.total - prog.done
            self._read_files(root_fd)
            self._packs.finish()
            self.stored_bytes += self._packs.stored_bytes
        finally:
            self._bigs.end()
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
                self._prefetch = MetadataPrefetch(self._root_fd, self.root_dev)
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

    def _end_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None

    def _read_files(self, root_fd: int) -> None:
        self._read_small(root_fd)
        self._bigs.wait()
        self.stored_bytes += self._bigs.stored_bytes

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
            reader = ThreadReader(self.repo, self._packs, self.progress, self._done,
                                  self._drop)
            reader.run(self._open_files(root_fd, todo))
            self.stored_bytes += reader.stored_bytes
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
        pool.sinks = Sinks(self._done, self._drop, self.progress.add,
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

    def _drop(self, idx: int, why: str) -> None:
        path = self.tree.drop(idx)
        with self._lock:
            self.warnings.append(f"{fsutil.shown(path)}: {why}; not captured")

    def _drop_all(self, idxs: array[int], why: str) -> None:
        for i in idxs:
            self._drop(i, why)
