"""Low-level, symlink-safe filesystem helpers (Linux).

Everything here works on directory file descriptors and single path components so
that no symlink planted by a tenant is ever followed: intermediate components are
opened with O_NOFOLLOW|O_DIRECTORY one by one, final components with O_NOFOLLOW.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections.abc import Iterator

from .. import tuning
from ..model import TransientEngineError
from . import libc

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A new file, never an existing one nor a symlink's target (every file the engine creates).
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Reopening an O_PATH descriptor's inode for reading (see open_regular): the magic link
# /proc/self/fd/N is followed on purpose; it names that inode, whatever the path holds now.
REOPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
_NOATIME = getattr(os, "O_NOATIME", 0)


def syncfs(path: str) -> None:
    """Flush the whole filesystem holding path: one barrier instead of an fsync per object."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs_fd(fd)
    finally:
        os.close(fd)


def syncfs_fd(fd: int) -> None:
    """syncfs of the filesystem holding an open file or directory."""
    fn = libc.function("syncfs")
    if fn is None or libc.call(fn, ctypes.c_int(fd)) != 0:
        os.sync()


def renameat2(src_dir: int, src: bytes, dst_dir: int, dst: bytes, flags: int) -> None:
    libc.checked("renameat2", ctypes.c_int(src_dir), ctypes.c_char_p(src),
                 ctypes.c_int(dst_dir), ctypes.c_char_p(dst), ctypes.c_uint(flags))


def punch_hole(fd: int, offset: int, length: int) -> None:
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    libc.checked("fallocate", ctypes.c_int(fd), ctypes.c_int(mode),
                 ctypes.c_int64(offset), ctypes.c_int64(length))


# Out of descriptors or memory is the worker's condition, not the tenant's doing: a file or
# directory that cannot be opened for it has not "vanished", and a capture that dropped it
# (as it drops what a tenant removes or swaps meanwhile) would be `available` without it.
EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))
# Nor has a file another process holds under a lease it does not release (open_regular_stat):
# dropped, a snapshot would silently miss a file any process of the server can hold so.
NOT_GONE = EXHAUSTED | {errno.EWOULDBLOCK}


def check_exhausted(err: OSError) -> None:
    """Raise TransientEngineError (the operation is retried) if `err` is the worker out of
    file descriptors or memory; return otherwise (the caller's own handling applies)."""
    if err.errno in EXHAUSTED:
        raise TransientEngineError(f"the worker is out of resources: {err}") from err


def check_opened(err: OSError, path: bytes) -> None:
    """check_exhausted, and TransientEngineError naming `path` (relative to the state) for
    a file held under a lease past tuning.LEASE_WAIT: the file is there, it could not be
    read. Retried: the kernel ends an unreleased lease after its lease-break-time."""
    check_exhausted(err)
    if err.errno == errno.EWOULDBLOCK:
        raise TransientEngineError(f"reading {shown(path)} failed: {err.strerror}") from err


def open_regular(name: bytes, dir_fd: int, wait: float | None = None) -> int:
    """Open dir/name for reading only if it is a regular file, never opening anything else:
    an O_PATH | O_NOFOLLOW descriptor pins the inode without opening it for I/O (no driver
    open of a device node, no fifo open), fstat checks its type on that descriptor, and
    only then that very inode is reopened for reading through /proc/self/fd, so a device
    or fifo swapped in at any moment is never opened. Without updating atime when
    permitted (owner or CAP_FOWNER). OSError (ENOENT, ELOOP, EINVAL...) otherwise; a lease
    held past `wait`: see open_regular_stat."""
    return open_regular_stat(name, dir_fd, wait)[0]


def open_regular_stat(name: bytes, dir_fd: int,
                      wait: float | None = None) -> tuple[int, os.stat_result]:
    """open_regular, and the fstat of the inode it opened (taken before the reopen: a
    change after it shows in any later fstat).

    The reopen is O_NONBLOCK (no effect on a regular file's I/O): a process that owns a
    file (or has CAP_LEASE) can hold a write lease on it, and a plain open then waits
    until it releases it or the kernel's lease-break-time (45 s) passes, a worker held
    per file by a tenant that ignores the break signal. The first try starts the break;
    the open is retried with a growing pause for `wait` seconds (tuning.LEASE_WAIT when
    None; 0: one try), then fails with OSError(EWOULDBLOCK) (NOT_GONE: not the tenant
    removing the file)."""
    pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        return _reopen(b"/proc/self/fd/%d" % pfd, wait), st
    finally:
        os.close(pfd)


def _reopen(proc: bytes, wait: float | None) -> int:
    if _NOATIME:
        try:
            return open_unleased(proc, REOPEN_FLAGS | _NOATIME, wait)
        except PermissionError:
            pass
    return open_unleased(proc, REOPEN_FLAGS, wait)


def open_unleased(proc: bytes, flags: int, wait: float | None = None) -> int:
    """os.open of a regular file (a /proc/self/fd magic link) with O_NONBLOCK, retried
    while another process holds a lease on it (see open_regular_stat)."""
    flags |= os.O_NONBLOCK
    try:
        return os.open(proc, flags)
    except BlockingIOError:  # a lease: its break has started
        pass
    limit = tuning.LEASE_WAIT if wait is None else wait
    end = time.monotonic() + limit
    pause = 0.001
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
        try:
            return os.open(proc, flags)
        except BlockingIOError:
            pass
    raise OSError(errno.EWOULDBLOCK, f"another process holds a lease on it and did not "
                                     f"release it within {limit:g} s")


