"""Directory restore.

The new tree is built in a staging directory beside the state path
(`<parent>/.<base>.restore-<snapshot_id>`, same filesystem, mode 0700 while building),
every chunk is checked against its id while reading, metadata is applied (files: chown,
then chmod so setuid/setgid survive, then xattrs so security.capability survives, then
times; directories last, children first), one syncfs makes it durable, and
renameat2(RENAME_EXCHANGE) swaps it with the current tree atomically. The old tree, now
under the staging name, is removed. A crash at any point leaves either the old or the new
tree at the state path; everything named `.<base>.restore-*` is a leftover that
`cleanup()` removes (recover() and every restore call it first).

Where RENAME_EXCHANGE is not supported, a rename pair is used under a journal file
`.<base>.restore-journal` (naming the staging dir), written and fsynced before the first
rename: recovery rolls forward (staging -> state path) if the state path is missing.

Files already identical in the current tree are hard-linked into staging instead of being
rewritten: same relative path reached through O_NOFOLLOW directory fds only, a regular
file with one link, identical size/mode/owner/mtime/xattrs, and identical content proven
as reuse.py says. The fd that was checked is the one linked (linkat via /proc/self/fd), so
there is no race between check and link. Nothing outside the state path is ever opened,
and removing the old tree never descends into a mount inside it.

When few entries differ, the tree is patched in place instead (patcher.py, under an undo
journal). A big restore writes its files in worker processes (restorepool.py), and a
background syncfs keeps the final one, the durability point before the swap, short.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import fsutil
from .manifest import DIR, FILE, HARDLINK, Entry
from .metadata import make_special, set_dir_metadata
from .model import RestoreResult, StateInvalid
from .packcache import PackCache
from .patcher import Patcher
from .patchplan import Planner
from .progress import Progress
from .repository import Repository
from .reuse import Candidate, ReuseCheck
from .staging import Flusher, cleanup, split_state, swap, validate
from .statecache import StateCache, record_tree

if TYPE_CHECKING:
    from .restorepool import RestorePool

WORKERS = 4
PROCESS_THRESHOLD = 64 << 20  # bytes of files to restore
FILE_COST = 64 << 10  # a file's fixed cost in bytes, to split work between processes
MAX_INFLIGHT = 64
# A patch restore is used when at most max(PATCH_MIN, entries / PATCH_FRACTION) entries
# differ; beyond that, rebuilding in staging costs about the same and needs no undo.
PATCH_MIN = 16
PATCH_FRACTION = 5
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Restorer:
    def __init__(self, repo: Repository, snapshot_id: int, entries: list[Entry], state_path: str,
                 progress: Progress, pool: RestorePool | None = None, *,
                 patch: bool = True) -> None:
        self.pool = pool  # started early by the caller for a big restore into a new state
        self.patch = patch  # may a tree that differs little be patched in place?
        self.repo = repo
        self.sid = snapshot_id
        self.entries = entries
        self.parent_path, self.base = split_state(state_path)
        self.state_path = state_path
        self.progress = progress
        self.bytes_written = 0
        self.files_reused = 0
        self.files_written = 0
        self._lock = threading.Lock()
        self.linked = {e.target for e in entries if e.kind == HARDLINK}
        self.cache = StateCache(repo.backend, state_path)
        self.check = ReuseCheck(repo)
        self.packs = PackCache(repo, snapshot_id)
        # path -> (entry, ino, ctime) of each file as written: the trusted record's source
        self.written: dict[bytes, tuple[Entry, int, int]] = {}
        self.reused: list[Entry] = []  # current files linked into staging
        # owner of the files we create in staging, when known (chown is skipped for them)
        self._new_owner: tuple[int, int] | None = None

    def run(self) -> RestoreResult:
        validate(self.entries)
        self.progress.total = sum(e.size for e in self.entries if e.kind == FILE)
        try:
            parent_fd = os.open(self.parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StateInvalid(f"parent of the state path is unusable: {e}") from e
        try:
            cleanup(parent_fd, self.base, self.parent_path)
            self.check.known = self.cache.load()
            self.cache.forget()  # the tree is about to change: the record would be stale
            cur_fd: int | None
            try:
                cur_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                cur_fd = None
            except OSError as e:
                raise StateInvalid(f"state path is not a directory (or is a symlink): {e}") from e
            if cur_fd is not None and self.patch:
                try:
                    patched = self._patched(parent_fd, cur_fd)
                except BaseException:
                    os.close(cur_fd)
                    with contextlib.suppress(OSError):
                        cleanup(parent_fd, self.base, self.parent_path)
                    raise
                if patched:
                    os.close(cur_fd)
                    self.progress.finish()
                    return self._result()
            staging = b"." + self.base + b".restore-%d" % self.sid
            try:
                os.mkdir(staging, 0o700, dir_fd=parent_fd)
                st_fd = os.open(staging, fsutil.DIR_FLAGS, dir_fd=parent_fd)
                self.creating_in(st_fd)
                flusher = Flusher(self.parent_path, self.progress)
                pool, self.pool = self.pool, None
                if pool is None and self.progress.total >= PROCESS_THRESHOLD:
                    from .restorepool import start_pool  # only big restores pay its imports

                    pool = start_pool(self.repo, self.sid, self.state_path)
                try:
                    if pool is not None and cur_fd is None:
                        self._build_fresh(st_fd, pool)
                    else:
                        self._build(st_fd, cur_fd, self.entries, self.linked, pool)
                finally:
                    if pool is not None:
                        pool.close(kill=True)
                    flusher.stop()
                    os.close(st_fd)
                fsutil.syncfs(self.parent_path)
                swap(parent_fd, staging, self.base, cur_fd is not None, self.parent_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    cleanup(parent_fd, self.base, self.parent_path)
                raise
            finally:
                if cur_fd is not None:
                    os.close(cur_fd)
            # the old tree, now under the staging name
            fsutil.remove_tree(parent_fd, staging, fsutil.mount_roots(self.parent_path))
            digest = self.check.digest
            record = {p: (ino, ctime, digest(e)) for p, (e, ino, ctime) in self.written.items()
                      if p not in self.linked}
            # after the removal: unlinking old names changed the ctime of reused inodes
            new_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            try:
                record.update(record_tree(new_fd, self.reused, self.linked, self.check.digest))
            finally:
                os.close(new_fd)
            self.cache.save(record)
        finally:
            os.close(parent_fd)
        self.progress.finish()
        return self._result()

    @property
    def bytes_read(self) -> int:
        """Current-tree bytes read to prove files identical."""
        return self.check.bytes_read

    def _result(self) -> RestoreResult:
        return RestoreResult(snapshot_id=self.sid, bytes_written=self.bytes_written,
                             files_reused=self.files_reused, files_written=self.files_written)

    def creating_in(self, fd: int) -> None:
        """New files will be created in directory fd: under a setgid directory they take its
        group, else ours (and chown is skipped for files that should be ours)."""
        setgid = os.fstat(fd).st_mode & stat.S_ISGID
        self._new_owner = None if setgid else (os.geteuid(), os.getegid())

    def _patched(self, parent_fd: int, cur_fd: int) -> bool:
        """Patch the current tree in place when few entries differ (see patcher.py)."""
        limit = max(PATCH_MIN, len(self.entries) // PATCH_FRACTION)
        mounts = fsutil.mount_roots(os.path.join(self.parent_path, os.fsdecode(self.base)))
        plan = Planner(self.entries, limit, mounts, self.check.trusted,
                       self.check.same_content).run(cur_fd)
        if plan is None:
            return False
        self.progress.add(plan.reused_bytes)
        self.files_reused = plan.reused
        Patcher(self, plan, parent_fd, cur_fd).run()
        record = {e.path: (ino, ctime, self.check.digest(e)) for e, ino, ctime in plan.kept_files}
        record.update(record_tree(cur_fd, plan.new_files(), self.linked, self.check.digest))
        self.cache.save(record)
        return True

    # --- building the staging tree ------------------------------------------------------
    def _build(self, st_fd: int, cur_fd: int | None, entries: list[Entry],
               linked: set[bytes], procs: RestorePool | None = None) -> None:
        """Build `entries` in st_fd, reusing what is proven identical in cur_fd; with
        worker processes, the files written from scratch are theirs (see _build_fresh)."""
        plain: list[tuple[int, int]] = []  # (index, cost) of files left to `procs`
        sem = threading.BoundedSemaphore(MAX_INFLIGHT)
        futures: list[Future[None]] = []
        failed = threading.Event()
        # stack of (path, staging fd, current-tree fd or None) for the open directories
        cur_dup = os.dup(cur_fd) if cur_fd is not None else None
        stack: list[tuple[bytes, int, int | None]] = [(b"", os.dup(st_fd), cur_dup)]
        dirs: list[Entry] = [entries[0]]

        def job(dfd: int | None, name: bytes, e: Entry, fd: int | None, cand: Candidate) -> None:
            try:
                if not failed.is_set():
                    self._file(dfd, name, e, fd, cand)
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

        with ThreadPoolExecutor(WORKERS, thread_name_prefix="restore") as pool:
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
                        if e.path in linked:  # must exist before its links are made
                            fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
                        elif cfd is not None:
                            cand = self.check.candidate(cfd, name, e)
                            # Proven identical without reading: link it right here, cheaply.
                            if cand is not None and self.check.trusted(cand[1], e):
                                try:
                                    if self._link_reused(cand, dfd, name, e):
                                        continue
                                finally:
                                    os.close(cand[0])
                                cand = None
                        if cand is None and fd is None and procs is not None:
                            plain.append((idx, e.size + FILE_COST))
                            continue
                        sem.acquire()
                        if cand is None and fd is None:  # plain write: create it here
                            fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
                        # a hash check may still need the directory (to link or create)
                        jdfd = os.dup(dfd) if fd is None else None
                        futures.append(pool.submit(job, jdfd, name, e, fd, cand))
                    elif e.kind == HARDLINK:
                        os.link(e.target, name, src_dir_fd=st_fd, dst_dir_fd=dfd,
                                follow_symlinks=False)
                    else:
                        make_special(dfd, name, e)
                    self.progress.poll()
            except BaseException:
                failed.set()
                raise
            finally:
                while stack:
                    pop()
                for f in futures:
                    f.exception()
        for f in futures:
            f.result()
        if procs is not None:
            self._write_shares(st_fd, procs, plain)
        set_dir_metadata(st_fd, dirs)

    def _build_fresh(self, st_fd: int, pool: RestorePool) -> None:
        """A new tree, nothing to reuse: directories, symlinks and device nodes here, the
        files by the worker processes (each its contiguous share, created by path under
        the private staging fd), hard links once their targets exist."""
        dirs: list[Entry] = [self.entries[0]]
        files: list[tuple[int, int]] = []  # (index, cost)
        links: list[Entry] = []
        for idx, e in enumerate(self.entries):
            if not idx:
                continue  # the root: st_fd itself
            if e.kind == DIR:
                os.mkdir(e.path, 0o700, dir_fd=st_fd)
                dirs.append(e)
            elif e.kind == FILE:
                files.append((idx, e.size + FILE_COST))
            elif e.kind == HARDLINK:
                links.append(e)
            else:
                make_special(st_fd, e.path, e)
            self.progress.poll()

        self._write_shares(st_fd, pool, files)
        for e in links:
            os.link(e.target, e.path, src_dir_fd=st_fd, dst_dir_fd=st_fd,
                    follow_symlinks=False)
        set_dir_metadata(st_fd, dirs)

    def _write_shares(self, st_fd: int, pool: RestorePool, files: list[tuple[int, int]]) -> None:
        """The worker processes create and write these files (index, cost) under st_fd."""
        from .restorepool import split

        def done(idx: int, ino: int, ctime: int) -> None:
            e = self.entries[idx]
            self.written[e.path] = (e, ino, ctime)
            self.files_written += 1

        try:
            pool.run(st_fd, split(files, len(pool.workers)), self._new_owner,
                     self.progress.add, self.progress.check, done)
            self.bytes_written += pool.bytes_written
        finally:
            pool.close(kill=True)

    def assume_owner(self, owner: tuple[int, int] | None) -> None:
        """The owner new files get where they are created (a worker process's files)."""
        self._new_owner = owner

    def write_file(self, dfd: int | None, name: bytes, e: Entry, fd: int | None) -> None:
        """Create (in dfd) or fill (fd, closed here) one file of the snapshot, verified."""
        self._file(dfd, name, e, fd, None)

    def build_into(self, fd: int, entries: list[Entry], linked: set[bytes]) -> None:
        """Build a tree (entries rooted at b"") in the empty directory fd: a new subtree of a
        patch restore."""
        self._build(fd, None, entries, linked)

    def write_files(self, files: list[tuple[int, Entry]]) -> None:
        """Write the given new files (created, empty, open for writing) with the pool."""
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="restore") as pool:
            futures = [pool.submit(self._file, None, b"", e, fd, None) for fd, e in files]
        for f in futures:
            f.result()

    def _file(self, dfd: int | None, name: bytes, e: Entry, fd: int | None,
              cand: Candidate) -> None:
        if (cand is not None and dfd is not None and self.check.same_content(cand[0], e)
                and self._link_reused(cand, dfd, name, e)):
            return
        if fd is None:
            assert dfd is not None
            fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
        try:
            written = end = 0
            for cid, off in e.chunks:
                data = (self.packs.read(e) if e.pack
                        else self.repo.read_chunk_for(self.sid, cid))
                fsutil.write_full(fd, data, off)
                written += len(data)
                end = max(end, off + len(data))
                self.progress.add(len(data))
                self.progress.check()
            if end != e.size:  # a new file: its size is its data's end unless a hole ends it
                os.ftruncate(fd, e.size)
            if (e.uid, e.gid) != self._new_owner:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, stat.S_IMODE(e.mode))
            fsutil.write_xattrs(fd, e.xattrs)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            st = os.fstat(fd)  # final: renaming the tree's root does not touch its files
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_written += written
            self.files_written += 1
            self.written[e.path] = (e, st.st_ino, st.st_ctime_ns)

    def _link_reused(self, cand: tuple[int, os.stat_result], dfd: int, name: bytes,
                     e: Entry) -> bool:
        """Hard-link the very inode that was checked (via its fd) into staging."""
        fd, st = cand
        st2 = os.fstat(fd)
        if (st2.st_mtime_ns, st2.st_ctime_ns, st2.st_size) != (
                st.st_mtime_ns, st.st_ctime_ns, st.st_size):
            return False
        os.link(b"/proc/self/fd/%d" % fd, name, dst_dir_fd=dfd, follow_symlinks=True)
        self.progress.add(e.size)
        with self._lock:
            self.files_reused += 1
            self.reused.append(e)
        return True
