"""The rebuild's swap: the staging tree beside a state path put in its place in one step.

A directory restore builds `<parent>/.<base>.restore-<snapshot_id>` and swaps it with the
state path (see restorer.py); anything named `.<base>.restore-*` afterwards is a leftover
that recovery.cleanup() removes, rolling a journaled swap forward first when needed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from .. import tuning
from ..fs import fsutil
from ..progress import Progress


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
    point, before the swap) has little left to do."""

    def __init__(self, path: str, progress: Progress) -> None:
        self.path, self.progress = path, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restore-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(tuning.FLUSH_EVERY):
            with contextlib.suppress(OSError):
                fsutil.syncfs(self.path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
