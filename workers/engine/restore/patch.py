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

The journal and its undo() are in patchjournal.py: undo runs on every later restore,
capture and recover() (recovery.py), and at once when a patch fails, so a failed or killed
restore leaves the previous state, and one killed after the mark leaves the new one. The
new entries are written by the TreeWriter the caller passes (the same verified writes as a
rebuild). Nothing is ever opened through a symlink: every directory is reached through
O_NOFOLLOW fds from the state root, and a name swapped by a tenant is moved, never followed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import msgspec

from .. import tuning
from ..fs import fsutil
from ..repository.manifest import DIR, FILE, HARDLINK, Entry
from .metadata import make_special, set_dir_meta
from .patchjournal import (
    COMMITTED,
    JOURNAL,
    Journal,
    move_in,
    new_name,
    old_name,
    undo,
    work_name,
)
from .patchplan import CREATE, DELETE, DirState, Plan
from .recovery import dispose
from .treewriter import TreeWriter


class Patcher:
    def __init__(self, writer: TreeWriter, plan: Plan, parent_path: str, base: bytes,
                 parent_fd: int, root_fd: int,
                 before_commit: Callable[[], None] | None = None) -> None:
        self.w = writer
        self.before_commit = before_commit  # raises to undo instead (a live patch's leases)
        self.plan = plan
        self.parent_path, self.base = parent_path, base
        self.parent_fd = parent_fd
        self.root_fd = root_fd
        self.work = work_name(base)

    def run(self) -> None:
        os.mkdir(self.work, 0o700, dir_fd=self.parent_fd)
        wfd = os.open(self.work, fsutil.DIR_FLAGS, dir_fd=self.parent_fd)
        try:
            self.w.creating_in(wfd)
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
                fsutil.syncfs_fd(self.parent_fd)  # by fd: see Restorer's durability point
                if self.before_commit is not None:
                    self.before_commit()
                fsutil.create_durable(wfd, COMMITTED, b"")
            except BaseException:
                with contextlib.suppress(OSError):
                    undo(self.parent_fd, self.base)
                raise
        finally:
            os.close(wfd)
        dispose(self.parent_fd, self.parent_path, self.base, self.work)  # committed

    def _prepare(self, wfd: int) -> None:
        """Every new entry as n<i> in the work dir; files are written by the thread pool."""
        w = self.w
        new_of: dict[bytes, bytes] = {}  # hard-link primary path -> its new name
        files: list[tuple[int, Entry]] = []
        dirs = fsutil.Beneath(self.root_fd)  # hard links' kept targets
        try:
            for i, (op, news) in enumerate(zip(self.plan.ops, self.plan.news, strict=True)):
                if op.kind == DELETE:
                    continue
                e, name = news[0], new_name(i)
                if e.kind == DIR:
                    os.mkdir(name, 0o700, dir_fd=wfd)
                    sub = os.open(name, fsutil.DIR_FLAGS, dir_fd=wfd)
                    try:
                        linked = {s.target for s in news if s.kind == HARDLINK}
                        w.build_into(sub, news, linked)
                    finally:
                        os.close(sub)
                elif e.kind == FILE:
                    fd = os.open(name, fsutil.CREATE_FLAGS, w.create_mode(e), dir_fd=wfd)
                    files.append((fd, e))
                    new_of[e.path] = name
                    if len(files) >= tuning.RESTORE_MAX_INFLIGHT:
                        # written now, a batch at a time: each open file is a descriptor,
                        # and a patch may make up to entries / PATCH_FRACTION of them (a
                        # million-entry state: 200,000), past any RLIMIT_NOFILE: EMFILE
                        # failed every attempt of such a restore
                        batch, files = files, []
                        w.write_files(batch)  # closes their fds, raising or not
                elif e.kind == HARDLINK:
                    if e.target in new_of:
                        os.link(new_of[e.target], name, src_dir_fd=wfd, dst_dir_fd=wfd,
                                follow_symlinks=False)
                    else:  # the kept primary, where it is now
                        parent, _, tname = e.target.rpartition(b"/")
                        os.link(tname, name, src_dir_fd=dirs.dir(parent), dst_dir_fd=wfd,
                                follow_symlinks=False)
                else:
                    make_special(wfd, name, e)
        except BaseException:
            for fd, _e in files:
                os.close(fd)
            raise
        finally:
            dirs.close()
        w.write_files(files)
        for i, op in enumerate(self.plan.ops):
            if op.kind != DELETE:
                op.ino = os.stat(new_name(i), dir_fd=wfd, follow_symlinks=False).st_ino

    def _apply(self, wfd: int, dirs: list[DirState]) -> None:
        # the directories along the path at hand only, not one descriptor per directory
        # changed (up to one per op: EMFILE in a big state)
        fds = fsutil.Beneath(self.root_fd)
        try:
            for i, op in enumerate(self.plan.ops):
                parent, _, name = op.path.rpartition(b"/")
                pfd = fds.dir(parent)
                if op.kind != CREATE:
                    os.rename(name, old_name(i), src_dir_fd=pfd, dst_dir_fd=wfd)
                if op.kind != DELETE:
                    move_in(wfd, new_name(i), pfd, name)
            for d in reversed(dirs):  # children first: their mtimes are final when set
                set_dir_meta(self.plan.manifest_dirs[d.path], fds.dir(d.path))
        finally:
            fds.close()