_UNSAFE_PARTS = frozenset((b"", b".", b".."))


def split(path: bytes) -> list[bytes]:
    """Split a relative manifest path, refusing anything that could escape the root (an
    empty, '.' or '..' component; one set operation, not a loop: a restore checks every
    entry)."""
    if not path:
        return []
    parts = path.split(b"/")
    if not _UNSAFE_PARTS.isdisjoint(parts):
        raise ValueError(f"unsafe path {path!r}")
    return parts


def open_dir_beneath(root_fd: int, parts: list[bytes]) -> int:
    """Open root/parts... as a directory, never following a symlink on the way."""
    fd = os.dup(root_fd)
    try:
        for p in parts:
            nfd = os.open(p, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class Beneath:
    """The directories of relative paths beneath a root fd, each component opened with
    O_NOFOLLOW | O_DIRECTORY (never a symlink followed), the open ones kept as a stack:
    asked in walk order, each directory is opened once. For a tree the engine builds in
    its own staging directory, whose names are in reach of a tenant that is root in its
    container (0700 stops no one with CAP_DAC_OVERRIDE) when the state lies in a tree it
    controls: a staging directory swapped for a symlink to /etc took a path-based create,
    mkdir, link or chmod there."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._parts: list[bytes] = []
        self._fds: list[int] = []

    def dir(self, path: bytes) -> int:
        """The fd of directory `path` (b"" the root); valid until the next call or close."""
        parts = split(path)
        n, lim = 0, min(len(parts), len(self._parts))
        while n < lim and parts[n] == self._parts[n]:
            n += 1
        while len(self._fds) > n:
            os.close(self._fds.pop())
            self._parts.pop()
        for p in parts[n:]:
            fd = os.open(p, DIR_FLAGS, dir_fd=self._fds[-1] if self._fds else self._root)
            self._fds.append(fd)
            self._parts.append(p)
        return self._fds[-1] if self._fds else self._root

    def entry(self, path: bytes) -> tuple[int, bytes]:
        """(fd of the directory holding `path`, its last component)."""
        parent, _, name = path.rpartition(b"/")
        return self.dir(parent), name

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
        self._parts.clear()


def shown(path: bytes) -> str:
    """A tenant's path as text for a warning or message: bytes that are not UTF-8 as
    backslash escapes (`m\\xff`). os.fsdecode's surrogates cannot be encoded to the
    JSON the warnings are stored as (a snapshot's warnings, an operation's error): a mount
    point or a file swapped meanwhile with such a name failed the capture's completion,
    and every capture of the server again."""
    return path.decode("utf-8", "backslashreplace")


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming entry `name` of an open directory; the final component is not followed
    when used with follow_symlinks=False (the /proc magic link pins the directory)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def read_xattrs(target: int | bytes) -> list[tuple[str, bytes]]:
    """All xattrs (user.*, trusted.*, security.*, system.posix_acl_*) of an fd or a proc path."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    out: list[tuple[str, bytes]] = []
    for n in sorted(names):
        try:
            if isinstance(target, int):
                out.append((n, os.getxattr(target, n)))
            else:
                out.append((n, os.getxattr(target, n, follow_symlinks=False)))
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
    return out


def write_xattrs(target: int | bytes, xattrs: list[tuple[str, bytes]]) -> None:
    for n, v in xattrs:
        if isinstance(target, int):
            os.setxattr(target, n, v)
        else:
            os.setxattr(target, n, v, follow_symlinks=False)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file; holes are skipped (SEEK_DATA/HOLE)."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno == errno.EINVAL:  # filesystem without SEEK_DATA: one extent
                return [(0, size)] if size else []
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, SEEK_HOLE), size)
        out.append((start, end - start))
        pos = end
    return out


def pread_full(fd: int, length: int, offset: int) -> bytes:
    buf = os.pread(fd, length, offset)
    if len(buf) == length:
        return buf
    parts = [buf]
    got = len(buf)
    while got < length:
        b = os.pread(fd, length - got, offset + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def write_full(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def create_durable(dir_fd: int, name: bytes, data: bytes) -> None:
    """Create dir/name (never an existing one) holding data, on disk with its name."""
    fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        write_full(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dir_fd)


def iter_names(dir_fd: int) -> Iterator[bytes]:
    """Names of a directory given by fd, as bytes (non-UTF-8 names survive)."""
    try:
        it = os.scandir(dir_fd)  # duplicates the descriptor
    except OSError as err:
        check_exhausted(err)
        raise
    with it:
        for e in it:
            yield os.fsencode(e.name)


def has_default_acl(dir_fd: int) -> bool:
    """Whether the directory open at dir_fd has a default ACL (what it passes on to the
    files and directories made in it)."""
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def is_empty_dir(dir_fd: int) -> bool:
    """Whether the directory open at dir_fd has no entries at all."""
    with os.scandir(dir_fd) as it:  # duplicates the descriptor
        return next(it, None) is None
