"""Reclaim on a shared bucket: condemn, then sweep a cycle later, under the exclusive lock.

Protocol (s3:// only; file:// keeps the flock and sweeps at once, see locks.py)
-------------------------------------------------------------------------------
Anchors: restic's lock objects (s3locks.py: shared vs exclusive, refreshed, stale after
30 min), kopia's safety margins (no object younger than the margin is deleted; an object
must be found unreferenced by two GC cycles, the margin apart, before it goes) and Proxmox
Backup Server's mark-then-sweep (mark from every index, sweep only what is older than the
cut-off), with one change: every time compared is the store's own LastModified clock.

1. Writers (capture, restore) hold a shared lock object for their whole run. A capture,
   after taking it, reads `reclaim/condemned` (one GET; listcache.py) and treats every key
   in it as absent: it stores such content again (a new PUT, a new LastModified) instead
   of referencing the old object. Its list of stored objects comes from a per-host cache
   that the marker invalidates, so no capture trusts an object a reclaim may delete.
2. A reclaim takes the exclusive lock (create-only PUT of locks/exclusive), waits
   `lock_settle` seconds, lists locks/shared/ and gives up when a live one exists (stale
   ones, of dead hosts, are deleted). While it holds the lock no capture starts: a
   capture that finds the exclusive lock steps aside and retries.
3. Mark: every committed manifest is read (a fresh LIST of snapshots/, never the cache);
   an unreadable manifest stops the reclaim before anything is deleted.
4. Sweep (cycle 2): the previous marker, written at T1 by the store's clock, is honoured
   only when now - T1 >= the margin (`reclaim_margin`, 1 h). A key of it is deleted only
   if it is still unreferenced and its LastModified < T1 (not stored again since; the
   store's clock has whole seconds, so the same second counts as since). Index objects
   go before their packs.
5. Condemn (cycle 1): every unreferenced object older than the margin is written to a new
   marker; nothing is deleted. A marker that is not yet a margin old is left as it is (it
   would otherwise never age).

Packs (packwriter.py: a capture's chunks, small and big, share pack objects)
- The unit of deletion is the object. A pack is referenced when any committed manifest
  references any of its members (Entry.pack, Entry.slices name the pack), and then it is
  kept whole, its dead members' bytes with it; it is condemned and swept, as any object,
  only once no manifest references any member. The same rule holds on file://.
- Why keep, not repack: manifests address members by (pack, offset) and are the commit
  points, never rewritten, so a member cannot move to another pack while a snapshot
  names it. The bytes a partly dead pack keeps are reported in bytes_kept. (A remedy
  that needs no rewrite, not built yet: the marker could list mostly dead packs for
  captures to treat as absent, as condemned keys are, so new snapshots store those live
  members again and the old pack dies with the snapshots that still name it.)
- A pack's index object (packidx/<pack>) is referenced exactly when its pack is, and is
  deleted first (an index never names a pack that is gone).

Why it holds
- A host dies mid-capture: its shared lock is not refreshed and is stale after `lock_stale`;
  the next reclaim deletes it. Its uploaded objects are unreferenced: condemned, then
  swept a cycle later, unless a rerun stored them again (newer LastModified: kept).
- A host dies mid-reclaim: its exclusive lock goes stale and is replaced; deletes are
  idempotent and the marker is still there, so the next reclaim resumes the sweep.
  A reclaim that is merely slow stops when it could not refresh its lock in time
  (check_held before every batch of deletes), before another can take over.
- A listing that lags behind writes: the mark lists snapshots/ again at every cycle, the
  margin apart, so a manifest committed just before cycle 1 (missed by its LIST) is seen
  by cycle 2 and its objects are kept; a shared lock written just before the exclusive one
  is seen after the settle pause; a capture that began after the marker read it (GET after PUT is
  strongly consistent on S3, SeaweedFS and Ceph) and so references no condemned object.
- Clocks a few minutes apart: only the store's clock is compared (LastModified of the
  marker, of the objects, of the locks and of a probe written now), so host clocks do
  not enter. A host's clock only measures its own refresh intervals (CLOCK_BOOTTIME, so
  a suspend counts: s3locks.since_boot).
- If-None-Match: the exclusive lock needs a store that refuses a second create; every
  reclaim first checks that the store does (a create-only PUT twice on a probe key) and
  refuses to run on one that ignores it (rclone's S3 server, for one) rather than risk two
  reclaims at once. Captures and restores need no conditional write and work there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta

import msgspec

from ..model import EngineError, ReclaimStats
from .listcache import CONDEMNED_KEY, Condemned
from .reclaim import marked_keys
from .repository import PACKIDX, Repository, pack_data_key
from .s3backend import S3Backend, server_now
from .s3locks import S3Locks

BATCH = 1000


def _referenced(key: str, marked: set[str]) -> bool:
    if key.startswith(PACKIDX + "/"):
        return pack_data_key(key) in marked
    return key in marked


def reclaim(repo: Repository, backend: S3Backend, locks: S3Locks, *, wait: bool,
            margin: float) -> ReclaimStats:
    """margin: StorageOptions.reclaim_margin, seconds (kopia-style safety margin)."""
    require_if_none_match(backend)  # 4 small requests per reclaim: checked every time
    with locks.exclusive(wait=wait) as got:
        if not got:
            return ReclaimStats(objects_removed=0, bytes_removed=0, skipped_locked=True)
        marked = marked_keys(repo)  # raises on an unreadable manifest: nothing deleted
        now = server_now(backend)
        listing: dict[str, tuple[int, int]] = {}
        for prefix in (PACKIDX + "/", "data/"):
            listing.update((k, (s, m)) for k, s, m in backend.list_fresh(prefix))
        removed = freed = 0
        prior = backend.head(CONDEMNED_KEY)
        if prior is not None:
            age = (now - prior.modified).total_seconds()
            if age < margin:
                return ReclaimStats(objects_removed=0, bytes_removed=0, skipped_locked=False,
                                    bytes_kept=_data_bytes(listing))
            t1_ns = int(prior.modified.timestamp() * 1e9)
            try:
                condemned = msgspec.msgpack.decode(backend.get(CONDEMNED_KEY), type=Condemned)
            except (FileNotFoundError, msgspec.DecodeError):
                condemned = Condemned(cycle="", keys=[])
            doomed = [k for k in condemned.keys
                      if k in listing and not _referenced(k, marked) and listing[k][1] < t1_ns]
            # an index never names a pack that is gone: indexes first
            doomed.sort(key=lambda k: not k.startswith(PACKIDX + "/"))
            for batch in _batches(doomed):
                locks.check_held()
                backend.delete_many(batch)
                for k in batch:
                    size = listing.pop(k)[0]
                    freed += size
                    removed += not k.startswith(PACKIDX + "/")
        cutoff_ns = int((now - timedelta(seconds=margin)).timestamp() * 1e9)
        fresh = [k for k, (_s, m) in sorted(listing.items())
                 if not _referenced(k, marked) and m <= cutoff_ns]
        locks.check_held()
        if fresh:
            body = Condemned(cycle=os.urandom(8).hex(), keys=fresh)
            backend.put(CONDEMNED_KEY, msgspec.msgpack.encode(body), durable=True)
        elif prior is not None:
            backend.delete(CONDEMNED_KEY)
        if backend.cache is not None:
            backend.cache.invalidate()
        return ReclaimStats(objects_removed=removed, bytes_removed=freed, skipped_locked=False,
                            bytes_kept=_data_bytes(listing))


def _data_bytes(listing: dict[str, tuple[int, int]]) -> int:
    return sum(size for key, (size, _m) in listing.items() if key.startswith("data/"))


def _batches(keys: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(keys), BATCH):
        yield keys[i:i + BATCH]


def require_if_none_match(backend: S3Backend) -> None:
    """Refuse to reclaim on a store that ignores If-None-Match (two reclaims could run)."""
    if not backend.honours_if_none_match():
        raise EngineError(
            f"the object store behind bucket {backend.bucket!r} ignores If-None-Match on "
            f"PUT, so reclaims on several hosts could not exclude each other; reclaim is "
            f"refused on it (captures and restores work)")
