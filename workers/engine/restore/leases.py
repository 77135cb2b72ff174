"""Read leases: how a live restore (power `none`, the server runs) may patch a tree in place
and still never leave in the restored tree an inode that a process has open for writing.

A live restore used to rebuild the whole tree and *copy* every unchanged file into a new
inode (treewriter.copy_reused), because a process holding an unchanged file open for
writing, or mapped shared and writable, would otherwise go on writing into the restored
state. That made putting a running server back after a small change cost more than a full
restore (bench rootfs + 300 MiB image, 53 files changed: 1.48 s against 0.85 s), every
unchanged byte read and written again.

The kernel can say it exactly: fcntl(F_SETLEASE, F_RDLCK) on a read-only descriptor is
refused (EAGAIN) while any process has the inode open for writing, a shared writable
mapping included (the mapping holds its descriptor's open file, fd closed or not), and
once it is granted, an open for writing (or a truncate) by any other process waits until
the lease is released, or until /proc/sys/fs/lease-break-time (45 s by default) passes.
So a live patch leases every regular file it keeps, holds the leases until its commit
mark, and checks just before the mark that none was broken (F_GETLEASE is F_UNLCK once an
open for writing waits, or the break timed out). A file it cannot lease (open for writing,
a tenant's own lease, not ours to lease without CAP_LEASE, a filesystem without leases,
more files than the descriptor budget) and a broken lease both send the restore back to
the rebuild with copies. A process that opens a kept file for writing during the patch
waits until the restore has committed (or given the patch up), then writes into the
restored file: what it opened after the restore, as any open after the swap would.

A lease break is signalled to the holder: SIGIO by default, which would end the process.
F_SETSIG sets SIGURG instead, which is ignored by default (nothing here handles it), and
the opener's wait and F_GETLEASE are all the restore relies on.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal

from ..fs import fsutil
from ..repository.manifest import Entry


class LiveChange(Exception):
    """The running server changed the tree during a live patch: rebuild instead."""


class LiveGuard:
    """What a live patch holds from its walk (patchplan.py) to its commit mark: a read
    lease on every kept regular file, a descriptor and the ctime of every kept directory,
    the ctime of every kept symlink or special file. check() raises LiveChange, before the
    mark, if anything moved: a lease broken (an open for writing waits), a kept file's or
    directory's ctime changed (a write, chmod, rename, create or unlink: the server is
    changing its tree), or a directory the patch changed holding other names or metadata
    than the snapshot's. Then the patch is undone and the rebuild, whose new tree no
    process can reach before its atomic swap, copies every file (as before)."""

    def __init__(self) -> None:
        self._files: list[tuple[int, int]] = []  # (leased fd, ctime)
        self._dirs: dict[bytes, tuple[int, int]] = {}  # kept directory -> (fd, ctime)
        self._names: dict[bytes, list[bytes]] = {}  # kept directory -> the snapshot's names
        # (directory, name, its lstat's (ino, ctime, mode, owner)): a change of owner within
        # the ctime's granule keeps the ctime (whole-second stamps; a tick before Linux
        # 6.13); a replacement moves its directory's mtime (check compares it)
        self._others: list[tuple[bytes, bytes, tuple[int, ...]]] = []
        # a descriptor held per kept file and directory: at most half of the process's
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._budget = (soft if soft != resource.RLIM_INFINITY else 1 << 20) // 2

    def _room(self) -> bool:
        return len(self._files) + len(self._dirs) < self._budget

    def lease(self, dfd: int, name: bytes, st: os.stat_result) -> bool:
        """Lease the regular file `name` in dfd, the inode of `st` (its lstat) unchanged
        since: False if it cannot be leased (see above) or changed since st."""
        if not self._room():
            return False
        try:  # never opens a device or fifo; O_NONBLOCK: a tenant's lease is no wait
            fd, pst = fsutil.open_regular_stat(name, dfd, wait=0)
        except OSError:
            return False
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # before the lease: see above
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            now = os.fstat(fd)  # leased: from here its content cannot change
        except OSError:
            os.close(fd)
            return False
        if (pst.st_ino, now.st_ino, now.st_ctime_ns) != (st.st_ino, st.st_ino, st.st_ctime_ns):
            os.close(fd)
            return False
        self._files.append((fd, now.st_ctime_ns))
        return True

    def watch_dir(self, path: bytes, fd: int, st: os.stat_result) -> bool:
        """Keep watching the kept directory `path` (fd, its fstat before it was listed)."""
        if not self._room():
            return False
        self._dirs[path] = (os.dup(fd), st.st_ctime_ns)
        self._names[path] = []
        return True

    def expect(self, parent: bytes, name: bytes) -> None:
        """The snapshot has `name` in the kept directory `parent`."""
        self._names[parent].append(name)

    def watch_other(self, parent: bytes, name: bytes, st: os.stat_result) -> None:
        """A kept symlink, device, fifo or socket (its lstat)."""
        self._others.append((parent, name, (st.st_ino, st.st_ctime_ns, st.st_mode, st.st_uid,
                                            st.st_gid)))

    def leases_held(self) -> bool:
        """No lease broken: no process opened a kept file for writing since it was leased
        (such an open waits, and turns F_GETLEASE to F_UNLCK)."""
        return all(fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK for fd, _c in self._files)

    def check(self, changed: set[bytes], dirs: dict[bytes, Entry]) -> None:
        """LiveChange unless nothing moved (see above). `changed`: the directories the
        patch itself changed, whose metadata and names must be the snapshot's (`dirs`)."""
        if not self.leases_held():
            raise LiveChange("a kept file was opened for writing during the patch")
        if any(os.fstat(fd).st_ctime_ns != ctime for fd, ctime in self._files):
            raise LiveChange("a kept file changed during the patch")
        for path, (fd, ctime) in self._dirs.items():
            st = os.fstat(fd)
            e = dirs[path]
            if path not in changed:
                # Its metadata was the snapshot's (else a fix_dirs entry: changed). The
                # mtime too: a name made or removed within the ctime's granule after the
                # planner's fstat keeps the ctime (a whole-second filesystem; any within
                # a tick before Linux 6.13) when the directory changed in that granule
                # before it, but never leaves the snapshot's (older) mtime.
                if st.st_ctime_ns != ctime or (st.st_mtime_ns, st.st_mode, st.st_uid,
                                               st.st_gid) != (e.mtime_ns, e.mode, e.uid, e.gid):
                    raise LiveChange(f"directory {path!r} changed during the patch")
                continue
            if ((st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
                    != (e.mode, e.uid, e.gid, e.mtime_ns)
                    or sorted(fsutil.iter_names(fd)) != sorted(self._names[path])):
                raise LiveChange(f"directory {path!r} changed during the patch")
        for parent, name, seen in self._others:
            try:
                st = os.stat(name, dir_fd=self._dirs[parent][0], follow_symlinks=False)
            except FileNotFoundError as err:
                raise LiveChange(f"{name!r} went during the patch") from err
            if (st.st_ino, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid) != seen:
                raise LiveChange(f"{name!r} changed during the patch")

    def release(self) -> None:
        """Close every descriptor: the leases go, and a waiting opener goes on."""
        for fd, _c in self._files:
            os.close(fd)
        for fd, _c in self._dirs.values():
            os.close(fd)
        self._files, self._dirs, self._names, self._others = [], {}, {}, []
