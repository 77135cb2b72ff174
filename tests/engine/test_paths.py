"""fsutil.split: the check that a manifest path cannot escape the state root (every
restore runs it on every entry, and the tree walks trust what it passes). It must refuse
exactly the paths with an empty, '.' or '..' component."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from workers.engine import Engine, tuning
from workers.engine.fs import fsutil

from .conftest import dir_state, make_meta

PIECES = [b"", b".", b"..", b"a", b"...", b".a", b"a.", b"..a", b"b c", b"\xff"]


def _by_components(path: bytes) -> bool:
    return bool(path) and any(p in (b"", b".", b"..") for p in path.split(b"/"))


def test_split_refuses_exactly_an_empty_dot_or_dotdot_component() -> None:
    for n in range(1, 5):
        for parts in itertools.product(PIECES, repeat=n):
            path = b"/".join(parts)
            if _by_components(path):
                with pytest.raises(ValueError, match="unsafe path"):
                    fsutil.split(path)
            else:
                assert fsutil.split(path) == (path.split(b"/") if path else [])


@pytest.mark.parametrize("writers", ["threads", "processes"])
def test_a_tree_whose_paths_exceed_path_max_restores(
        writers: str, monkeypatch: pytest.MonkeyPatch, engine: Engine, tmp_path: Path) -> None:
    """Paths longer than PATH_MAX (4096) are the kernel's to hold and the capture's to walk
    (each directory by its fd): the restore made directories, files and their metadata by
    path beneath the staging fd, and every restore of such a snapshot failed with
    ENAMETOOLONG (in the thread path and the writer processes alike)."""
    src = tmp_path / "srv"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(20):  # 20 x 251 bytes: a 5,000-byte path
            name = b"d%02d" % i + b"x" * 248
            os.mkdir(name, 0o750, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd), "wb") as f:
            f.write(b"at the bottom")
    finally:
        os.close(fd)
    engine.capture(make_meta(1), dir_state(src))
    if writers == "processes":
        monkeypatch.setattr(tuning, "RESTORE_PROCESS_THRESHOLD", 0)
    out = tmp_path / "out"
    engine.restore(1, dir_state(out))
    assert _by_fds(out) == _by_fds(src)


def _by_fds(root: Path) -> list[tuple[bytes, int, int, bytes]]:
    """(name, mode, mtime, content of a file) of every entry down a one-way-down chain,
    through directory fds (a path this long is refused by path-based calls)."""
    out: list[tuple[bytes, int, int, bytes]] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            [name] = os.listdir(fd)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            data = b""
            if not stat.S_ISDIR(st.st_mode):
                with open(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as f:
                    data = f.read()
            out.append((os.fsencode(name), st.st_mode, st.st_mtime_ns, data))
            if data or not stat.S_ISDIR(st.st_mode):
                return out
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
