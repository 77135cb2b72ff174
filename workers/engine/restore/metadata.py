"""Metadata as a restore sets it: special entries created whole (in a directory of its
own: staging, or a patch's work directory), and directories' metadata (set_dir_meta, the
one recipe for both the rebuild and the patch), applied last."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Protocol

from ..fs import fsutil
from ..repository.manifest import SYMLINK, Entry

ACL_ACCESS = "system.posix_acl_access"


def drop_inherited_acl(target: int | bytes, xattrs: list[tuple[str, bytes]]) -> None:
    """An entry made under a default ACL (inherited from the state's parent) gets an access
    ACL of its own, which the snapshot's entry may not have: removed then (after its chmod,
    so its mode's group bits are the snapshot's, not the ACL's mask). target: an fd or a
    /proc/self/fd path of an O_PATH descriptor."""
    if any(n == ACL_ACCESS for n, _v in xattrs):
        return  # its own, written next
    try:
        os.removexattr(target, ACL_ACCESS)
    except OSError as err:
        if err.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


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
        # through an O_PATH descriptor of the node just made, not its name: chmod follows
        # a symlink, and a tenant root in its container may reach the staging directory
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if stat.S_IFMT(os.fstat(pfd).st_mode) != stat.S_IFMT(e.mode):
                raise OSError(errno.EEXIST, "replaced during the restore", name)
            os.chmod(b"/proc/self/fd/%d" % pfd, stat.S_IMODE(e.mode))
            drop_inherited_acl(b"/proc/self/fd/%d" % pfd, e.xattrs)  # a few nodes: always
        finally:
            os.close(pfd)
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


def set_dir_meta(d: DirMeta, fd: int) -> None:
    """Owner, mode, xattrs and mtime of the directory open at fd, in that order (chmod after
    chown, which may clear setgid; the mtime last); its xattrs are made exactly d's, others
    removed. Always through an fd reached with O_NOFOLLOW components: by path under the
    0700 staging directory, a tenant root in its container (who may reach it) swapped a
    directory for a symlink and had a host directory chowned and chmodded."""
    os.chown(fd, d.uid, d.gid)
    os.chmod(fd, stat.S_IMODE(d.mode))
    want = dict(d.xattrs)
    for n, v in fsutil.read_xattrs(fd):
        if n not in want:
            os.removexattr(fd, n)
        elif want[n] == v:
            del want[n]
    fsutil.write_xattrs(fd, list(want.items()))
    os.utime(fd, ns=(d.mtime_ns, d.mtime_ns))


def finish_dirs(st_fd: int, dirs: list[Entry], *, root: bool = True) -> None:
    """The metadata of the directories built under st_fd (`dirs` in walk order: the root
    first, parents before children), applied last and each once its subdirectories' are
    (so that creating children cannot change them), every one through an fd opened with
    O_NOFOLLOW from its parent's. root False: the root's own (dirs[0]) is the caller's."""
    stack: list[tuple[bytes, int, Entry]] = [(b"", os.dup(st_fd), dirs[0])]
    try:
        for d in dirs[1:]:
            parent, _, name = d.path.rpartition(b"/")
            while stack[-1][0] != parent:
                _leave(stack)
            stack.append((d.path, os.open(name, fsutil.DIR_FLAGS, dir_fd=stack[-1][1]), d))
        while len(stack) > 1:
            _leave(stack)
        if root:
            _leave(stack)
    finally:
        for _p, fd, _d in stack:
            os.close(fd)


def _leave(stack: list[tuple[bytes, int, Entry]]) -> None:
    _p, fd, d = stack[-1]
    try:
        set_dir_meta(d, fd)
    finally:
        stack.pop()
        os.close(fd)
