"""What a patch restore must change: the current tree walked beside the manifest.

The walk goes through directory fds (O_NOFOLLOW), never following a symlink and never
entering another filesystem. An entry is kept only when it is proven identical to the
snapshot's: type, mode, owner, mtime, symlink target, device number, xattrs, hard-link
group, and for regular files the one check the rebuild uses too (reuse.py: size, xattrs,
content proven without reading, from a trusted inode, or by hashing). Everything else becomes an
operation: replace or create the entry (a directory with its whole subtree), or delete an
entry the snapshot does not have. The walk gives up (returns None) as soon as the changes
exceed the limit, or on anything a patch cannot express safely (a mount point, a hard
link crossing a replaced directory): the staging rebuild handles those.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec

from .. import tuning
from ..fs import fsutil
from ..fs.prefetch import MetadataPrefetch
from ..repository.manifest import DIR, FILE, HARDLINK, SYMLINK, Entry
from .leases import LiveGuard
from .reuse import ReuseCheck

OpKind = Literal["r", "c", "d"]
REPLACE: Final = "r"
CREATE: Final = "c"
DELETE: Final = "d"


class Op(msgspec.Struct, array_like=True):
    kind: OpKind  # REPLACE, CREATE or DELETE
    path: bytes
    ino: int = 0  # inode of the new entry, once prepared: undo moves back only that one


class DirState(msgspec.Struct, array_like=True):
    """A kept directory's metadata before the patch (to undo it) ."""

    path: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: list[tuple[str, bytes]]


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    # per op: the new entry, then (for a directory) its subtree re-rooted at b""
    news: list[list[Entry]] = field(default_factory=list)
    dirs: dict[bytes, DirState] = field(default_factory=dict)  # kept directories, as found
    manifest_dirs: dict[bytes, Entry] = field(default_factory=dict)
    fix_dirs: list[bytes] = field(default_factory=list)  # kept, mode/owner/xattrs differ
    kept_files: list[tuple[Entry, int, int]] = field(default_factory=list)  # entry, ino, ctime
    reused: int = 0  # regular files kept as they are
    reused_bytes: int = 0
    changed: int = 0  # entries written or removed, the measure of the patch's cost


    def new_files(self) -> list[Entry]:
        """The regular files the ops put in place, with their paths in the state."""
        out: list[Entry] = []
        for op, news in zip(self.ops, self.news, strict=True):
            for e in news:
                if e.kind == FILE:
                    path = op.path + b"/" + e.path if e.path and news[0].kind == DIR else op.path
                    out.append(msgspec.structs.replace(e, path=path))
        return out


class _GiveUp(Exception):
    pass


def _reroot(e: Entry, prefix: bytes) -> Entry:
    n = len(prefix) + 1
    target = e.target[n:] if e.kind == HARDLINK else e.target
    return msgspec.structs.replace(e, path=e.path[n:], target=target)


