"""A state's path (an absolute path the operator registered, in a tree a tenant may control
above it): opened without following a symlink in any component, split into its parent and
base name, the mount points below it, and whether a directory there is empty."""

from __future__ import annotations

import errno
import os
import re
import stat

from ..model import StateInvalid
from . import fsutil


def split_state(path: str) -> tuple[str, bytes]:
    """A state path as (its parent directory, its base name), or StateInvalid."""
    path = os.path.normpath(path)
    if not os.path.isabs(path) or path == "/":
        raise StateInvalid(f"state path must be an absolute path below /: {path!r}")
    parent, base = os.path.split(path)
    return parent, os.fsencode(base)


def open_path(path: str, flags: int = fsutil.DIR_FLAGS) -> int:
    """Open an absolute path (a state path or its parent) without following a symlink in
    any of its components, the last one opened with ``flags`` (plus O_NOFOLLOW). A state
    may be nested in a tree its tenant controls (a data directory inside a container's
    root filesystem, another server's state): a symlink planted there, ``var -> /var``,
    took the capture and the restore of ``.../var/lib/mysql`` to the host's own. Raises
    StateInvalid naming a component that is a symlink or not a directory, the OSError
    (FileNotFoundError, ...) otherwise."""
    parts = [p for p in os.fsencode(path).split(b"/") if p]
    fd = os.open("/", fsutil.DIR_FLAGS)
    done = b""
    try:
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(p, (flags | os.O_NOFOLLOW) if last else fsutil.DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    link = stat.S_ISLNK(os.stat(p, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    raise e from None
                what = "a symlink" if link else "not a directory"
                raise StateInvalid(
                    f"{os.fsdecode(done + b'/' + p)} in state path {path} is {what} "
                    "(symlinks in a state path are refused: register its real path)") from e
            os.close(fd)
            fd = nfd
            done += b"/" + p
    except BaseException:
        os.close(fd)
        raise
    return fd


def mount_roots(under: str) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every mount point strictly below `under` (from mountinfo). Bind
    mounts of the same filesystem keep st_dev, so a device comparison alone misses them."""
    prefix = os.fsencode(os.path.normpath(under)).rstrip(b"/") + b"/"
    out: set[tuple[int, int]] = set()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4])
        if point.startswith(prefix):
            try:
                st = os.lstat(point)
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
    return out


def empty_dir_at(path: str) -> bool:
    """Whether `path` is, right now, a directory (not a symlink to one) with no entries; a
    hint only (a restore decides again on the fds it opened without following a link)."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False
