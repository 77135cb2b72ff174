"""Lock objects in the bucket: capture/restore (shared) vs reclaim (exclusive), fleet-wide.

The local flock (locks.py) protects nothing once captures run on other machines. On s3://
the same RepoLock interface is backed by objects under locks/, after restic's lock files
(internal/restic/lock.go): shared locks for writers and readers, one exclusive lock for the
reclaim, refreshed every stale/6 while held, stale after `lock_stale` (30 min) when not
refreshed (its holder died), and a pause before checking for the other kind so a listing that lags
behind writes still shows every lock that matters. The full reclaim protocol, and why it
holds under host deaths, lagging listings and skewed clocks, is in s3reclaim.py.

- `locks/exclusive`: created with If-None-Match: * (the store refuses a second create),
  so at most one reclaim runs fleet-wide. A stale one (its reclaim died) is replaced.
- `locks/shared/<random>`: one per running capture or restore.
- Staleness is judged by the store's clock only (LastModified of the lock against
  LastModified of a probe just written), never a host's clock: hosts may disagree by
  minutes and nothing here notices.
- A holder that could not refresh its lock in time (partitioned from the store, paused,
  or its host suspended: timed with CLOCK_BOOTTIME) must assume it lost it: check_held()
  raises before a reclaim deletes anything and before a capture commits its manifest, so
  the job is retried from the start.
  Lost stays lost: a refresh that gets through after such a gap does not make the lock
  held again (the other host may have acted on it as dead in between).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

from .. import tuning
from ..model import StorageUnavailable
from .s3backend import S3Backend, server_now

EXCLUSIVE_KEY = "locks/exclusive"
SHARED_PREFIX = "locks/shared/"


class LockLost(StorageUnavailable):
    """This process could not refresh its repository lock in time: another host may
    consider it dead, so the operation stops before it deletes or commits anything."""



def since_boot() -> float:
    """Seconds since boot, a suspend included (CLOCK_BOOTTIME): time.monotonic stops while
    the host sleeps, so a holder suspended past `stale` woke up thinking its lock fresh
    while every other host (and the store's clock) had seen it go stale."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class _Held:
    """A lock object this process holds, rewritten by a thread every `refresh` seconds."""

    def __init__(self, locks: S3Locks, key: str, body: bytes) -> None:
        self.locks, self.key, self.body = locks, key, body
        self.refreshed = since_boot()
        # Once set, for good: a gap in the refreshes may have let another host act on the
        # lock as dead (a reclaim deleting what this capture references, a capture
        # committing what this reclaim's mark never saw), and a later refresh that gets
        # through undoes none of that.
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3lock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.locks.refresh):
            if not self.fresh():
                self.lost = True
                return
            try:
                if self.key == EXCLUSIVE_KEY and self.locks.owner_of(self.key) != self.body:
                    self.lost = True
                    return  # taken over (we were presumed dead): never write it back
                started = since_boot()
                self.locks.backend.put(self.key, self.body, durable=True)
            except Exception:
                continue  # the store is down: check_held() decides when it is too late
            if not self.fresh():
                # It landed too late (the store was away, the put retried): others may
                # have found it stale in the meantime.
                self.lost = True
                return
            self.refreshed = started  # the object is at least this new

    def fresh(self) -> bool:
        # Refreshes are `refresh` apart; a lock not rewritten for stale - refresh may be
        # stale to others by the time this holder acts on it.
        return not self.lost and (
            since_boot() - self.refreshed < self.locks.stale - self.locks.refresh)

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            if self.key != EXCLUSIVE_KEY or self.locks.owner_of(self.key) == self.body:
                self.locks.backend.delete(self.key)


