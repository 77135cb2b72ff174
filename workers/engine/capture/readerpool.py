"""Capture reader processes (parent side); see readerproc.py for why and the protocol."""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Callable, Iterator

import msgspec

from ..model import TransientEngineError
from ..repository.repository import ZSTD_LEVEL, Repository
from ..workerproc.frames import recv_frame
from ..workerproc.process import WorkerProcess, start_workers
from .readerproc import REQ, Setup

# Files queued per worker: keeps both busy, never blocks the parent on send, and lets the
# WILLNEED readahead of the queued files (see archiver) run well ahead of the readers.
WINDOW = 32
_CODE = "from workers.engine.capture.readerproc import main; main()"

Done = Callable[[int, list[tuple[bytes, int]], bytes, tuple[int, ...], int, bool], None]


class WorkerPool:
    def __init__(self, repo: Repository, n: int) -> None:
        cfg = repo.config
        setup = msgspec.msgpack.encode(Setup(
            key=repo.key, chunk_min=cfg.chunk_min, chunk_avg=cfg.chunk_avg,
            chunk_max=cfg.chunk_max, level=ZSTD_LEVEL, known=b"".join(repo.known_ids())))
        self.repo = repo
        self.workers = start_workers(_CODE, setup, n)
        self.stored_bytes = 0

    def close(self, *, kill: bool) -> None:
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []

    def run(self, items: Iterator[tuple[int, int]], done: Done, gone: Callable[[int, str], None],
            progress: Callable[[int], None], poll: Callable[[], None],
            describe: Callable[[int], str]) -> None:
        """Feed (fd, entry index) items to the workers; the parent closes its fd copies."""
        sel = selectors.DefaultSelector()
        for i, w in enumerate(self.workers):
            sel.register(w.res, selectors.EVENT_READ, i)
        exhausted = False
        try:
            while True:
                while not exhausted:
                    w = min(self.workers, key=lambda x: x.inflight)
                    if w.inflight >= WINDOW:
                        break
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    fd, idx = item
                    try:
                        socket.send_fds(w.req, [REQ.pack(idx)], [fd])
                    finally:
                        os.close(fd)
                    w.inflight += 1
                if exhausted and not any(w.inflight for w in self.workers):
                    return
                for key, _ev in sel.select(timeout=0.25):
                    w = self.workers[key.data]
                    try:
                        frame = msgspec.msgpack.decode(recv_frame(w.res))
                    except EOFError as e:
                        raise TransientEngineError("a capture worker process died") from e
                    self._handle(w, frame, done, gone, progress, describe)
                poll()
        finally:
            sel.close()

    def _handle(self, w: WorkerProcess, frame: list[object], done: Done,
                gone: Callable[[int, str], None], progress: Callable[[int], None],
                describe: Callable[[int], str]) -> None:
        kind, idx = frame[0], frame[1]
        assert isinstance(idx, int)
        if kind in ("blobs", "done"):
            blobs = frame[2]
            assert isinstance(blobs, list)
            for cid, payload in blobs:
                self.stored_bytes += self.repo.store_payload(cid, payload)
            raw = frame[3]
            assert isinstance(raw, int)
            progress(raw)
        if kind == "blobs":
            return
        w.inflight -= 1
        if kind == "done":
            raw_chunks, raw_info = frame[4], frame[5]
            assert isinstance(raw_chunks, list) and isinstance(raw_info, list)
            chunks = [(bytes(c), int(o)) for c, o in raw_chunks]
            info = tuple(int(x) for x in raw_info)
            nread, changed, tiny = frame[6], frame[7], frame[8]
            assert isinstance(nread, int) and isinstance(changed, bool)
            assert isinstance(tiny, bytes)
            done(idx, chunks, tiny, info, nread, changed)
        elif kind == "gone":
            gone(idx, str(frame[2]))
        else:
            raise TransientEngineError(f"reading {describe(idx)} failed: {frame[2]}")
