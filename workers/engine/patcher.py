"""Patch restore: a directory state that differs little from the snapshot is changed in
place, under an undo journal, instead of being rebuilt whole in staging.

Rebuilding costs a link and an unlink per unchanged entry, and removing the old tree;
when few entries differ (see patchplan.py) only those are touched:

1. prepare: every new entry (file, symlink, device node, hard link, or a directory with
   its whole subtree) is written into the work directory `<parent>/.<base>.restore-patch`
   (same filesystem, mode 0700) as `n<i>`, metadata included;
2. journal: the operations, each with the inode of its new entry, and the metadata of
   every kept directory as found, written to `journal` and fsynced. Before this point the
   state was never touched;
3. apply: renames only (the old entry to `o<i>`, the new one into its place), then the
   directories' mode, owner, xattrs and mtimes; syncfs; then the `committed` mark;
4. the work directory, holding the old entries, is removed.

undo() rolls back an uncommitted journal: in reverse order it moves back exactly the
entries whose inode the journal names, then puts the directories' metadata back. It runs
on every later restore, capture and recover(), and at once when a patch fails, so a failed
or killed restore leaves the previous state, and one killed after the mark leaves the
new one. Nothing is ever opened through a symlink: every directory is reached through
O_NOFOLLOW fds from the state root, and a name swapped by a tenant is moved, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import TYPE_CHECKING

import msgspec

from . import fsutil
from .manifest import DIR, FILE, HARDLINK, Entry
from .metadata import make_special
from .patchplan import CREATE, DELETE, DirState, Op, Plan

if TYPE_CHECKING:
    from .restorer import Restorer

JOURNAL = b"journal"
COMMITTED = b"committed"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Journal(msgspec.Struct, array_like=True):
    ops: list[Op]
    dirs: list[DirState]  # parents first


def work_name(base: bytes) -> bytes:
    return b"." + base + b".restore-patch"


def _new(i: int) -> bytes:
    return b"n%d" % i


def _old(i: int) -> bytes:
    return b"o%d" % i


def _move_in(src_dir: int, src: bytes, dst_dir: int, dst: bytes) -> None:
    """Rename, never replacing an entry at dst (renameat2 NOREPLACE; on a filesystem without
    it, a plain rename after checking dst is free: the server is stopped meanwhile)."""
    try:
        fsutil.renameat2(src_dir, src, dst_dir, dst, fsutil.RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        if _exists(dst, dst_dir):
            raise FileExistsError(errno.EEXIST, "entry appeared during the restore", dst) from e
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def _exists(name: bytes, dfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class _Dirs:
    """Open directory fds of the state tree by relative path (O_NOFOLLOW all the way)."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: dict[bytes, int] = {}

    def get(self, path: bytes) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = fsutil.open_dir_beneath(self.root_fd, fsutil.split(path))
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def set_dir_meta(fd: int, mode: int, uid: int, gid: int, xattrs: list[tuple[str, bytes]],
                 mtime_ns: int) -> None:
    os.chown(fd, uid, gid)
    os.chmod(fd, stat.S_IMODE(mode))
    want = dict(xattrs)
    for n, v in fsutil.read_xattrs(fd):
        if n not in want:
            os.removexattr(fd, n)
        elif want[n] == v:
            del want[n]
    fsutil.write_xattrs(fd, list(want.items()))
    os.utime(fd, ns=(mtime_ns, mtime_ns))