def _lstat(name: bytes, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _same_meta(st: os.stat_result, e: Entry) -> bool:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (e.mode, e.uid, e.gid,
                                                                  e.mtime_ns)


class Planner:
    def __init__(self, entries: Sequence[Entry], limit: int, mounts: set[tuple[int, int]],
                 check: ReuseCheck, guard: LiveGuard | None = None,
                 poll: Callable[[], None] | None = None) -> None:
        self.entries = entries
        # Progress.stop_asked, every tuning.POLL_ENTRIES entries: a cancelled restore stops
        # planning (an lstat or more an entry: a million entries, seconds) before it changes
        # a thing
        self.poll = poll
        self.limit = limit
        self.mounts = mounts  # (dev, ino) of mount points: never moved nor entered
        self.check = check  # is a current regular file the snapshot's? (reuse.py)
        # A live patch's (leases.py): every kept entry watched, every kept file leased
        self.guard = guard
        self.group: dict[bytes, int] = {}  # hard-link primary -> links in its group
        for e in entries:
            if e.kind == HARDLINK:
                self.group[e.target] = self.group.get(e.target, 1) + 1
        self.plan = Plan()
        self._ino: dict[bytes, int] = {}  # kept hard-link primaries: their current inode
        self._replaced: set[bytes] = set()  # paths whose new entry is prepared by an op

    def run(self, root_fd: int) -> Plan | None:
        root = self.entries[0]
        st = os.fstat(root_fd)
        self._root_dev = st.st_dev
        stack: list[tuple[bytes, int, set[bytes]]] = []
        # On a cold cache the walk waits on one metadata read at a time (the bench rootfs's
        # 6,000 entries: 0.35-1.9 s under load): past PREFETCH_COLD_US an entry, threads
        # list the directories ahead of it, several reads at once (fs/prefetch.py).
        prefetch: MetadataPrefetch | None = None
        paced = (1, time.monotonic())
        try:
            self._enter(root, os.dup(root_fd), st, stack)
            i, n = 1, len(self.entries)
            polled = 0
            while i < n:
                if i - polled >= tuning.POLL_ENTRIES and self.poll is not None:
                    self.poll()
                    polled = i
                if prefetch is None and i - paced[0] >= tuning.PREFETCH_WINDOW:
                    now = time.monotonic()
                    if now - paced[1] > (i - paced[0]) * tuning.PREFETCH_COLD_US * 1e-6:
                        prefetch = MetadataPrefetch(root_fd, self._root_dev)
                        prefetch.start()
                    paced = (i, now)
                e = self.entries[i]
                parent, _, name = e.path.rpartition(b"/")
                while stack[-1][0] != parent:
                    self._leave(stack)
                _path, dfd, names = stack[-1]
                names.discard(name)
                if self.guard is not None:
                    self.guard.expect(parent, name)
                i = self._visit(i, e, name, dfd, stack)
            while stack:
                self._leave(stack)
        except _GiveUp:
            return None
        finally:
            if prefetch is not None:
                prefetch.stop()
            for _p, fd, _n in stack:
                os.close(fd)
        return self.plan

    def _enter(self, e: Entry, fd: int, st: os.stat_result,
               stack: list[tuple[bytes, int, set[bytes]]]) -> None:
        if st.st_dev != self._root_dev or (st.st_dev, st.st_ino) in self.mounts:
            os.close(fd)
            raise _GiveUp  # a mount inside the state: the staging path leaves it alone
        try:
            xattrs = fsutil.read_xattrs(fd)
            names = set(fsutil.iter_names(fd))
        except BaseException:
            os.close(fd)
            raise
        if self.guard is not None and not self.guard.watch_dir(e.path, fd, st):
            os.close(fd)
            raise _GiveUp  # more than a live patch can watch: rebuilt, copied
        self.plan.dirs[e.path] = DirState(e.path, st.st_mode, st.st_uid, st.st_gid,
                                          st.st_mtime_ns, xattrs)
        self.plan.manifest_dirs[e.path] = e
        if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, xattrs) != (
                e.mode, e.uid, e.gid, e.mtime_ns, e.xattrs):
            self.plan.fix_dirs.append(e.path)
        stack.append((e.path, fd, names))

    def _leave(self, stack: list[tuple[bytes, int, set[bytes]]]) -> None:
        path, fd, names = stack[-1]
        for name in sorted(names):  # in the current tree, not in the snapshot
            st = _lstat(name, fd)
            if st is not None and stat.S_ISDIR(st.st_mode) and (
                    st.st_dev != self._root_dev or (st.st_dev, st.st_ino) in self.mounts):
                raise _GiveUp  # a mount point: never moved, the staging path leaves it
            self._op(DELETE, path + b"/" + name if path else name, [], 1)
        stack.pop()
        os.close(fd)

    def _op(self, kind: OpKind, path: bytes, news: list[Entry], cost: int) -> None:
        self.plan.ops.append(Op(kind, path))
        self.plan.news.append(news)
        self.plan.changed += cost
        if self.plan.changed > self.limit:
            raise _GiveUp
        if news:
            self._replaced.add(path)

    def _visit(self, i: int, e: Entry, name: bytes, dfd: int,
               stack: list[tuple[bytes, int, set[bytes]]]) -> int:
        """Decide entry i (kept, or an op); the index of the next entry to visit."""
        st = _lstat(name, dfd)
        kind: OpKind = CREATE if st is None else REPLACE
        if e.kind == DIR:
            if st is not None and stat.S_ISDIR(st.st_mode):
                try:
                    fd = os.open(name, fsutil.DIR_FLAGS, dir_fd=dfd)
                except OSError:
                    fd = -1  # replaced meanwhile by a symlink or removed: rebuild it
                if fd >= 0:
                    self._enter(e, fd, os.fstat(fd), stack)
                    return i + 1
            return self._subtree(i, e, kind)
        try:
            if st is not None and self._keep(e, st, name, dfd):
                return i + 1
        except FileNotFoundError:  # vanished since its lstat: written as a new entry
            kind = CREATE
        if e.kind == HARDLINK and e.target not in self._replaced and e.target not in self._ino:
            raise _GiveUp  # its primary lies in a replaced subtree
        self._op(kind, e.path, [e], 1)
        return i + 1

    def _subtree(self, i: int, e: Entry, kind: OpKind) -> int:
        prefix = e.path + b"/"
        j = i + 1
        while j < len(self.entries) and self.entries[j].path.startswith(prefix):
            j += 1
        sub = [msgspec.structs.replace(e, path=b"")]
        for s in self.entries[i + 1:j]:
            if s.kind == HARDLINK and not s.target.startswith(prefix):
                raise _GiveUp  # a hard link out of the new subtree
            sub.append(_reroot(s, e.path))
        for s in self.entries[j:]:
            if s.kind == HARDLINK and s.target.startswith(prefix):
                raise _GiveUp  # a hard link into the new subtree
        self._op(kind, e.path, sub, j - i)
        return j

    def _keep(self, e: Entry, st: os.stat_result, name: bytes, dfd: int) -> bool:
        if e.kind == HARDLINK:
            return (stat.S_ISREG(st.st_mode) and e.target in self._ino
                    and st.st_ino == self._ino[e.target])
        if e.kind != FILE:
            return self._keep_special(e, st, name, dfd)
        # a regular file: the same check as the rebuild's (reuse.py), but a kept hard-link
        # group's first name has as many links as the group has names; trusted_in_place
        # compares the lstat's type, links, size, mode, owner and mtime itself
        links = self.group.get(e.path, 1)
        ok = self.check.trusted_in_place(st, e, links)
        if not ok:  # not known from its lstat: open it (never following) and prove it
            if st.st_size != e.size or not _same_meta(st, e):
                return False  # cheap, before opening it
            cand = self.check.candidate(dfd, name, e, links=links)
            if cand is None:
                return False
            try:
                ok = self.check.is_snapshots(cand, e)
            finally:
                os.close(cand[0])
            st = cand[1]
        if ok and self.guard is not None and not self.guard.lease(dfd, name, st):
            raise _GiveUp  # open for writing somewhere (or not leasable): rebuilt, copied
        if ok:
            self.plan.reused += 1
            self.plan.reused_bytes += e.size
            if e.path in self.group:
                self._ino[e.path] = st.st_ino
            else:
                self.plan.kept_files.append((e, st.st_ino, st.st_ctime_ns))
        return ok

    def _keep_special(self, e: Entry, st: os.stat_result, name: bytes, dfd: int) -> bool:
        """A directory's other entries: symlink, fifo, device node, socket."""
        if not _same_meta(st, e):
            return False
        if e.kind == SYMLINK:
            same = os.fsencode(os.readlink(name, dir_fd=dfd)) == e.target
        else:
            same = st.st_rdev == e.rdev
        same = same and fsutil.read_xattrs(fsutil.proc_path(dfd, name)) == e.xattrs
        if same and self.guard is not None:
            self.guard.watch_other(e.path.rpartition(b"/")[0], name, st)
        return same
