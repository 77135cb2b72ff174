"""The tree writer: a snapshot's entries created in a directory of our own, each file
written by filewriter.py (every chunk checked against its id while reading).

Used by the rebuild (the whole tree, in staging), by the patch (its new entries and
subtrees, in the patch's work directory) and by the restore worker processes (their share
of files). Files are written by a thread pool, or by worker processes (writerpool.py) for
the files a big restore writes from scratch. A file already identical in the current tree
(proven as reuse.py says) is linked or copied instead of being rewritten (filewriter.py).
Directories' metadata is applied last, children first (metadata.py).
"""
from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import msgspec

from .. import tuning
from ..fs import fsutil
from ..inflight import prune
from ..progress import Progress
from ..repository.lazyentries import LazyEntries
from ..repository.manifest import DIR, FILE, HARDLINK, Entry, encode_entry
from ..repository.repository import Repository
from .filewriter import FileWriter
from .metadata import finish_dirs, make_special
from .reuse import Candidate

if TYPE_CHECKING:  # the writer processes' module is imported only by a restore that starts them
    from .freshplan import FreshPlan
    from .shares import Files
    from .writerpool import RestorePool


class TreeWriter(FileWriter):
    def __init__(self, repo: Repository, snapshot_id: int, entries: Sequence[Entry],
                 progress: Progress, linked: set[bytes] | None = None) -> None:
        """linked: the hard links' targets, when the caller finds them (this set is kept:
        filled in later, it is the one the record skips); else found here."""
        if linked is None:
            linked = {e.target for e in entries if e.kind == HARDLINK}
        self.linked = linked
        super().__init__(repo, snapshot_id, progress, self.linked)
        self.entries = entries
        # False: the directory a build fills keeps its own metadata for the caller to give
        # (the rebuild's staging root, once no change may keep a recorded ctime: restorer.py)
        self.root_meta = True

    def build(self, st_fd: int, cur_fd: int | None, entries: Sequence[Entry],
              linked: set[bytes], procs: RestorePool | None = None) -> None:
        """Build `entries` in st_fd, reusing what is proven identical in cur_fd; with
        worker processes, the files written from scratch are theirs (see build_fresh)."""
        from .shares import Files, first_pack  # a rebuild's split; a patch never needs it

        plain = Files()  # the files left to `procs`
        sem = threading.BoundedSemaphore(tuning.RESTORE_MAX_INFLIGHT)
        futures: list[Future[None]] = []
        failed = threading.Event()
        # stack of (path, staging fd, current-tree fd or None) for the open directories
        cur_dup = os.dup(cur_fd) if cur_fd is not None else None
        stack: list[tuple[bytes, int, int | None]] = [(b"", os.dup(st_fd), cur_dup)]
        dirs: list[Entry] = [entries[0]]
        srcs = fsutil.Beneath(st_fd)  # hard links' targets, never through a symlink

        def job(dfd: int | None, name: bytes, e: Entry, fd: int | None, cand: Candidate,
                proven: bool = False) -> None:
            try:
                if not failed.is_set():
                    self._file(dfd, name, e, fd, cand, proven)
            except BaseException:
                failed.set()
                raise
            finally:
                if dfd is not None:
                    os.close(dfd)
                if cand is not None:
                    os.close(cand[0])
                sem.release()

        def pop() -> None:
            _p, a, b = stack.pop()
            os.close(a)
            if b is not None:
                os.close(b)

        if cur_fd is None and procs is None:  # every file is written: read ahead
            self.prefetch(entries)
        with ThreadPoolExecutor(tuning.RESTORE_THREADS, thread_name_prefix="restore") as pool:
            try:
                for idx, e in enumerate(entries):
                    if not idx:
                        continue  # the root: st_fd itself
                    if failed.is_set():
                        break
                    parent, _, name = e.path.rpartition(b"/")
                    while stack[-1][0] != parent:
                        pop()
                    _p, dfd, cfd = stack[-1]
                    if e.kind == DIR:
                        os.mkdir(name, 0o700, dir_fd=dfd)
                        nfd = os.open(name, fsutil.DIR_FLAGS, dir_fd=dfd)
                        ncfd = None
                        if cfd is not None:
                            try:  # a tenant's symlink here fails with ELOOP/ENOTDIR: no reuse
                                ncfd = os.open(name, fsutil.DIR_FLAGS, dir_fd=cfd)
                            except OSError:
                                ncfd = None
                        stack.append((e.path, nfd, ncfd))
                        dirs.append(e)
                    elif e.kind == FILE:
                        fd = cand = None
                        proven = False
                        if e.path in linked:  # must exist before its links are made
                            fd = os.open(name, fsutil.CREATE_FLAGS, self.create_mode(e), dir_fd=dfd)
                        elif cfd is not None:
                            cand = self.check.candidate(cfd, name, e)
                            # Proven identical without reading: link it right here, cheaply
                            # (a live restore's copy goes to the pool, below).
                            proven = cand is not None and self.check.trusted(cand[1], e)
                            if cand is not None and proven and not self.copy_reused:
                                try:
                                    if self._link_reused(cand, dfd, name, e):
                                        continue
                                finally:
                                    os.close(cand[0])
                                cand = None
                        if cand is None and fd is None and procs is not None:
                            plain.add(idx, e.size + tuning.FILE_COST, first_pack(e))
                            continue
                        sem.acquire()
                        if cand is None and fd is None:  # plain write: create it here
                            fd = os.open(name, fsutil.CREATE_FLAGS, self.create_mode(e), dir_fd=dfd)
                        # a hash check may still need the directory (to link or create)
                        jdfd = os.dup(dfd) if fd is None else None
                        futures = prune(futures)
                        futures.append(pool.submit(job, jdfd, name, e, fd, cand,
                                                   cand is not None and proven))
                    elif e.kind == HARDLINK:
                        tdfd, tname = srcs.entry(e.target)
                        os.link(tname, name, src_dir_fd=tdfd, dst_dir_fd=dfd,
                                follow_symlinks=False)
                    else:
                        make_special(dfd, name, e)
                    self.progress.poll()
            except BaseException:
                failed.set()
                raise
            finally:
                srcs.close()
                while stack:
                    pop()
                for f in futures:
                    f.exception()
                self.packs.close()
        for f in futures:
            f.result()
        if procs is not None:
            self._write_shares(st_fd, procs, plain)
        finish_dirs(st_fd, dirs, root=self.root_meta)

    def build_fresh(self, st_fd: int, pool: RestorePool, plan: FreshPlan | None = None) -> None:
        """A new tree, nothing to reuse: the files are the worker processes' (each its
        contiguous share, created beneath the staging fd), sent their shares first (after
        the big files' directories and thread, below), so their packs are on the way (S3:
        the first GETs) while the directories are made here; then the writers write while
        a thread of ours makes the symlinks and device nodes; hard links once their
        targets exist (as the writers report them written, by this thread, idle
        meanwhile: 2,950 links of the 300k tree made after the writers ended took ~0.35 s
        at load 4, the restore's last); never through a symlink. The writers start
        writing once the directories exist: the special entries (a rootfs's 650
        symlinks, ~30-45 ms) are no longer made before them.

        From a local repository the big files (fixed blocks: disk images...) are written
        here, by the parent, whose process is otherwise idle while the writers write: their
        blocks go on threads of their own on every core, as in a writer, while the writers
        share the small files. In a writer's share a big file was one file that took 0.5-1
        s, during which its writer could not hand over the rest of its share (the rootfs +
        300 MiB image: the image's writer had 711 small files left after it, the other
        writer waited ~0.5 s with nothing to do). On S3 the writers read their shares'
        packs ahead (coalesced GETs), which the parent does not: there they stay theirs."""
        from .freshplan import FreshPlan

        if plan is None:  # not made on the tree check's pass (restorer.py): now
            plan = FreshPlan(self.repo, self.entries[0])
            for idx, e in enumerate(self.entries):
                if idx:  # the root: st_fd itself
                    plan.visit(idx, e)
                self.progress.poll()
        dirs, files, links, specials, big = (plan.dirs, plan.files, plan.links,
                                             plan.specials, plan.big)
        # every directory on the way opened without following a symlink (fsutil.Beneath)
        at, srcs = fsutil.Beneath(st_fd), fsutil.Beneath(st_fd)
        bigs: _Background | None = None
        try:
            # The big files first, the cold restore's longest path (the rootfs + 300 MiB
            # image: the image ended ~90 ms after the writers): the directories they are
            # in, their thread, then the writers' shares and the other directories.
            early = {p for idx in big for p in _parents(self.entries[idx].path)}
            for e in dirs[1:]:  # parents first, as in the manifest
                if e.path in early:
                    dfd, name = at.entry(e.path)
                    os.mkdir(name, 0o700, dir_fd=dfd)
            if big:
                bigs = _Background(st_fd, self.entries, big, self._write_big, "restore-big")
            pool.offer(files.split(len(pool.workers)), self._new_owner, self._raw)
            for e in dirs[1:]:
                if e.path not in early:
                    dfd, name = at.entry(e.path)
                    os.mkdir(name, 0o700, dir_fd=dfd)
                    self.progress.poll()
            at.close()

            maker = _Background(st_fd, self.entries, specials, make_special,
                                "restore-specials")
            ats = fsutil.Beneath(st_fd)

            def link_to(target: Entry) -> None:  # target just written
                for e in links.pop(target.path, ()):
                    dfd, name = ats.entry(e.path)
                    tdfd, tname = srcs.entry(e.target)
                    os.link(tname, name, src_dir_fd=tdfd, dst_dir_fd=dfd,
                            follow_symlinks=False)

            try:
                self._write_shares(st_fd, pool, files, link_to if links else None)
            except BaseException:
                maker.stop()
                raise
            finally:
                ats.close()
                maker.join()
            if bigs is not None:
                running, bigs = bigs, None
                running.join()
            for e in (e for es in links.values() for e in es):  # to the big files
                dfd, name = at.entry(e.path)
                tdfd, tname = srcs.entry(e.target)
                os.link(tname, name, src_dir_fd=tdfd, dst_dir_fd=dfd, follow_symlinks=False)
        except BaseException:
            if bigs is not None:
                bigs.stop()
            raise
        finally:
            try:
                if bigs is not None:  # failed: stopped, its own error not raised
                    bigs.join()
            finally:
                at.close()
                srcs.close()
        finish_dirs(st_fd, dirs, root=self.root_meta)

    def _write_shares(self, st_fd: int, pool: RestorePool, files: Files,
                      on_written: Callable[[Entry], None] | None = None) -> None:
        """The worker processes create and write these files (index, cost) under st_fd
        (their shares sent already, or now); on_written(entry) as each is reported done."""

        def done(idx: int, ino: int, ctime: int) -> None:
            e = self.entries[idx]
            with self._lock:
                self.written.add(e, ino, ctime)
                self.files_written += 1
            if on_written is not None:
                on_written(e)

        try:
            if not pool.offered:
                pool.offer(files.split(len(pool.workers)), self._new_owner, self._raw)
            pool.run(st_fd, self.progress.add, self.progress.check, done)
            written = pool.bytes_written
            with self._lock:  # a new state's big file may be adding its own (build_fresh)
                self.bytes_written += written
        finally:
            pool.close(kill=True)

    def _raw(self, idx: int) -> msgspec.Raw:
        """Entry idx's msgpack, for a worker process."""
        if isinstance(self.entries, LazyEntries):
            return self.entries.raw(idx)
        return msgspec.Raw(encode_entry(self.entries[idx]))

    def build_into(self, fd: int, entries: Sequence[Entry], linked: set[bytes]) -> None:
        """Build a tree (entries rooted at b"") in the empty directory fd: a new subtree of a
        patch restore."""
        self.build(fd, None, entries, linked)

    def _write_big(self, dfd: int, name: bytes, e: Entry) -> None:
        """A big file of a new tree, by the parent (build_fresh): created in dfd, written."""
        self._file(None, b"", e, os.open(name, fsutil.CREATE_FLAGS, self.create_mode(e),
                                         dir_fd=dfd), None)


