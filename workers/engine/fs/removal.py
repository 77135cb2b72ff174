"""Removing a tree that a tenant may still be changing: the old tree a restore swapped
out (a process with its working directory inside keeps living there), or what an earlier
attempt left beside the state.

The walk is iterative: a 5,000-deep tree needs no recursion and at most
tuning.REMOVAL_MAX_FDS open directories (a deeper subtree is renamed up into the tree's
top and continued from there). It goes through directory fds only, never follows a
symlink, never enters another filesystem or a mount point, and takes every race as
normal: a name that vanished is done, a directory that became a symlink is unlinked as
one, a file that became a directory is walked. It answers whether the tree is gone
instead of raising; what it could not remove (a tenant refilling it, an immutable file, a
mount point) is logged and retried by the janitor thread in the background, with backoff.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time

from .. import tuning
from ..model import StateInvalid
from . import fsutil, statepath


def _token(n: int) -> bytes:
    """A random name part (hex of n bytes): os.urandom, as secrets.token_hex uses, without
    importing secrets (random, hashlib, hmac: ~9 ms of a fresh restore's start-up)."""
    return os.urandom(n).hex().encode()

log = logging.getLogger(__name__)

_GONE = errno.ENOENT
_NOT_DIR = (errno.ENOTDIR, errno.ELOOP)


def _lstat(name: bytes, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _children(fd: int) -> list[tuple[bytes, bool]]:
    """(name, is a directory by readdir's d_type) of an open directory."""
    try:
        with os.scandir(fd) as it:
            return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    except OSError:
        return []


class _Pass:
    """One pass over a tree: counts what it removed (progress) and what it could not."""

    def __init__(self, dev: int, mounts: set[tuple[int, int]]) -> None:
        self.dev, self.mounts = dev, mounts
        self.removed = 0
        self.stuck = 0

    def unlink(self, dfd: int, name: bytes) -> bool:
        """Unlink a non-directory; False when it turned out to be a directory."""
        try:
            os.unlink(name, dir_fd=dfd)
            self.removed += 1
        except IsADirectoryError:
            return False
        except OSError as e:
            if e.errno != _GONE:
                self.stuck += 1
        return True

    def rmdir(self, dfd: int, name: bytes) -> bool:
        try:
            os.rmdir(name, dir_fd=dfd)
            self.removed += 1
        except OSError as e:
            if e.errno == _GONE:
                return True
            if e.errno in _NOT_DIR:
                return self.unlink(dfd, name)
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                self.stuck += 1
            return False
        return True

    def open_dir(self, dfd: int, name: bytes) -> int | None:
        """The directory to descend into, else None: gone, a mount point (left in place),
        or no longer a directory (then unlinked as what it is now)."""
        st = _lstat(name, dfd)
        if st is None:
            return None
        if not stat.S_ISDIR(st.st_mode):
            self.unlink(dfd, name)
            return None
        if st.st_dev != self.dev or (st.st_dev, st.st_ino) in self.mounts:
            self.stuck += 1
            return None
        try:
            fd = os.open(name, fsutil.DIR_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno in _NOT_DIR:  # swapped for a symlink or a file meanwhile
                self.unlink(dfd, name)
            elif e.errno != _GONE:
                self.stuck += 1
            return None
        if os.fstat(fd).st_ino != st.st_ino:  # swapped between lstat and open: next round
            os.close(fd)
            return None
        return fd

    def empty(self, top: int) -> None:
        """Remove everything below the open directory `top` (not top itself)."""
        # per open directory: (fd, its name in its parent, children left to visit)
        stack: list[tuple[int, bytes, list[tuple[bytes, bool]]]] = [
            (os.dup(top), b"", _children(top))]
        moved = 0
        seen = -1  # `removed` when the top was last listed: no progress, no new listing
        rounds = 0
        try:
            while stack:
                fd, name, todo = stack[-1]
                if todo:
                    child, is_dir = todo.pop()
                    if not is_dir and self.unlink(fd, child):
                        continue
                    # too deep to hold open: continue from the top
                    if len(stack) >= tuning.REMOVAL_MAX_FDS:
                        moved += 1
                        try:
                            os.rename(child, b".deep-%d-%s" % (moved, _token(4)),
                                      src_dir_fd=fd, dst_dir_fd=top)
                            self.removed += 1  # progress: the top is listed again
                        except OSError as e:
                            if e.errno != _GONE:
                                self.stuck += 1
                        continue
                    sub = self.open_dir(fd, child)
                    if sub is not None:
                        stack.append((sub, child, _children(sub)))
                    continue
                if len(stack) > 1:
                    stack.pop()
                    os.close(fd)
                    self.rmdir(stack[-1][0], name)  # refilled meanwhile: the top's next round
                    continue
                if self.removed == seen or rounds >= tuning.REMOVAL_ROUNDS:
                    return
                seen, rounds = self.removed, rounds + 1
                stack[0] = (fd, name, _children(fd))
                if not stack[0][2]:
                    return
        finally:
            for fd, _n, _t in stack:
                os.close(fd)


def remove_tree(parent_fd: int, name: bytes, mounts: set[tuple[int, int]]) -> bool:
    """Remove parent/name, whatever it is; True once it is gone. Never raises for what
    the tree holds or how it changes meanwhile (see the module's doc)."""
    dev = os.fstat(parent_fd).st_dev
    for _ in range(tuning.REMOVAL_PASSES):
        p = _Pass(dev, mounts)
        top = p.open_dir(parent_fd, name)  # a non-directory is unlinked right there
        if top is not None:
            try:
                p.empty(top)
            finally:
                os.close(top)
            p.rmdir(parent_fd, name)
        if _lstat(name, parent_fd) is None:
            return True
    return False


def _remove_by_path(parent_path: str, name: bytes) -> bool:
    try:
        pfd = statepath.open_path(parent_path)
    except FileNotFoundError:
        return True  # the parent itself is gone, and the tree with it
    try:
        return remove_tree(pfd, name, statepath.mount_roots(parent_path))
    finally:
        os.close(pfd)


class Janitor:
    """Retries in a background thread, with backoff, the removal of trees that could not
    be removed at once; logs each failure and, after the last retry, gives up loudly."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._todo: dict[tuple[str, bytes], tuple[int, float]] = {}  # -> (attempts, due)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def schedule(self, parent_path: str, name: bytes, delay: float | None = None) -> None:
        """Remove parent_path/name in the background, first in `delay` seconds (default:
        the first retry delay)."""
        with self._lock:
            first = time.monotonic() + (tuning.JANITOR_RETRY_DELAYS[0] if delay is None
                                        else delay)
            self._todo.setdefault((parent_path, name), (0, first))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)
                self._thread.start()
        self._wake.set()

    def pending(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._todo)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._todo:
                    self._thread = None
                    return
                now = time.monotonic()
                due = [(k, a) for k, (a, t) in self._todo.items() if t <= now]
                wait = min(t for _a, t in self._todo.values()) - now
            if not due:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            for key, attempts in due:
                parent, name = key
                try:
                    done = _remove_by_path(parent, name)
                except (OSError, StateInvalid) as e:  # StateInvalid: a symlink on the way
                    log.warning("removing %s/%s: %s", parent, os.fsdecode(name), e)
                    done = False
                with self._lock:
                    if done:
                        del self._todo[key]
                        log.info("removed %s/%s in the background", parent, os.fsdecode(name))
                    elif attempts + 1 >= len(tuning.JANITOR_RETRY_DELAYS):
                        del self._todo[key]
                        log.error("could not remove %s/%s after %d attempts; remove it by hand",
                                  parent, os.fsdecode(name), attempts + 1)
                    else:
                        delay = tuning.JANITOR_RETRY_DELAYS[attempts + 1]
                        self._todo[key] = (attempts + 1, time.monotonic() + delay)
                        log.warning("could not remove %s/%s yet; retrying in %.0f s",
                                    parent, os.fsdecode(name), delay)


janitor = Janitor()
# A process forked for an operation (forked.py) has none of its parent's threads: a lock the
# parent's janitor thread held at the fork would be held forever, and a janitor that seems
# to run would never start one. The child starts empty; the parent keeps its own work.
os.register_at_fork(after_in_child=janitor._reset)


def dispose(parent_fd: int, parent_path: str, name: bytes, trash: bytes, *,
            background: bool = False) -> bool:
    """Remove parent/name now if possible; else rename it to `trash` + a random suffix (so
    its name is free for the next use, and the janitor only ever touches names no one will
    create again) and leave it to the janitor, logged. Never raises: once a restore has
    committed, nothing about its old tree can fail it. True when it is gone now.
    background: set it aside for the janitor at once (it starts right away), not removed
    here: removing a tree costs about a millisecond per file on a cold cache."""
    if background:
        try:
            new = trash + _token(8)
            os.rename(name, new, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as e:
            log.warning("setting %s/%s aside: %s", parent_path, os.fsdecode(name), e)
            return False  # still under its own name: the next cleanup takes it on
        janitor.schedule(parent_path, new, delay=0.0)
        return False
    try:
        if remove_tree(parent_fd, name, statepath.mount_roots(parent_path)):
            return True
        if not name.startswith(trash):
            new = trash + _token(8)
            os.rename(name, new, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            name = new
    except OSError as e:
        log.warning("removing %s/%s: %s", parent_path, os.fsdecode(name), e)
        return False  # still under its own name: the next cleanup takes it on
    log.warning("%s/%s could not be removed now; retrying in the background", parent_path,
                os.fsdecode(name))
    janitor.schedule(parent_path, name)
    return False
