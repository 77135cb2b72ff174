"""Tiny packs: the small files of a capture packed into shared objects (tuning.INLINE_MAX).

Files are appended to the open pack as they are read; each full block (packformat.BLOCK) of
it is compressed right away by the packer thread (zstd and IO release the GIL), so when
the last file of a capture has been read only the last partial block is left to
compress. Compressing each 16 MiB pack only once it was complete left a rootfs capture
40 ms of single-core work after every reader had finished. Equal contents within a pack
are stored once; contents already in a pack of the repository are not stored again.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from .. import tuning
from . import packformat
from .manifest import Entry
from .repository import Repository


class TinyPacker:
    def __init__(self, repo: Repository, pack_size: int) -> None:
        self.repo = repo
        self.pack_size = pack_size  # bytes of plaintext per pack
        self.stored_bytes = 0
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="packer")
        self._zc: zstandard.ZstdCompressor | None = None  # used by the packer thread only
        self._stores: list[Future[None]] = []
        self._open_pack()

    def _open_pack(self) -> None:
        self._buf = bytearray()
        self._where: dict[bytes, tuple[int, int]] = {}
        self._entries: list[Entry] = []
        self._frames: list[Future[bytes]] = []

    def add(self, e: Entry, data: bytes) -> None:
        """Pack a single-chunk file's bytes (e.chunks[0] is its id) and point e at them."""
        cid = e.chunks[0][0]
        hit = self.repo.find_packed(cid)
        if hit is not None:
            e.pack, e.pack_off, e.pack_len = hit
            return
        with self._lock:
            if cid not in self._where:
                self._where[cid] = (len(self._buf), len(data))
                self._buf += data
            e.pack_off, e.pack_len = self._where[cid]
            self._entries.append(e)
            while len(self._buf) >= (len(self._frames) + 1) * packformat.BLOCK:
                k = len(self._frames) * packformat.BLOCK
                block = bytes(self._buf[k : k + packformat.BLOCK])
                self._frames.append(self._thread.submit(self._compress, block))
            if len(self._buf) < self.pack_size:
                return
            self._seal()
        self._bound()

    def finish(self) -> None:
        """Store the open pack and wait for every store; raises what a store raised."""
        with self._lock:
            if self._entries:
                self._seal()
        for f in self._stores:
            f.result()
        self._stores = []

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _seal(self) -> None:
        """Under _lock: hand the open pack to the packer thread, which runs jobs in order,
        so the pack's block compressions are done before its store starts."""
        job = (self._buf, self._where, self._entries, self._frames)
        self._stores.append(self._thread.submit(self._store, *job))
        self._open_pack()

    def _bound(self) -> None:
        with self._lock:
            busy = []
            for f in self._stores:
                if f.done():
                    f.result()  # a failed pack (e.g. storage full) fails the capture now
                else:
                    busy.append(f)
            self._stores = busy
            wait = busy[: max(0, len(busy) - tuning.PACKS_QUEUED)]
        for f in wait:
            f.result()

    def _compress(self, block: bytes) -> bytes:
        if self._zc is None:
            self._zc = zstandard.ZstdCompressor(level=tuning.ZSTD_LEVEL)
        return self._zc.compress(block)

    def _store(self, buf: bytearray, where: dict[bytes, tuple[int, int]], entries: list[Entry],
               frames: list[Future[bytes]]) -> None:
        done = [f.result() for f in frames]
        tail = buf[len(done) * packformat.BLOCK :]
        if tail:
            done.append(self._compress(bytes(tail)))
        members = [(cid, off, ln) for cid, (off, ln) in where.items()]
        pack_id, n = self.repo.store_pack(memoryview(buf), members, frames=done)
        with self._lock:
            self.stored_bytes += n
        for e in entries:
            e.pack = pack_id
