"""Restore worker processes (parent side); see restoreworker.py for why and the protocol."""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
from collections.abc import Callable

import msgspec

from .backend import LocalBackend
from .model import EngineError, SnapshotCorrupt
from .repository import Repository
from .restoreworker import Request, Setup
from .subproc import WorkerProcess

PROCESSES = 2
WINDOW = 16  # files queued per worker: both stay busy, the parent never blocks on send
_CODE = "from workers.engine.restoreworker import main; main()"

Done = Callable[[int, int, int, int], None]  # entry index, ino, ctime_ns, bytes written


class RestorePool:
    """Started as early as possible (the workers' start-up overlaps the parent's reading of
    the manifest), then attached to the restore that feeds it."""

    def __init__(self, storage: str, snapshot_id: int, state_path: str, n: int) -> None:
        setup = msgspec.msgpack.encode(Setup(storage, snapshot_id, state_path))
        self.workers: list[WorkerProcess] = []
        self.owner: tuple[int, int] | None = None
        try:
            for _ in range(n):
                self.workers.append(WorkerProcess(_CODE, setup))
        except BaseException:
            self.close(kill=True)
            raise
        self.sel = selectors.DefaultSelector()
        for i, w in enumerate(self.workers):
            self.sel.register(w.res, selectors.EVENT_READ, i)
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(list[object]).decode

    def attach(self, progress: Callable[[int], None], poll: Callable[[], None], done: Done,
               owner: tuple[int, int] | None) -> None:
        self.progress, self.poll, self.done, self.owner = progress, poll, done, owner

    def submit(self, idx: int, fd: int, name: bytes) -> None:
        """Hand entry idx to the least busy worker: created as `name` in directory fd, or
        (name b"") written through the file fd. The caller keeps and closes its fd."""
        while True:
            w = min(self.workers, key=lambda x: x.inflight)
            if w.inflight < WINDOW:
                break
            self._receive(timeout=0.25)
        socket.send_fds(w.req, [self._enc.encode(Request(idx, name, self.owner))], [fd])
        w.inflight += 1
        self._receive(timeout=0)

    def finish(self) -> None:
        while any(w.inflight for w in self.workers):
            self._receive(timeout=0.25)

    def _receive(self, timeout: float) -> None:
        """Handle every complete frame the ready workers sent (not one per wake-up: a
        worker blocked on a full socket would stall)."""
        for key, _ev in self.sel.select(timeout=timeout):
            w = self.workers[key.data]
            data = w.res.recv(1 << 20)
            if not data:
                raise EngineError("a restore worker process died")
            w.buf += data
            pos = 0
            while len(w.buf) - pos >= 4:
                n = int.from_bytes(w.buf[pos : pos + 4], "big")
                if len(w.buf) - pos - 4 < n:
                    break
                self._handle(w, self._dec(w.buf[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            del w.buf[:pos]
        self.poll()

    def _handle(self, w: WorkerProcess, frame: list[object]) -> None:
        kind = frame[0]
        if kind == "p":
            n = frame[1]
            assert isinstance(n, int)
            self.progress(n)
            return
        w.inflight -= 1
        idx = frame[1]
        assert isinstance(idx, int)
        if kind == "done":
            ino, ctime, nbytes = frame[2], frame[3], frame[4]
            assert isinstance(ino, int) and isinstance(ctime, int) and isinstance(nbytes, int)
            self.done(idx, ino, ctime, nbytes)
        elif frame[2] == "corrupt":
            raise SnapshotCorrupt(str(frame[3]))
        elif frame[2] == "os":
            code, msg = frame[3]  # type: ignore[misc]
            raise OSError(int(code) or errno.EIO, str(msg))  # type: ignore[has-type]
        else:
            raise EngineError(f"a restore worker failed: {frame[3]}")

    def close(self, *, kill: bool) -> None:
        """Stop the workers (idempotent)."""
        if self.workers:
            with contextlib.suppress(AttributeError):
                self.sel.close()
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []


def start_pool(repo: Repository, snapshot_id: int, state_path: str) -> RestorePool | None:
    """Restore worker processes reading a local repository, or None (threads then)."""
    if PROCESSES < 1 or not isinstance(repo.backend, LocalBackend):
        return None
    try:
        return RestorePool(repo.backend.root, snapshot_id, state_path, PROCESSES)
    except OSError as err:  # cannot start processes here: threads do the same work
        logging.getLogger(__name__).warning(
            "restore worker processes unavailable (%s); using threads", err)
        return None