class S3Locks:
    """RepoLock over lock objects (see the module doc)."""

    def __init__(self, backend: S3Backend, *, stale: float, settle: float) -> None:
        """stale: seconds without a refresh after which a lock is dead (restic: 30 min);
        holders refresh every stale/6 (restic: 5 min). settle: seconds between writing a
        lock and listing for the others (a bound on how far a listing lags behind)."""
        self.backend = backend
        self.stale, self.refresh, self.settle = stale, stale / 6, settle
        self._held: set[_Held] = set()
        self._lock = threading.Lock()
        self.waits = 0  # times a shared lock waited for a reclaim (tests observe it)

    def _body(self, exclusive: bool) -> bytes:
        return json.dumps({
            "exclusive": exclusive,
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "nonce": os.urandom(8).hex(), "time": time.time(),  # time: for people only
        }).encode()

    def owner_of(self, key: str) -> bytes | None:
        try:
            return self.backend.get(key)
        except FileNotFoundError:
            return None

    def _is_stale(self, key: str, now: datetime | None = None) -> bool:
        """Is key's last write older than `stale` by the store's clock? now: a time read
        off that clock (default: a probe written now)."""
        lock = self.backend.head(key)
        if lock is None:
            return True
        now = server_now(self.backend) if now is None else now
        return now - lock.modified > timedelta(seconds=self.stale)

    def _hold(self, key: str, body: bytes) -> _Held:
        held = _Held(self, key, body)
        with self._lock:
            self._held.add(held)
        return held

    def _drop(self, held: _Held) -> None:
        with self._lock:
            self._held.discard(held)
        held.release()

    def check_held(self) -> None:
        """Raise LockLost when a lock of this process missed its refreshes (see doc)."""
        with self._lock:
            late = [h.key for h in self._held if not h.fresh()]
        if late:
            raise LockLost(f"repository lock {late[0]} in bucket {self.backend.bucket!r} "
                           f"could not be refreshed in time; stopping before any change")

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        key = SHARED_PREFIX + os.urandom(12).hex()
        body = self._body(False)
        delay = 0.2
        while True:
            self.backend.put(key, body, durable=True)
            if self.backend.head(EXCLUSIVE_KEY) is None:
                break
            mine = self.backend.head(key)
            if self._is_stale(EXCLUSIVE_KEY, mine.modified if mine else None):
                break
            # A reclaim holds the repository: step aside (it may be waiting for us to
            # go) and come back; a live reclaim refreshes its lock, a dead one goes stale.
            self.backend.delete(key)
            self.waits += 1
            time.sleep(delay)
            delay = min(delay * 2, tuning.S3_LOCK_POLL_MAX)
        held = self._hold(key, body)
        try:
            yield
        finally:
            self._drop(held)

    @contextlib.contextmanager
    def exclusive(self, *, wait: bool) -> Iterator[bool]:
        while True:
            held = self._try_exclusive()
            if held is not None or not wait:
                break
            time.sleep(min(self.settle, tuning.S3_LOCK_POLL_MAX))
        if held is None:
            yield False
            return
        try:
            yield True
        finally:
            self._drop(held)

    def _try_exclusive(self) -> _Held | None:
        body = self._body(True)
        if not self.backend.put_exclusive(EXCLUSIVE_KEY, body):
            if not self._is_stale(EXCLUSIVE_KEY):
                return None  # a live reclaim elsewhere
            # Its holder died: replace it. Two hosts replacing it at once both re-check
            # ownership after the pause below; the loser backs off.
            self.backend.delete(EXCLUSIVE_KEY)
            if not self.backend.put_exclusive(EXCLUSIVE_KEY, body):
                return None
        time.sleep(self.settle)  # let a lagging listing show shared locks written before ours
        if self.owner_of(EXCLUSIVE_KEY) != body:
            return None
        now = server_now(self.backend)
        live = False
        for key, _size, mtime_ns in self.backend.list_fresh(SHARED_PREFIX):
            age = now.timestamp() - mtime_ns / 1e9
            if age > self.stale:
                self.backend.delete(key)  # a capture or restore whose host died
            else:
                live = True
        if live:
            self.backend.delete(EXCLUSIVE_KEY)
            return None
        return self._hold(EXCLUSIVE_KEY, body)
