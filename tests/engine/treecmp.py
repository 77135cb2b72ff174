"""Compare two directory trees exactly, never following a symlink.

Compared per entry: type, mode (incl. setuid/setgid/sticky), uid, gid, mtime_ns (files,
symlinks, dirs, special files), size and bytes of files, the map of data and holes (sparseness),
symlink targets, rdev, xattrs, and hard-link grouping (which relative paths share an inode).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

PathLike = str | bytes | os.PathLike[str]


def _xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def data_extents(path: bytes) -> list[tuple[int, int]]:
    """Where a file holds data (SEEK_DATA/SEEK_HOLE), the rest being holes.

    Compared instead of st_blocks, which also counts the filesystem's own extent metadata
    and so differs between two equally sparse files written in a different order.
    """
    extents: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, stop))
            pos = stop
    finally:
        os.close(fd)
    return extents


def describe(root: PathLike, *, root_mtime: bool = True) -> dict[bytes, dict[str, Any]]:
    root_b = os.fsencode(root)
    out: dict[bytes, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}

    def visit(rel: bytes) -> None:
        path = os.path.join(root_b, rel) if rel else root_b
        st = os.lstat(path)
        d: dict[str, Any] = {"type": stat.S_IFMT(st.st_mode), "mode": st.st_mode,
                             "uid": st.st_uid, "gid": st.st_gid, "xattrs": _xattrs(path)}
        if rel or root_mtime:
            d["mtime_ns"] = st.st_mtime_ns
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                d["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
            d["size"] = st.st_size
            d["data_extents"] = data_extents(path)
        elif stat.S_ISLNK(st.st_mode):
            d["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            d["rdev"] = st.st_rdev
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        out[rel] = d
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(rel, name) if rel else name)

    visit(b"")
    for group in inodes.values():
        for p in group:
            out[p]["links"] = sorted(group)
    return out


def diff(a: PathLike, b: PathLike, *, root_mtime: bool = True) -> list[str]:
    da, db = describe(a, root_mtime=root_mtime), describe(b, root_mtime=root_mtime)
    problems: list[str] = []
    for p in sorted(set(da) | set(db)):
        if p not in da:
            problems.append(f"{p!r}: only in {b!r}")
        elif p not in db:
            problems.append(f"{p!r}: only in {a!r}")
        else:
            for k in sorted(set(da[p]) | set(db[p])):
                if da[p].get(k) != db[p].get(k):
                    problems.append(f"{p!r}: {k} differs: {da[p].get(k)!r} != {db[p].get(k)!r}")
    return problems


def assert_same(a: PathLike, b: PathLike, *, root_mtime: bool = True) -> None:
    problems = diff(a, b, root_mtime=root_mtime)
    assert not problems, "trees differ:\n" + "\n".join(problems[:50])
