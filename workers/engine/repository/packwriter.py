"""Tiny packs: the small files of a capture, and the small chunks of its bigger files (a
sparse file's small data extents, an extent's short tail), packed into shared objects
(tuning.INLINE_MAX), so the objects a capture makes are bounded by its data, not by how a
tenant fragments a file.

Contents are appended to the open pack as they are read; each full block
(packformat.BLOCK) of it is compressed right away by the packer thread (zstd and IO
release the GIL), so when the last file of a capture has been read only the last partial
block is left to compress. Compressing each 16 MiB pack only once it was complete left a
rootfs capture 40 ms of single-core work after every reader had finished. Equal contents
within a pack are stored once; contents already in a pack of the repository are not stored
again. A pack's id (the hash of its bytes) is known once it is stored: entries pointing
into it get it then (before the capture commits, which waits for every store).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from .. import tuning
from . import packformat
from .manifest import Entry
from .repository import Repository


class _Pack:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.where: dict[bytes, tuple[int, int]] = {}  # member chunk id -> (offset, length)
        self.files: list[Entry] = []  # small files in it: e.pack is set at store
        self.slots: list[tuple[Entry, int]] = []  # (entry, index in e.slices) likewise
        self.frames: list[Future[bytes]] = []
        self.id = b""  # known once stored


class TinyPacker:
    def __init__(self, repo: Repository, pack_size: int) -> None:
        self.repo = repo
        self.pack_size = pack_size  # bytes of plaintext per pack
        self.stored_bytes = 0
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="packer")
        self._zc: zstandard.ZstdCompressor | None = None  # used by the packer thread only
        self._stores: list[Future[None]] = []
        self._sealed: dict[bytes, _Pack] = {}  # member -> the earlier pack of this capture
        self._open = _Pack()

    def store_chunk(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """A chunk of a bigger file: an object of its own, or into a tiny pack if small
        (then its bytes count when the pack is stored). Returns (id, bytes written)."""
        if len(data) > tuning.INLINE_MAX:
            return self.repo.store_chunk(data)
        cid = self.repo.chunk_id(data)
        self.add_piece(cid, bytes(data))
        return cid, 0

    def place(self, e: Entry, tiny: bytes) -> None:
        """Once a file is read: a small file's bytes into a pack (`tiny`, its only chunk),
        or else a bigger file's packed chunks noted in e.slices."""
        if tiny:
            self.add(e, tiny)
        else:
            self.add_slices(e)

    def add(self, e: Entry, data: bytes) -> None:
        """Pack a single-chunk file's bytes (e.chunks[0] is its id) and point e at them."""
        cid = e.chunks[0][0]
        hit = self.repo.find_packed(cid)
        if hit is not None:
            e.pack, e.pack_off, e.pack_len = hit
            return
        with self._lock:
            p = self._sealed.get(cid)
            if p is None:
                p = self._append(cid, data)
            e.pack_off, e.pack_len = p.where[cid]
            if p.id:
                e.pack = p.id
            else:
                p.files.append(e)
            full = self._full()
        if full:
            self._bound()

    def add_piece(self, cid: bytes, data: bytes) -> None:
        """Pack a small chunk of a bigger file, unless it is stored already (as an object
        or in a pack); add_slices() then points the file's entry at it."""
        if self.repo.find_packed(cid) is not None or self.repo.has_object(cid):
            return
        with self._lock:
            if cid not in self._sealed:
                self._append(cid, data)
            full = self._full()
        if full:
            self._bound()

    def add_slices(self, e: Entry) -> None:
        """Point e.slices at those of e.chunks that live in a pack (add_piece)."""
        slices: list[tuple[int, bytes, int, int]] = []
        with self._lock:
            for i, (cid, _off) in enumerate(e.chunks):
                hit = self.repo.find_packed(cid)
                if hit is not None:
                    slices.append((i, *hit))
                    continue
                p = self._open if cid in self._open.where else self._sealed.get(cid)
                if p is None:
                    continue  # an object of its own
                off, ln = p.where[cid]
                if not p.id:
                    p.slots.append((e, len(slices)))
                slices.append((i, p.id, off, ln))
            e.slices = slices

    def _append(self, cid: bytes, data: bytes) -> _Pack:
        """Under _lock: add a member to the open pack (once); returns that pack."""
        p = self._open
        if cid not in p.where:
            p.where[cid] = (len(p.buf), len(data))
            p.buf += data
            while len(p.buf) >= (len(p.frames) + 1) * packformat.BLOCK:
                k = len(p.frames) * packformat.BLOCK
                block = bytes(p.buf[k : k + packformat.BLOCK])
                p.frames.append(self._thread.submit(self._compress, block))
        return p

    def _full(self) -> bool:
        """Under _lock: seal the open pack if it is full; True when it was sealed."""
        if len(self._open.buf) < self.pack_size:
            return False
        self._seal()
        return True

    def finish(self) -> None:
        """Store the open pack and wait for every store; raises what a store raised."""
        with self._lock:
            if self._open.where:
                self._seal()
        for f in self._stores:
            f.result()
        self._stores = []

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _seal(self) -> None:
        """Under _lock: hand the open pack to the packer thread, which runs jobs in order,
        so the pack's block compressions are done before its store starts."""
        p = self._open
        for cid in p.where:
            self._sealed[cid] = p
        self._stores.append(self._thread.submit(self._store, p))
        self._open = _Pack()

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

    def _store(self, p: _Pack) -> None:
        done = [f.result() for f in p.frames]
        tail = p.buf[len(done) * packformat.BLOCK :]
        if tail:
            done.append(self._compress(bytes(tail)))
        members = [(cid, off, ln) for cid, (off, ln) in p.where.items()]
        pack_id, n = self.repo.store_pack(memoryview(p.buf), members, frames=done)
        with self._lock:
            self.stored_bytes += n
            p.id = pack_id
            for e in p.files:
                e.pack = pack_id
            for e, k in p.slots:
                i, _none, off, ln = e.slices[k]
                e.slices[k] = (i, pack_id, off, ln)
            p.buf = bytearray()  # the bytes are stored: keep only the member map
            p.files, p.slots = [], []
