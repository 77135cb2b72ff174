"""Metadata as a restore sets it: special entries created whole (in a directory of its
own: staging, or a patch's work directory), and directories' metadata (set_dir_meta, the
one recipe for both the rebuild and the patch), applied last."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Protocol

from ..fs import fsutil
from ..repository.manifest import SYMLINK, Entry


def make_special(dfd: int, name: bytes, e: Entry) -> None:
    """Create a symlink, fifo, device node or socket entry with its metadata (in a
    directory of our own: staging or a patch's work directory)."""
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


if TYPE_CHECKING:  # for the type checker only: a Protocol class costs an import 0.5 M instructions

    class DirMeta(Protocol):
        """What a directory's metadata is made of (a manifest Entry, or a patch's DirState)."""

        @property
        def mode(self) -> int: ...
        @property
        def uid(self) -> int: ...
        @property
        def gid(self) -> int: ...
        @property
        def mtime_ns(self) -> int: ...
        @property
        def xattrs(self) -> list[tuple[str, bytes]]: ...


def set_dir_meta(d: DirMeta, target: int | bytes, dir_fd: int | None = None) -> None:
    """Owner, mode, xattrs and mtime of one directory, in that order (chmod after chown,
    which may clear setgid; the mtime last).

    `target` is either an open fd of a directory of the tenant's tree (reached through
    O_NOFOLLOW fds): its xattrs are made exactly d's, others removed; or a path under
    `dir_fd` of a directory this restore created in its private (0700) staging directory:
    no component can be a symlink and it has no xattrs of its own, so it is set by path,
    one syscall each, without opening it."""
    if isinstance(target, int):
        os.chown(target, d.uid, d.gid)
        os.chmod(target, stat.S_IMODE(d.mode))
        want = dict(d.xattrs)
        for n, v in fsutil.read_xattrs(target):
            if n not in want:
                os.removexattr(target, n)
            elif want[n] == v:
                del want[n]
        fsutil.write_xattrs(target, list(want.items()))
        os.utime(target, ns=(d.mtime_ns, d.mtime_ns))
        return
    assert dir_fd is not None
    path = target or b"."
    os.chown(path, d.uid, d.gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(d.mode), dir_fd=dir_fd)
    if d.xattrs:
        fsutil.write_xattrs(b"/proc/self/fd/%d/%s" % (dir_fd, path), d.xattrs)
    os.utime(path, ns=(d.mtime_ns, d.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def finish_dirs(st_fd: int, dirs: list[Entry]) -> None:
    """The metadata of the directories built under st_fd (parents before children in
    `dirs`), applied last and deepest first, so that creating children cannot change
    them (by path: see set_dir_meta)."""
    for d in reversed(dirs):
        set_dir_meta(d, d.path, st_fd)
