"""Capture reader processes (parent side); see readerproc.py for why and the protocol."""

from __future__ import annotations

import os
import selectors
import socket
from collections.abc import Callable, Iterator

import msgspec

from .. import tuning
from ..model import TransientEngineError
from ..repository.repository import Repository
from ..workerproc import frames
from ..workerproc.process import WorkerProcess, start_workers
from .messages import REQ, Blobs, Done, Failed, Gone, ReaderMessage, Setup, StatInfo

# Files queued per worker: keeps both busy, never blocks the parent on send, and lets the
# WILLNEED readahead of the queued files (see archiver) run well ahead of the readers.
_CODE = "from workers.engine.capture.readerproc import main; main()"
_decode = msgspec.msgpack.Decoder(ReaderMessage).decode

FileDone = Callable[[int, list[tuple[bytes, int]], bytes, StatInfo, int, bool], None]


class WorkerPool:
    def __init__(self, repo: Repository, n: int) -> None:
        cfg = repo.config
        setup = msgspec.msgpack.encode(Setup(
            key=repo.key, chunk_min=cfg.chunk_min, chunk_avg=cfg.chunk_avg,
            chunk_max=cfg.chunk_max, level=tuning.ZSTD_LEVEL, known=b"".join(repo.known_ids()),
            block_size=cfg.block_size, big_file=cfg.big_file))
        self.repo = repo
        self.workers = start_workers(_CODE, setup, n)
        self.stored_bytes = 0

    def close(self, *, kill: bool) -> None:
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []

    def run(self, items: Iterator[tuple[int, int]], done: FileDone,
            gone: Callable[[int, str], None], progress: Callable[[int], None],
            poll: Callable[[], None], describe: Callable[[int], str],
            pack: Callable[[bytes, bytes], None]) -> None:
        """Feed (fd, entry index) items to the workers; the parent closes its fd copies."""
        sel = selectors.DefaultSelector()
        for i, w in enumerate(self.workers):
            sel.register(w.res, selectors.EVENT_READ, i)
        exhausted = False
        try:
            while True:
                while not exhausted:
                    w = min(self.workers, key=lambda x: x.inflight)
                    if w.inflight >= tuning.READER_WINDOW:
                        break
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    fd, idx = item
                    try:
                        socket.send_fds(w.req, [REQ.pack(idx)], [fd])
                    except frames.PEER_GONE as e:
                        raise TransientEngineError("a capture worker process died") from e
                    finally:
                        os.close(fd)
                    w.inflight += 1
                if exhausted and not any(w.inflight for w in self.workers):
                    return
                for key, _ev in sel.select(timeout=0.25):
                    w = self.workers[key.data]
                    try:
                        msg = _decode(frames.recv(w.res))
                    except frames.PEER_GONE as e:
                        raise TransientEngineError("a capture worker process died") from e
                    self._handle(w, msg, done, gone, progress, describe, pack)
                poll()
        finally:
            sel.close()

    def _handle(self, w: WorkerProcess, msg: ReaderMessage, done: FileDone,
                gone: Callable[[int, str], None], progress: Callable[[int], None],
                describe: Callable[[int], str], pack: Callable[[bytes, bytes], None]) -> None:
        if isinstance(msg, Blobs | Done):
            for cid, payload in msg.blobs:
                self.stored_bytes += self.repo.store_payload(cid, payload)
            for cid, data in msg.packed:  # small chunks: into the tiny packs
                pack(cid, data)
            progress(msg.raw)
        match msg:
            case Blobs():
                return
            case Done():
                w.inflight -= 1
                done(msg.idx, msg.chunks, msg.tiny, msg.info, msg.nread, msg.changed)
            case Gone():
                w.inflight -= 1
                gone(msg.idx, msg.why)
            case Failed():
                w.inflight -= 1
                raise TransientEngineError(f"reading {describe(msg.idx)} failed: {msg.message}")
