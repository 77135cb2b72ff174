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
either without reading (same inode and ctime as captured, or as the previous restore left
it: see statecache.py) or by chunking it and comparing chunk ids (mtime alone is forgeable
by the tenant). The fd that was checked is the one linked (linkat via /proc/self/fd), so
there is no race between check and link. Nothing outside the state path is ever opened,
and removing the old tree never descends into a mount inside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from . import fsutil
from .chunker import iter_chunks, make_cdc
from .manifest import DIR, FILE, HARDLINK, SYMLINK, Entry
from .model import RestoreResult, StateInvalid
from .packcache import PackCache
from .patcher import Patcher
from .patchplan import Planner
from .progress import Progress
from .repository import Repository
from .staging import cleanup, split_state, validate
from .statecache import Record, StateCache, content_digest, record_tree

Candidate = tuple[int, os.stat_result] | None

WORKERS = 4
MAX_INFLIGHT = 64
# A patch restore is used when at most max(PATCH_MIN, entries / PATCH_FRACTION) entries
# differ; beyond that, rebuilding in staging costs about the same and needs no undo.
PATCH_MIN = 16
PATCH_FRACTION = 5
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Restorer:
    def __init__(self, repo: Repository, snapshot_id: int, entries: list[Entry], state_path: str,
                 progress: Progress) -> None:
        self.repo = repo
        self.sid = snapshot_id
        self.entries = entries
        self.parent_path, self.base = split_state(state_path)
        self.progress = progress
        self.bytes_written = 0
        self.files_reused = 0
        self.files_written = 0
        self.bytes_read = 0  # current-tree bytes read to prove files identical
        self._lock = threading.Lock()
        self._local = threading.local()
        self.linked = {e.target for e in entries if e.kind == HARDLINK}
        self.cache = StateCache(repo.backend, state_path)
        self.known: Record = {}
        self._digests: dict[bytes, bytes] = {}
        self.packs = PackCache(repo, snapshot_id)
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
            self.known = self.cache.load()
            self.cache.forget()  # the tree is about to change: the record would be stale
            cur_fd: int | None
            try:
                cur_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                cur_fd = None
            except OSError as e:
                raise StateInvalid(f"state path is not a directory (or is a symlink): {e}") from e
            if cur_fd is not None:
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
                try:
                    self._build(st_fd, cur_fd, self.entries, self.linked)
                finally:
                    os.close(st_fd)
                fsutil.syncfs(self.parent_path)
                self._swap(parent_fd, staging, cur_fd is not None)
            except BaseException:
                with contextlib.suppress(OSError):
                    cleanup(parent_fd, self.base, self.parent_path)
                raise
            finally:
                if cur_fd is not None:
                    os.close(cur_fd)
            # the old tree, now under the staging name
            fsutil.remove_tree(parent_fd, staging, fsutil.mount_roots(self.parent_path))
            # after the removal: unlinking old names changed the ctime of reused inodes
            new_fd = os.open(self.base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
            try:
                self.cache.save(record_tree(new_fd, self.entries, self.linked, self.digest))
            finally:
                os.close(new_fd)
        finally:
            os.close(parent_fd)
        self.progress.finish()
        return self._result()

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
        plan = Planner(self.entries, limit, mounts, self._trusted,
                       self._same_content).run(cur_fd)
        if plan is None:
            return False
        self.progress.add(plan.reused_bytes)
        self.files_reused = plan.reused
        Patcher(self, plan, parent_fd, cur_fd).run()
        record = {e.path: (ino, ctime, self.digest(e)) for e, ino, ctime in plan.kept_files}
        record.update(record_tree(cur_fd, plan.new_files(), self.linked, self.digest))
        self.cache.save(record)
        return True

    def _swap(self, parent_fd: int, staging: bytes, exists: bool) -> None:
        try:
            if exists:
                fsutil.renameat2(parent_fd, staging, parent_fd, self.base, fsutil.RENAME_EXCHANGE)
            else:
                fsutil.renameat2(parent_fd, staging, parent_fd, self.base, fsutil.RENAME_NOREPLACE)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise
            self._swap_journaled(parent_fd, staging, exists)
        os.fsync(parent_fd)

    def _swap_journaled(self, parent_fd: int, staging: bytes, exists: bool) -> None:
        journal = b"." + self.base + b".restore-journal"
        old = b"." + self.base + b".restore-old"
        fsutil.create_durable(parent_fd, journal, staging)
        if exists:
            os.rename(self.base, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        os.rename(staging, self.base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        os.fsync(parent_fd)
        os.unlink(journal, dir_fd=parent_fd)
        if exists:  # the caller removes `staging`; the old tree is here
            fsutil.remove_tree(parent_fd, old, fsutil.mount_roots(self.parent_path))

    # --- building the staging tree ------------------------------------------------------
    def _build(self, st_fd: int, cur_fd: int | None, entries: list[Entry],
               linked: set[bytes]) -> None:
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
                for e in entries[1:]:
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
                            cand = self._candidate(cfd, name, e)
                            # Proven identical without reading: link it right here, cheaply.
                            if cand is not None and self._trusted(cand[1], e):
                                try:
                                    if self._link_reused(cand, dfd, name, e):
                                        continue
                                finally:
                                    os.close(cand[0])
                                cand = None
                        sem.acquire()
                        if cand is None and fd is None:  # plain write: create it here
                            fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
                        # only a hash check may need the directory later (to link or create)
                        jdfd = os.dup(dfd) if cand is not None else None
                        futures.append(pool.submit(job, jdfd, name, e, fd, cand))
                    elif e.kind == HARDLINK:
                        os.link(e.target, name, src_dir_fd=st_fd, dst_dir_fd=dfd,
                                follow_symlinks=False)
                    else:
                        self.special(dfd, name, e)
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
        # Directory metadata last, deepest first, so creating children cannot change it.
        for d in reversed(dirs):
            fd = fsutil.open_dir_beneath(st_fd, fsutil.split(d.path))
            try:
                os.chown(fd, d.uid, d.gid)
                os.chmod(fd, stat.S_IMODE(d.mode))
                fsutil.write_xattrs(fd, d.xattrs)
                os.utime(fd, ns=(d.mtime_ns, d.mtime_ns))
            finally:
                os.close(fd)

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

    def special(self, dfd: int, name: bytes, e: Entry) -> None:
        if e.kind == SYMLINK:
            os.symlink(e.target, name, dir_fd=dfd)
        elif e.kind == "p":
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            os.mknod(name, stat.S_IFMT(e.mode) | 0o600, e.rdev, dir_fd=dfd)
        os.chown(name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
        if e.kind != SYMLINK:
            # Safe to follow: we just created this fifo/device node in our private staging dir.
            os.chmod(name, stat.S_IMODE(e.mode), dir_fd=dfd)
        if e.xattrs:
            fsutil.write_xattrs(fsutil.proc_path(dfd, name), e.xattrs)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def _file(self, dfd: int | None, name: bytes, e: Entry, fd: int | None,
              cand: Candidate) -> None:
        if cand is not None and dfd is not None:
            if self._same_content(cand[0], e) and self._link_reused(cand, dfd, name, e):
                return
            fd = os.open(name, CREATE, 0o600, dir_fd=dfd)
        assert fd is not None
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
        finally:
            os.close(fd)
        with self._lock:
            self.bytes_written += written
            self.files_written += 1

    def _trusted(self, st: os.stat_result, e: Entry) -> bool:
        """Content known without reading it (see statecache): the captured inode itself,
        unchanged since, or the inode a previous restore wrote, unchanged since."""
        if (st.st_ino, st.st_ctime_ns) == (e.ino, e.ctime_ns):
            return True
        rec = self.known.get(e.path)
        return (rec is not None and rec[:2] == (st.st_ino, st.st_ctime_ns)
                and rec[2] == self.digest(e))

    def _same_content(self, fd: int, e: Entry) -> bool:
        cdc = getattr(self._local, "cdc", None)
        if cdc is None:
            cdc = self._local.cdc = make_cdc(self.repo)
        i = 0
        counter = [0]
        try:
            for data, off in iter_chunks(fd, e.size, cdc, self.repo.config.chunk_min, counter):
                if i >= len(e.chunks) or e.chunks[i] != (self.repo.chunk_id(data), off):
                    return False
                i += 1
            return i == len(e.chunks)
        finally:
            with self._lock:
                self.bytes_read += counter[0]

    def _candidate(self, cfd: int, name: bytes, e: Entry) -> Candidate:
        """The current file at the same path, opened without following symlinks, if it is a
        regular file with one link and exactly the entry's metadata (else None)."""
        try:
            fd = fsutil.open_noatime(name, cfd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size == e.size
                    and st.st_mode == e.mode and st.st_uid == e.uid and st.st_gid == e.gid
                    and st.st_mtime_ns == e.mtime_ns and fsutil.read_xattrs(fd) == e.xattrs):
                return fd, st
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

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
        return True

    def digest(self, e: Entry) -> bytes:
        d = self._digests.get(e.path)
        if d is None:
            d = self._digests[e.path] = content_digest(e)
        return d