class _Background:
    """Makes entries of a new tree (make(dfd, name, entry) each) on a thread of its own,
    beneath the staging fd (never through a symlink), while the writer processes write
    the files; join() raises what it failed with."""

    def __init__(self, st_fd: int, entries: Sequence[Entry], indexes: array[int],
                 make: Callable[[int, bytes, Entry], None], name: str) -> None:
        self._entries, self._indexes, self._make = entries, indexes, make
        self._fd = os.dup(st_fd)  # its own: the caller closes st_fd after join()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        at = fsutil.Beneath(self._fd)
        try:
            for idx in self._indexes:
                if self._stop.is_set():
                    return
                e = self._entries[idx]
                self._make(*at.entry(e.path), e)
        except BaseException as err:
            self._error = err
        finally:
            at.close()

    def stop(self) -> None:
        """The restore failed: stop at the next entry."""
        self._stop.set()

    def join(self) -> None:
        self._thread.join()
        os.close(self._fd)
        if self._error is not None and not self._stop.is_set():  # else the files' error
            raise self._error


def _parents(path: bytes) -> list[bytes]:
    """The directories a path is in, below the root: b"a/b/c" -> [b"a", b"a/b"]."""
    parts = path.split(b"/")[:-1]
    return [b"/".join(parts[:i + 1]) for i in range(len(parts))]
