"""Repository lock between writers (capture, restore) and the garbage collector (reclaim).

Protocol
--------
* capture and restore hold the lock SHARED for their whole run: from choosing the parent
  snapshot / loading the manifest, through storing chunks, up to and including the
  manifest commit (capture) or the last chunk read (restore).
* reclaim takes it EXCLUSIVE, then marks (every chunk referenced by a committed manifest)
  and sweeps (everything else, plus temp files of killed writers). It never blocks a
  worker for long: by default it only tries, and reports skipped_locked=True when busy so
  the caller retries later; wait=True blocks.
* Therefore a chunk a running capture has stored, or found already stored and is about to
  reference, can never be swept: the sweep cannot run until the capture has either
  committed its manifest (the chunk is now marked) or died.
* The local implementation is fcntl.flock on <repo>/locks/repo.lock. The kernel drops a
  flock when its holder dies (even SIGKILL), so there are no stale locks. flock works
  per open file description, so two Engine objects in one process also exclude each other.
  For several hosts on S3 the same interface would be backed by a Redis lease (readers
  count + writer flag with TTL renewed by a heartbeat).
* A restore or recovery of a state also holds `<repo>/locks/state-<hash of its path>.lock`
  EXCLUSIVE, without waiting: a job taken over while its first worker still runs (after a
  Redis outage longer than the heartbeat timeout) fails with a retried error instead of
  cleaning up, undoing or swapping under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Protocol


class RepoLock(Protocol):
    def shared(self) -> contextlib.AbstractContextManager[None]: ...
    def exclusive(self, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
        """Yields True when the exclusive lock was obtained, False when busy (wait=False)."""
        ...


class FlockLock:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def exclusive(self, *, wait: bool) -> Iterator[bool]:
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)
