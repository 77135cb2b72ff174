"""Restore worker processes (parent side); see writerproc.py for why and the protocol."""

from __future__ import annotations

import errno
import logging
import selectors
import socket
from array import array
from collections.abc import Callable

import msgspec

from .. import tuning
from ..model import SnapshotCorrupt, TransientEngineError
from ..repository.repository import Repository
from ..workerproc import frames
from ..workerproc.process import start_workers
from .messages import End, Failed, Setup, Share, WriterMessage, Written, Wrote

_CODE = "from workers.engine.restore.writerproc import main; main()"

_decode = msgspec.msgpack.Decoder(WriterMessage).decode
Done = Callable[[int, int, int], None]  # entry index, ino, ctime_ns


class RestorePool:
    """Started as early as possible (the workers' start-up and manifest loading overlap the
    parent's), then given the staging directory and the files, split into shares."""

    def __init__(self, repo: Repository, snapshot_id: int, state_path: str, n: int) -> None:
        where, options = repo.backend.location()
        setup = msgspec.msgpack.encode(Setup(where, snapshot_id, state_path, options,
                                             msgspec.msgpack.encode(repo.config)))
        self.bytes_written = 0
        self.workers = start_workers(_CODE, setup, n)

    def run(self, st_fd: int, shares: list[array[int]], owner: tuple[int, int] | None,
            progress: Callable[[int], None], poll: Callable[[], None], done: Done,
            raw: Callable[[int], msgspec.Raw]) -> None:
        """Have each worker write its share of files into st_fd; returns when all did.
        raw(i): entry i's msgpack (the worker decodes it as its turn comes)."""
        enc = msgspec.msgpack.Encoder()
        for w, share in zip(self.workers, shares, strict=True):
            try:
                socket.send_fds(w.req, [b"go"], [st_fd])
                frames.send(w.res, enc.encode(Share(owner, list(share),
                                                    [raw(i) for i in share])))
            except frames.PEER_GONE as e:
                raise TransientEngineError("a restore worker process died") from e
        sel = selectors.DefaultSelector()
        try:
            for i, w in enumerate(self.workers):
                sel.register(w.res, selectors.EVENT_READ, i)
            running = len(self.workers)
            while running:
                for key, _ev in sel.select(timeout=0.25):
                    w = self.workers[key.data]
                    try:
                        data = w.res.recv(1 << 20)
                    except frames.PEER_GONE:
                        data = b""
                    if not data:
                        raise TransientEngineError("a restore worker process died")
                    for frame in w.frames.feed(data):
                        running -= self._handle(_decode(frame), progress, done)
                poll()
        finally:
            sel.close()

    def _handle(self, msg: WriterMessage, progress: Callable[[int], None], done: Done) -> int:
        """Act on one message; 1 when it says that worker finished its share."""
        match msg:
            case Wrote():
                progress(msg.nbytes)
            case Written():
                for idx, ino, ctime in msg.files:
                    done(idx, ino, ctime)
                self.bytes_written += msg.nbytes
            case End():
                return 1
            case Failed(kind="corrupt"):
                raise SnapshotCorrupt(msg.message)
            case Failed(kind="os"):
                raise OSError(msg.errno or errno.EIO, msg.message)
            case Failed():
                raise TransientEngineError(f"a restore worker failed: {msg.message}")
        return 0

    def close(self, *, kill: bool) -> None:
        """Stop the workers (idempotent)."""
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []


def start_pool(repo: Repository, snapshot_id: int, state_path: str) -> RestorePool | None:
    """Restore worker processes reading the same repository (local or s3://), or None
    (threads then). On S3 too: a restore of small files in threads was bound by the GIL
    (10k files: 5.6 s writing after 0.6 s of GETs, against 2.5 s from file:// with
    processes), while each process reads its share's packs ahead (writerproc.py). Each
    is sent its share's entries with its share: none reads the manifest."""
    if tuning.RESTORE_PROCESSES < 1:
        return None
    try:
        return RestorePool(repo, snapshot_id, state_path, tuning.RESTORE_PROCESSES)
    except OSError as err:  # cannot start processes here: threads do the same work
        logging.getLogger(__name__).warning(
            "restore worker processes unavailable (%s); using threads", err)
        return None
