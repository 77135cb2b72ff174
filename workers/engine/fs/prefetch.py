"""Warming a cold walk's metadata: threads that list the state's directories ahead of the
walk (a capture's, capture/walk.py; a patch restore's, restore/patchplan.py: both go depth
first, names sorted) and lstat a few entries of each, so that the inode-table and directory
blocks the walk will need are read from disk several at a time, not one after another.

Why: on a cold page cache the walk is one thread waiting on one metadata read at a time,
and the capture's data reads (the readers' WILLNEED prefetch, a big file's O_DIRECT blocks)
fill the disk's queue in front of each of them: the bench's rootfs walk took 1.2-1.9 s that
way against 0.24-0.28 s alone. An lstat pulls in the inode's table block and the
filesystem's read-ahead of its neighbours (ext4: inode_readahead_blks), so one lstat in
every tuning.PREFETCH_STAT_EVERY entries is enough; listing a directory reads its blocks.

It is started only once the walk is seen to be slow (archiver.py, patchplan.py): on a
warm cache it would only take the GIL from the walk. It reads metadata only, through
directory descriptors opened beneath the root with O_NOFOLLOW | O_DIRECTORY (never a
symlink followed, never a file, device or FIFO opened), stays on the root's filesystem,
holds at most tuning.PREFETCH_FDS descriptors (deeper or wider parts are simply not
warmed), and ignores every error: the walk itself decides what is captured or restored.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque

from .. import tuning
from . import fsutil


class MetadataPrefetch:
    def __init__(self, root_fd: int, root_dev: int) -> None:
        self._dev = root_dev
        self._cond = threading.Condition()
        self._todo: deque[int] = deque()  # open directory fds still to list
        self._open = 0  # fds held: queued or being listed
        self._busy = 0  # threads listing a directory
        self._stopped = False
        self._threads: list[threading.Thread] = []
        with contextlib.suppress(OSError):
            self._push(os.open(".", fsutil.DIR_FLAGS, dir_fd=root_fd))

    def start(self) -> None:
        for i in range(tuning.PREFETCH_THREADS):
            t = threading.Thread(target=self._work, name=f"prefetch-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """End the threads (each finishes the directory it lists) and close what is left."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        while self._todo:
            os.close(self._todo.popleft())

    def _push(self, fd: int) -> None:
        self._todo.append(fd)
        self._open += 1

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._todo and not self._stopped and self._busy:
                    self._cond.wait()
                if self._stopped or not self._todo:
                    self._stopped = True  # every directory listed
                    self._cond.notify_all()
                    return
                fd = self._todo.pop()  # the last pushed: next in walk order
                self._busy += 1
            try:
                self._list(fd)
            except OSError:
                pass  # best effort: the walk reports what matters
            finally:
                os.close(fd)
                with self._cond:
                    self._busy -= 1
                    self._open -= 1
                    self._cond.notify_all()

    def _list(self, fd: int) -> None:
        every = tuning.PREFETCH_STAT_EVERY
        subdirs: list[bytes] = []
        with os.scandir(fd) as it:
            for n, entry in enumerate(it):
                if self._stopped:
                    return
                if entry.is_dir(follow_symlinks=False):  # d_type: no stat
                    subdirs.append(os.fsencode(entry.name))
                elif n % every == 0:
                    with contextlib.suppress(OSError):
                        entry.stat(follow_symlinks=False)
        # In the walk's order (capture/walk.py: sorted names, depth first): the todo is a stack
        # and the first name goes on top, so the threads list what the walk needs next
        # (breadth first, they warmed the whole top of the tree while it waited below).
        subs: list[int] = []
        try:
            for name in sorted(subdirs):
                with self._cond:
                    if self._stopped or self._open >= tuning.PREFETCH_FDS:
                        break  # not warmed: the walk reads them as it would anyway
                    self._open += 1  # counted from here, pushed (or closed) below
                try:
                    sub = os.open(name, fsutil.DIR_FLAGS, dir_fd=fd)
                    if os.fstat(sub).st_dev != self._dev:  # a mount point: not ours
                        os.close(sub)
                        sub = -1
                except OSError:
                    sub = -1
                if sub < 0:
                    with self._cond:
                        self._open -= 1
                    continue
                subs.append(sub)
        finally:
            with self._cond:
                self._todo.extend(reversed(subs))
                self._cond.notify_all()