class Patcher:
    def __init__(self, restorer: Restorer, plan: Plan, parent_fd: int, root_fd: int) -> None:
        self.r = restorer
        self.plan = plan
        self.parent_fd = parent_fd
        self.root_fd = root_fd
        self.work = work_name(restorer.base)

    def run(self) -> None:
        os.mkdir(self.work, 0o700, dir_fd=self.parent_fd)
        wfd = os.open(self.work, fsutil.DIR_FLAGS, dir_fd=self.parent_fd)
        try:
            self.r.creating_in(wfd)
            # No sync here: undo needs only the journal durable; the one syncfs before the
            # commit mark makes the new entries and the renames durable together.
            self._prepare(wfd)
            touched = {op.path.rpartition(b"/")[0] for op in self.plan.ops}
            touched.update(self.plan.fix_dirs)
            dirs = [d for p, d in self.plan.dirs.items() if p in touched]
            journal = msgspec.msgpack.encode(Journal(self.plan.ops, dirs))
            fsutil.create_durable(wfd, JOURNAL, journal)
            try:
                self._apply(wfd, dirs)
                fsutil.syncfs(self.r.parent_path)
                fsutil.create_durable(wfd, COMMITTED, b"")
            except BaseException:
                with contextlib.suppress(OSError):
                    undo(self.parent_fd, self.r.base)
                raise
        finally:
            os.close(wfd)
        fsutil.remove_tree(self.parent_fd, self.work, fsutil.mount_roots(self.r.parent_path))

    def _prepare(self, wfd: int) -> None:
        """Every new entry as n<i> in the work dir; files are written by the thread pool."""
        r = self.r
        new_of: dict[bytes, bytes] = {}  # hard-link primary path -> its new name
        files: list[tuple[int, Entry]] = []
        dirs = _Dirs(self.root_fd)
        try:
            for i, (op, news) in enumerate(zip(self.plan.ops, self.plan.news, strict=True)):
                if op.kind == DELETE:
                    continue
                e, name = news[0], _new(i)
                if e.kind == DIR:
                    os.mkdir(name, 0o700, dir_fd=wfd)
                    sub = os.open(name, fsutil.DIR_FLAGS, dir_fd=wfd)
                    try:
                        linked = {s.target for s in news if s.kind == HARDLINK}
                        r.build_into(sub, news, linked)
                    finally:
                        os.close(sub)
                elif e.kind == FILE:
                    fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=wfd)
                    files.append((fd, e))
                    new_of[e.path] = name
                elif e.kind == HARDLINK:
                    if e.target in new_of:
                        os.link(new_of[e.target], name, src_dir_fd=wfd, dst_dir_fd=wfd,
                                follow_symlinks=False)
                    else:  # the kept primary, where it is now
                        parent, _, tname = e.target.rpartition(b"/")
                        os.link(tname, name, src_dir_fd=dirs.get(parent), dst_dir_fd=wfd,
                                follow_symlinks=False)
                else:
                    make_special(wfd, name, e)
        except BaseException:
            for fd, _e in files:
                os.close(fd)
            raise
        finally:
            dirs.close()
        r.write_files(files)
        for i, op in enumerate(self.plan.ops):
            if op.kind != DELETE:
                op.ino = os.stat(_new(i), dir_fd=wfd, follow_symlinks=False).st_ino

    def _apply(self, wfd: int, dirs: list[DirState]) -> None:
        fds = _Dirs(self.root_fd)
        try:
            for i, op in enumerate(self.plan.ops):
                parent, _, name = op.path.rpartition(b"/")
                pfd = fds.get(parent)
                if op.kind != CREATE:
                    os.rename(name, _old(i), src_dir_fd=pfd, dst_dir_fd=wfd)
                if op.kind != DELETE:
                    _move_in(wfd, _new(i), pfd, name)
            for d in reversed(dirs):  # children first: their mtimes are final when set
                e = self.plan.manifest_dirs[d.path]
                set_dir_meta(fds.get(d.path), e.mode, e.uid, e.gid, e.xattrs, e.mtime_ns)
        finally:
            fds.close()


def undo(parent_fd: int, base: bytes) -> None:
    """Roll back an uncommitted patch (idempotent; a committed one needs nothing)."""
    try:
        wfd = os.open(work_name(base), fsutil.DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    try:
        if _exists(COMMITTED, wfd):
            return
        try:
            jfd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=wfd)
        except FileNotFoundError:
            return  # nothing was applied before the journal existed
        with os.fdopen(jfd, "rb") as f:
            try:
                journal = msgspec.msgpack.decode(f.read(), type=Journal)
            except msgspec.DecodeError:
                return  # torn: it was being written, so nothing was applied
        root_fd = os.open(base, fsutil.DIR_FLAGS, dir_fd=parent_fd)
        fds = _Dirs(root_fd)
        try:
            for i in reversed(range(len(journal.ops))):
                op = journal.ops[i]
                parent, _, name = op.path.rpartition(b"/")
                pfd = fds.get(parent)
                if op.kind != DELETE:
                    try:
                        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                    except FileNotFoundError:
                        st = None
                    if st is not None and st.st_ino == op.ino:
                        os.rename(name, _new(i), src_dir_fd=pfd, dst_dir_fd=wfd)
                if op.kind != CREATE and _exists(_old(i), wfd):
                    _move_in(wfd, _old(i), pfd, name)
            for d in reversed(journal.dirs):
                set_dir_meta(fds.get(d.path), d.mode, d.uid, d.gid, d.xattrs, d.mtime_ns)
        finally:
            fds.close()
            os.close(root_fd)
        os.fsync(parent_fd)
        fsutil.syncfs(f"/proc/self/fd/{parent_fd}")
        os.unlink(JOURNAL, dir_fd=wfd)
    finally:
        os.close(wfd)
