"""Comparing a restore with its source (bench/engine.py): content (diff -r, cmp) and every
entry's type, mode, owner, mtime ns, size, link target, rdev, xattrs and hard links."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

_SPECIAL = ("fifo", "character special file", "block special file", "socket")


def _diff(src: Path, dst: Path) -> list[str]:
    p = subprocess.run(
        ["diff", "-r", "--no-dereference", "-q", str(src), str(dst)], capture_output=True
    )
    lines = p.stdout.decode(errors="replace").splitlines()
    return [ln for ln in lines if not any(f"is a {k} while" in ln for k in _SPECIAL)]


def _meta(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    try:
        xattrs = sorted(
            (k, os.getxattr(path, k, follow_symlinks=False))
            for k in os.listxattr(path, follow_symlinks=False)
        )
    except OSError:
        xattrs = []
    size = st.st_size if kind in (stat.S_IFREG, stat.S_IFLNK) else 0
    link = os.readlink(path) if kind == stat.S_IFLNK else None
    mtime = None if kind == stat.S_IFLNK else st.st_mtime_ns  # symlink mtimes: not compared
    return (kind, st.st_mode, st.st_uid, st.st_gid, mtime, size, link, st.st_rdev, xattrs)


_FIELDS = ("type", "mode", "uid", "gid", "mtime_ns", "size", "link", "rdev", "xattrs")


def _entries(root: Path) -> dict[str, Path]:
    out = {".": root}
    for d, ds, fs in os.walk(root):
        for name in ds + fs:
            p = Path(d, name)
            out[str(p.relative_to(root))] = p
    return out


def _link_groups(entries: dict[str, Path]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for rel, p in entries.items():
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault(st.st_ino, set()).add(rel)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def compare_trees(src: Path, dst: Path) -> list[str]:
    """Differences in content (diff -r) and metadata (lstat, xattrs, hard links)."""
    problems = _diff(src, dst)
    a, b = _entries(src), _entries(dst)
    problems += [f"missing in restore: {k}" for k in sorted(a.keys() - b.keys())]
    problems += [f"extra in restore: {k}" for k in sorted(b.keys() - a.keys())]
    for rel in sorted(a.keys() & b.keys()):
        ma, mb = _meta(a[rel]), _meta(b[rel])
        bad = [f for f, x, y in zip(_FIELDS, ma, mb, strict=True) if x != y]
        if bad:
            problems.append(f"metadata differs ({', '.join(bad)}): {rel}")
    if _link_groups(a) != _link_groups(b):
        problems.append("hard-link groups differ")
    return problems


def compare_images(src: Path, dst: Path) -> list[str]:
    if not dst.is_file():
        return [f"{dst} missing"]
    p = subprocess.run(["cmp", "-s", str(src), str(dst)])
    return [] if p.returncode == 0 else ["image content differs (cmp)"]


def describe(problems: list[str]) -> str:
    if not problems:
        return "identical (content, type, mode, owner, mtime ns, xattrs, hard links)"
    shown = "; ".join(problems[:4])
    return f"{len(problems)} difference(s): {shown}" + (" ..." if len(problems) > 4 else "")
