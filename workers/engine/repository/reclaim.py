"""Reclaim: delete the objects no committed snapshot references (mark, then sweep).

The mark is the same on every backend (marked_keys). file:// sweeps at once under the
exclusive flock (locks.py): no capture or restore runs while it is held, so nothing can
reference what it deletes. s3:// condemns, then sweeps a cycle later (s3reclaim.py)."""

from __future__ import annotations

from ..model import ReclaimStats, SnapshotNotFound
from .backend import LocalBackend
from .locks import RepoLock
from .repository import PACKIDX, Repository, chunk_key, pack_data_key


def marked_keys(repo: Repository) -> set[str]:
    """Data keys referenced by every committed manifest (fresh LIST of snapshots/). An
    unreadable manifest raises: never sweep when the mark may be incomplete."""
    marked: set[str] = set()
    for sid in repo.manifest_ids():
        try:
            ids = repo.object_ids(sid)
        except SnapshotNotFound:
            continue  # deleted while we listed
        marked.update(chunk_key(c) for c in ids)
    return marked


def reclaim_local(repo: Repository, backend: LocalBackend, lock: RepoLock, *,
                  wait: bool) -> ReclaimStats:
    with lock.exclusive(wait=wait) as got:
        if not got:
            return ReclaimStats(objects_removed=0, bytes_removed=0, skipped_locked=True)
        marked = marked_keys(repo)
        removed = freed = kept = 0
        # A pack's index goes first: an index never names a pack that was removed.
        for key, size, _mtime in backend.list(PACKIDX + "/"):
            if pack_data_key(key) not in marked:
                backend.delete(key)
                freed += size
            else:
                kept += size
        for key, size in repo.list_chunks():
            if key not in marked:
                backend.delete(key)
                removed += 1
                freed += size
            else:
                kept += size
        backend.clean_tmp()  # no writer can be running under the exclusive lock
        return ReclaimStats(objects_removed=removed, bytes_removed=freed,
                            skipped_locked=False, bytes_kept=kept)
