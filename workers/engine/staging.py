"""The staging names beside a state path, and recovery of what a crashed restore left.

A directory restore builds `<parent>/.<base>.restore-<snapshot_id>` and swaps it with the
state path (see restorer.py); anything named `.<base>.restore-*` afterwards is a leftover
that cleanup() removes, rolling a journaled swap forward first when needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from . import fsutil
from .manifest import DIR, HARDLINK, Entry
from .model import EngineError, StateInvalid
from .patcher import undo as undo_patch
from .progress import Progress

FLUSH_EVERY = 0.1  # seconds


def split_state(path: str) -> tuple[str, bytes]:
    path = os.path.normpath(path)
    if not os.path.isabs(path) or path == "/":
        raise StateInvalid(f"state path must be an absolute path below /: {path!r}")
    parent, base = os.path.split(path)
    return parent, os.fsencode(base)


def _leftovers(parent_fd: int, base: bytes) -> list[bytes]:
    prefix = b"." + base + b".restore-"
    return [n for n in fsutil.iter_names(parent_fd) if n.startswith(prefix)]


def cleanup(parent_fd: int, base: bytes, parent_path: str) -> None:
    """Finish or undo whatever a crashed restore left beside the state path."""
    journal = b"." + base + b".restore-journal"
    try:
        jfd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    else:
        with os.fdopen(jfd, "rb") as f:
            staging = f.read()
        try:
            os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            if staging:  # crashed between the two renames: roll forward
                os.rename(staging, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                os.fsync(parent_fd)
        os.unlink(journal, dir_fd=parent_fd)
    undo_patch(parent_fd, base)  # before its work directory goes with the leftovers
    names = _leftovers(parent_fd, base)
    if names:
        mounts = fsutil.mount_roots(parent_path)
        for name in names:
            try:
                fsutil.remove_tree(parent_fd, name, mounts)
            except RecursionError:  # absurdly deep leftover: leave it rather than fail
                continue


def validate(entries: list[Entry]) -> None:
    """A manifest must describe a tree: root first, parents before children, no '..'."""
    if not entries or entries[0].path != b"" or entries[0].kind != DIR:
        raise EngineError("manifest tree does not start with its root directory")
    dirs = {b""}
    seen: set[bytes] = set()
    for e in entries[1:]:
        fsutil.split(e.path)
        parent = e.path.rpartition(b"/")[0]
        if parent not in dirs or e.path in seen:
            raise EngineError(f"manifest tree is malformed at {e.path!r}")
        seen.add(e.path)
        if e.kind == DIR:
            dirs.add(e.path)
        if e.kind == HARDLINK and e.target not in seen:
            raise EngineError(f"hard link {e.path!r} precedes its target")


def swap(parent_fd: int, staging: bytes, base: bytes, exists: bool, parent_path: str) -> None:
    """Put the staging tree at the state path in one step (exchanging it with the current
    tree, which is left under the staging name for the caller to remove)."""
    try:
        flags = fsutil.RENAME_EXCHANGE if exists else fsutil.RENAME_NOREPLACE
        fsutil.renameat2(parent_fd, staging, parent_fd, base, flags)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        _swap_journaled(parent_fd, staging, base, exists, parent_path)
    os.fsync(parent_fd)


def _swap_journaled(parent_fd: int, staging: bytes, base: bytes, exists: bool,
                    parent_path: str) -> None:
    journal = b"." + base + b".restore-journal"
    old = b"." + base + b".restore-old"
    fsutil.create_durable(parent_fd, journal, staging)
    if exists:
        os.rename(base, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    os.rename(staging, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    os.fsync(parent_fd)
    os.unlink(journal, dir_fd=parent_fd)
    if exists:  # the caller removes `staging`; the old tree is here
        fsutil.remove_tree(parent_fd, old, fsutil.mount_roots(parent_path))


class Flusher:
    """Flushes the filesystem in the background every FLUSH_EVERY seconds, so the
    disk writes while the tree is built and the final syncfs (the restore's durability
    point, before the swap) has little left to do."""

    def __init__(self, path: str, progress: Progress) -> None:
        self.path, self.progress = path, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            with contextlib.suppress(OSError):
                fsutil.syncfs(self.path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
