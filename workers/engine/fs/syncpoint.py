"""When an inode's ctime may stand for its content ("same inode, same ctime: same bytes").

The kernel moves ctime on every write(2), truncate, fallocate, chmod, xattr change... but
a store through a shared writable mapping is no syscall: the kernel sees it only as the
first write fault on a page that is not writable in the page tables, and then updates
mtime/ctime (page_mkwrite -> file_update_time). A page that was already dirty and mapped
writable takes later stores without any fault, so without any ctime change. Writeback is
what makes the page read-only again (folio_clear_dirty_for_io write-protects every
mapping of it before writing it out), after which the next store faults and moves ctime.

So a sync point: wait until the coarse clock (the one ctime stamps come from) has passed
now, note its value T, then syncfs the filesystem. Every page dirty before the syncfs is
written back and write-protected during it, so any change to any file of the filesystem
after T -- a syscall or a store through any mapping -- stamps a ctime of at least T. A
ctime C with C + granule <= T was therefore set before T, and a file read (or proven by
hashing) after the sync point whose ctime is still C afterwards held exactly those bytes
while it was read and keeps them for as long as its ctime stays C. A ctime at or after T
(a file changed during the operation itself) vouches for nothing: it is recorded as 0.

Filesystems without writeback (tmpfs, ramfs, hugetlbfs) never write-protect a dirty page:
a mapping stays writable for ever and ctime stops moving, so there no ctime vouches.
Linux >= 6.13 also gives every change after a stat a distinct fine-grained ctime
(multigrain timestamps); the rule does not need it, as it never compares within a tick.
"""

from __future__ import annotations

import ctypes
import struct
import time

from . import fsutil, libc

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
# statfs f_type of filesystems whose pages are never written back
NO_WRITEBACK = {0x01021994, 0x858458F6, 0x958458F6}  # tmpfs, ramfs, hugetlbfs
_fstatfs = libc.function("fstatfs")


def _coarse_ns() -> int:
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


def fs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is its first field
    if _fstatfs is None or libc.call(_fstatfs, ctypes.c_int(fd), buf) != 0:
        return 0
    return int(struct.unpack_from("l", buf.raw)[0])


def granule(ctime_ns: int) -> int:
    """The timestamp granularity a ctime shows (1 ns on ext4, xfs, btrfs; 1 s on ext4
    with 128-byte inodes; 2 s on FAT): the largest power of ten dividing it."""
    g = 1
    while g < 10**9 and ctime_ns % (g * 10) == 0:
        g *= 10
    return 2 * g if g == 10**9 else g


class SyncPoint:
    def __init__(self, at_ns: int, sound: bool) -> None:
        self.at_ns = at_ns  # coarse-clock time before the syncfs
        self.sound = sound  # False: this filesystem never write-protects dirty pages

    def vouches(self, ctime_ns: int) -> bool:
        """May this ctime, seen after the sync point, stand for the file's content?"""
        return self.sound and ctime_ns > 0 and ctime_ns + granule(ctime_ns) <= self.at_ns

    def recorded(self, ctime_ns: int) -> int:
        """The ctime to record for a file read after the sync point (0: vouches for
        nothing, so the next capture reads the file again and no restore trusts it)."""
        return ctime_ns if self.vouches(ctime_ns) else 0


def sync_point(fd: int, since: int | None = None) -> SyncPoint:
    """Make every change from now on move ctime, on the filesystem holding fd (see above).
    Costs a syncfs: on a quiet state about a millisecond, else the writeback of what is
    dirty, which the kernel would do within 30 s anyway.

    The wait for the coarse clock to pass `since` (a time.time_ns(), now by default) is
    not what makes the rule hold (that is T read before the syncfs): it lets every ctime
    set before `since` vouch (C < T). An operation passes the time it began, so its own
    work before this call (a restore reads and decodes its manifest) overlaps the tick,
    and only a file changed while it ran, after `since`, may vouch for nothing."""
    start = time.time_ns() if since is None else since
    while _coarse_ns() <= start:  # at most one tick (4 ms at HZ=250)
        time.sleep(0.0005)
    at = _coarse_ns()
    fsutil.syncfs_fd(fd)
    return SyncPoint(at, fs_type(fd) not in NO_WRITEBACK)


def wait_past(ctime_ns: int) -> None:
    """Return once any change stamps a ctime later than ctime_ns (the coarse clock has
    passed it by its granule): a restore records the ctimes of the files it wrote, and a
    change within the same granule keeps the ctime (the same second on a filesystem of
    whole-second stamps; the same tick before Linux 6.13), so a record made before a
    change that soon would vouch for bytes the file no longer holds. At most one tick on
    a filesystem of nanosecond stamps, whose writing is usually past it already."""
    if ctime_ns <= 0:
        return
    until = ctime_ns + granule(ctime_ns)
    while (now := _coarse_ns()) < until:
        time.sleep(min((until - now) / 1e9, 0.01))
