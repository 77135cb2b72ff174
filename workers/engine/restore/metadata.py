"""Entries a restore creates in a directory of its own (staging, or a patch's work
directory) with their metadata: special files whole, directories' metadata last."""

from __future__ import annotations

import os
import stat

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


def set_dir_metadata(st_fd: int, dirs: list[Entry]) -> None:
    """Owner, mode, xattrs and times of the directories built under st_fd (parents before
    children in `dirs`), applied last and deepest first, so that creating children cannot
    change them. By path under st_fd: every directory on the way is one this restore
    created in its private (0700) staging directory, so no component can be a symlink."""
    for d in reversed(dirs):
        path = d.path or b"."
        os.chown(path, d.uid, d.gid, dir_fd=st_fd, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(d.mode), dir_fd=st_fd)
        if d.xattrs:
            fsutil.write_xattrs(b"/proc/self/fd/%d/%s" % (st_fd, path), d.xattrs)
        os.utime(path, ns=(d.mtime_ns, d.mtime_ns), dir_fd=st_fd, follow_symlinks=False)
