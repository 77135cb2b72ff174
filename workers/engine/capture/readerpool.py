"""Capture reader processes (parent side); see readerproc.py for why and the protocol."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec

from .. import tuning
from ..model import TransientEngineError
from ..repository.repository import Repository
from ..workerproc import frames
from ..workerproc.process import WorkerProcess, start_workers
from .messages import Blobs, Done, Failed, FileDone, FileGone, Gone, ReaderMessage, Request, Setup

_MODULE = "workers.engine.capture.readerproc"  # what its processes run
_decode = msgspec.msgpack.Decoder(ReaderMessage).decode
_encode = msgspec.msgpack.Encoder().encode
# (directory fd, its files' entry indexes, names and sizes at the walk): one Request
Batch = tuple[int, list[int], list[bytes], list[int]]
# what a batch source yields: a batch, or None when none is ready yet (the walk goes on)
Batches = Iterator[Batch | None]

class Sinks(NamedTuple):
    """Where the readers' results go (the capture's)."""

    done: FileDone
    gone: FileGone
    progress: Callable[[int], None]
    describe: Callable[[int], str]
    pack: Callable[[bytes, bytes], None]


class WorkerPool:
    def __init__(self, repo: Repository, n: int) -> None:
        cfg = repo.config
        setup = msgspec.msgpack.encode(Setup(
            key=repo.key, chunk_min=cfg.chunk_min, chunk_avg=cfg.chunk_avg,
            chunk_max=cfg.chunk_max, level=tuning.ZSTD_LEVEL, known=b"".join(repo.known_ids()),
            block_size=cfg.block_size, big_file=cfg.big_file, hash_log=tuning.ZSTD_HASH_LOG))
        self.repo = repo
        self.workers = start_workers(_MODULE, setup, n)
        self.stored_bytes = 0
        self.sinks: Sinks | None = None
        self._buf = bytearray(1 << 20)  # one receive buffer (not a new 1 MiB per recv)
        self._view = memoryview(self._buf)
        self._sel = selectors.DefaultSelector()
        for i, w in enumerate(self.workers):
            self._sel.register(w.res, selectors.EVENT_READ, i)
        self._exhausted = False

    def close(self, *, kill: bool) -> None:
        self._sel.close()
        for w in self.workers:
            w.close(kill=kill)
        self.workers = []

    def pump(self, items: Batches) -> None:
        """Send what is ready and the windows allow, and take in the results that have
        arrived, without waiting: the walk calls this between directories."""
        self._send(items)
        self._receive(0)

    def run(self, items: Batches, poll: Callable[[], None]) -> None:
        """Feed batches of a directory's files to the workers until `items` ends and every
        result is in (a batch's directory fd stays the caller's: it is sent before the next
        batch is asked for)."""
        while True:
            self._send(items)
            if self._exhausted and not any(w.inflight for w in self.workers):
                return
            self._receive(0.25)
            poll()

    def _send(self, items: Batches) -> None:
        while not self._exhausted:
            w = min(self.workers, key=lambda x: x.inflight)
            if w.inflight >= tuning.READER_WINDOW:
                return
            try:
                item = next(items)
            except StopIteration:
                self._exhausted = True
                return
            if item is None:
                return  # none ready yet
            dfd, idxs, names, sizes = item
            try:
                socket.send_fds(w.req, [_encode(Request(idxs, names, sizes))], [dfd])
            except frames.PEER_GONE as e:
                raise TransientEngineError("a capture worker process died") from e
            w.inflight += 1

    def _receive(self, timeout: float) -> None:
        sinks = self.sinks
        assert sinks is not None, "results before the capture took them"
        for key, _ev in self._sel.select(timeout=timeout):
            w = self.workers[key.data]
            try:  # what has arrived: never blocked on one reader's partial frame
                n = w.res.recv_into(self._buf)
            except frames.PEER_GONE:
                n = 0
            if not n:
                raise TransientEngineError("a capture worker process died")
            for frame in w.frames.feed(self._view[:n]):
                self._handle(w, _decode(frame), sinks)

    def _handle(self, w: WorkerProcess, msg: ReaderMessage, sinks: Sinks) -> None:
        if isinstance(msg, Blobs):
            self._take(msg, sinks)
            return
        done = sinks.done
        raw = 0  # progress: once per message, not per file (a message holds hundreds)
        for r in msg.files:
            if type(r) is Done:
                if r.blobs or r.packed:
                    self._take(r, sinks)
                else:  # a small file's bytes come as r.tiny: only its progress to count
                    raw += r.raw
                done(r.idx, r.chunks, r.tiny, r.info, r.nread, r.changed, r.xattrs)
            elif type(r) is Gone:
                sinks.gone(r.idx, r.why)
            else:
                assert isinstance(r, Failed)
                raise TransientEngineError(
                    f"reading {sinks.describe(r.idx)} failed: {r.message}")
        if raw:
            sinks.progress(raw)
        if msg.last:
            w.inflight -= 1

    def _take(self, msg: Blobs | Done, sinks: Sinks) -> None:
        for cid, payload in msg.blobs:
            self.stored_bytes += self.repo.store_payload(cid, payload)
        for cid, data in msg.packed:  # small chunks: into the tiny packs
            sinks.pack(cid, data)
        if msg.raw:
            sinks.progress(msg.raw)
