"""The rebuild's swap: the staging tree beside a state path put in its place in one step.

A directory restore builds `<parent>/.<base>.restore-<snapshot_id>` and swaps it with the
state path (see restorer.py); anything named `.<base>.restore-*` afterwards is a leftover
that recovery.cleanup() removes, rolling a journaled swap forward first when needed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator

from .. import tuning
from ..fs import fsutil
from ..progress import Progress

_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # the kernel reads an int
_FS_TOPDIR_FL = 0x00020000  # chattr +T: "the top of a directory hierarchy" (not inherited)


@contextlib.contextmanager
def hierarchy_top(fd: int) -> Iterator[None]:
    """The staging directory marked the top of a directory hierarchy while its tree is
    made (chattr +T; ext4, which has it, is the only filesystem that reads it): ext4's
    Orlov allocator then spreads its subdirectories over block groups with room, as it
    spreads a filesystem root's, instead of packing them into the group of the state's
    parent. Every file is created in its directory's group, and in a group that other
    work fills and empties (on this machine /tmp's, where every test makes and deletes
    files), ext4 without a journal skips each recently freed inode: creating the bench's
    10,000 files of 6 KB in 1,358 directories took 43-165 us of system time a file there
    and 17-30 us with the mark. The mark is taken off again before the swap, so the
    restored root carries only the flags it had; elsewhere (no such flag) nothing
    changes."""
    before: int | None = None
    try:
        before = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        if before & _FS_TOPDIR_FL:
            before = None  # marked already (by its parent's inheritance?): leave it
        else:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", before | _FS_TOPDIR_FL))
    except OSError:  # no inode flags here (tmpfs, ...), or not this one: nothing to undo
        before = None
    try:
        yield
    finally:
        if before is not None:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", before))


def swap(parent_fd: int, staging: bytes, base: bytes, exists: bool) -> bytes:
    """Put the staging tree at the state path in one step; returns the name the current
    tree is left under, for the caller to remove (the staging name, after an exchange)."""
    try:
        flags = fsutil.RENAME_EXCHANGE if exists else fsutil.RENAME_NOREPLACE
        fsutil.renameat2(parent_fd, staging, parent_fd, base, flags)
        old = staging
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        old = _swap_journaled(parent_fd, staging, base, exists)
    os.fsync(parent_fd)
    return old


def _swap_journaled(parent_fd: int, staging: bytes, base: bytes, exists: bool) -> bytes:
    journal = b"." + base + b".restore-journal"
    old = b"." + base + b".restore-old"  # free: recovery.cleanup() ran before the build
    fsutil.create_durable(parent_fd, journal, staging)
    if exists:
        os.rename(base, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    os.rename(staging, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    os.fsync(parent_fd)
    os.unlink(journal, dir_fd=parent_fd)
    return old


class Flusher:
    """Flushes the filesystem in the background every tuning.FLUSH_EVERY seconds, so the
    disk writes while the tree is built and the final syncfs (the restore's durability
    point, before the swap) has little left to do. Through the state's parent's fd (its
    own copy), never its path: a tenant holding a directory above may swap the parent for
    a symlink, which had it flush whatever filesystem that named (one that hangs too)."""

    def __init__(self, parent_fd: int, progress: Progress) -> None:
        self.progress = progress
        self._fd = os.dup(parent_fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(tuning.FLUSH_EVERY):
            with contextlib.suppress(OSError):
                fsutil.syncfs_fd(self._fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
