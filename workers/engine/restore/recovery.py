"""Recovery of what a killed restore left beside a state path.

A rebuild leaves `.<base>.restore-<id>` (its staging tree, see staging.py) and maybe the
swap journal `.<base>.restore-journal`; a patch leaves its work directory
`.<base>.restore-patch` with its undo journal (see patchjournal.py). cleanup() rolls a
journaled swap forward, undoes an uncommitted patch, then removes every leftover. Every
restore, capture and recover() runs it first. A leftover that cannot be removed now (a
tenant still filling the old tree, an immutable file) never fails it nor blocks a later
restore: it is renamed aside to `.<base>.restore-trash-<random>` and left to the janitor
(fs/removal.py).
"""

from __future__ import annotations

import os
import stat

from ..fs import fsutil


def _leftovers(parent_fd: int, base: bytes) -> list[bytes]:
    """Every name a restore leaves beside the state: its staging tree, swap journal and
    patch work directory all begin with this prefix."""
    prefix = b"." + base + b".restore-"
    return [n for n in fsutil.iter_names(parent_fd) if n.startswith(prefix)]


def _journaled_staging(parent_fd: int, base: bytes, journal: bytes) -> bytes | None:
    """The staging tree a swap journal names, if the journal is one a swap wrote (see
    staging.py): a regular file naming `.<base>.restore-<id>`, a directory beside it.
    The state's parent may be a tree its tenant controls: a journal planted there, naming
    `/root` or `../..`, took the roll-forward to move that directory to the state path,
    into the tenant's hands; a fifo planted under its name blocked the open for good.
    Anything else under the journal's name is a leftover like any other (removed)."""
    try:
        jfd = fsutil.open_regular(journal, parent_fd)
    except OSError:
        return None  # none, or not a file a swap wrote
    with os.fdopen(jfd, "rb") as f:
        staging = f.read(len(base) + 64)
    prefix = b"." + base + b".restore-"
    if not (staging.startswith(prefix) and staging[len(prefix):].isdigit()):
        return None
    try:
        st = os.stat(staging, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return staging if stat.S_ISDIR(st.st_mode) else None


def cleanup(parent_fd: int, base: bytes, parent_path: str) -> None:
    """Finish or undo whatever a crashed restore left beside the state path."""
    if not _leftovers(parent_fd, base):
        return  # the common case (every capture asks): nothing to import, nothing to do
    # Imported here: a capture that finds nothing left pays neither the patch's modules nor
    # removal's (secrets, hashlib), ~8 ms of every fresh process's start.
    from .patchjournal import undo as undo_patch

    journal = b"." + base + b".restore-journal"
    staging = _journaled_staging(parent_fd, base, journal)
    if staging is not None:
        try:
            os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            # crashed between the two renames: roll forward
            os.rename(staging, base, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            os.fsync(parent_fd)
        os.unlink(journal, dir_fd=parent_fd)
    undo_patch(parent_fd, base)  # before its work directory goes with the leftovers
    # Every leftover, also one the janitor is removing in the background (a live restore's
    # old tree): this operation may need its space.
    for name in _leftovers(parent_fd, base):
        dispose(parent_fd, parent_path, base, name)


def dispose(parent_fd: int, parent_path: str, base: bytes, name: bytes, *,
            background: bool = False) -> None:
    """Remove a leftover beside the state, or set it aside for the janitor (never fails);
    background: set aside for the janitor at once."""
    from ..fs import removal

    removal.dispose(parent_fd, parent_path, name, b"." + base + b".restore-trash-",
                    background=background)
