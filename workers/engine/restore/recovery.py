"""Recovery of what a killed restore left beside a state path.

A rebuild leaves `.<base>.restore-<id>` (its staging tree, see staging.py) and maybe the
swap journal `.<base>.restore-journal`; a patch leaves its work directory
`.<base>.restore-patch` with its undo journal (see patchjournal.py). cleanup() rolls a
journaled swap forward, undoes an uncommitted patch, then removes every leftover. Every
restore, capture and recover() runs it first.
"""

from __future__ import annotations

import os

from ..fs import fsutil
from .patchjournal import undo as undo_patch


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
