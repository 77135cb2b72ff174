"""A capture's packs: every chunk it stores goes into a pack object (packformat.py), so the
objects (and S3 PUTs) a capture makes are bounded by its bytes, not by its files or chunks.

Two kinds of pack fill side by side, in one format:
- small files, and small chunks of bigger files (a sparse file's small data extents, an
  extent's short tail): appended as they are read; every ~BLOCK bytes (at a member's end)
  the packer thread compresses the frame right away (zstd and IO release the GIL), so when
  the last file has been read only the last partial frame is left to compress. A pack is
  sealed at `pack_size` bytes of plaintext (tuning.TINY_PACK).
- big chunks (> tuning.INLINE_MAX): each its own frame, compressed where it was read (a
  capture thread or reader process: both cores), sealed at tuning.PACK_SIZE stored bytes.
On a remote store (`one_stream`: a directory capture to S3) both go into one open pack
instead, sealed when its big chunks' stored bytes plus its small files' plaintext reach
tuning.PACK_SIZE (a big chunk cuts the small files' open frame): its packs are sealed in
turn through the read (bench/s3.py: at ~30, 55, 80 and 100 % of it), where two kinds
filled side by side were sealed both at ~50 and both at 100 %; the store's ingest of a
PUT (SeaweedFS: ~1 s of CPU per 96 MiB, about one core) then starts earlier, and less of
it is left once the read ends. Same packs and PUTs (4 for the bench's 124 MB).

Equal contents within a capture are stored once; contents already in the repository (a
pack's member, or a chunk object of an earlier version) are not stored again. A pack's id
is known once it is stored: entries pointing into it get it then (before the capture
commits, which waits for every store). While the packer is open it is attached to the
repository (Repository.packer), so Repository.store_chunk/store_payload land here and the
capture code needs no notion of packs beyond Entry.pack/slices, which place() fills in
(an image capture: ImageBody.slices, from slices_of() once every pack is stored).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from .. import tuning
from . import packformat
from .manifest import Entry
from .repository import Repository, compressor, encode_payload

_STORERS = 2  # the open small pack and the open big pack, sealed at once at the end


class _Pack:
    def __init__(self, big: bool) -> None:
        self.big = big
        # small packs: the plaintext pieces of the frame being filled (joined once when it
        # is cut: a bytearray grown by += was copied again and again as it grew, ~3x the
        # small files' bytes in the capture's memcpy under callgrind), and their length
        self.buf: list[bytes] = []
        self.fill = 0
        self.plain = 0  # plaintext bytes so far
        self.loose = 0  # ... of them small members (in frames of several)
        self.stored = 0  # payload bytes so far (big packs)
        self.frames: list[Future[bytes] | bytes] = []  # payloads (1-byte header + bytes)
        self.sizes: list[int] = []  # plaintext bytes of each frame
        self.where: dict[bytes, tuple[int, int]] = {}  # member chunk id -> (offset, length)
        # small files in it, each (the caller's ref, entry): e.pack is set at store
        self.files: list[tuple[int, Entry]] = []
        self.slots: list[tuple[int, Entry, int]] = []  # (ref, entry, index in e.slices) likewise
        self.id = b""  # known once stored


class TinyPacker:
    def __init__(self, repo: Repository, pack_size: int, *, one_stream: bool = False) -> None:
        self.repo = repo
        self.pack_size = pack_size  # bytes of plaintext per pack of small files
        self.one_stream = one_stream  # small members and big chunks in one pack (see above)
        self.stored_bytes = 0
        self._lock = threading.Lock()
        # the small packs' frames are compressed on one thread, in order
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="packer")
        self._zc: zstandard.ZstdCompressor | None = None  # used by the packer thread only
        # Sealed packs are stored on threads of their own, side by side: a capture ends
        # with a small pack and a big one to store, and one thread did the big one only
        # after the small one's last frames were compressed and it was stored (bench/s3.py
        # at load 14: 0.69 s and 0.18 s, one after the other, before the commit).
        self._storer = ThreadPoolExecutor(_STORERS, thread_name_prefix="packstore")
        self._stores: list[Future[None]] = []
        self._where: dict[bytes, _Pack] = {}  # member -> its pack (open or sealed) here
        self._small = _Pack(big=False)
        self._big = self._small if one_stream else _Pack(big=True)
        # Called (on the packer thread) with the (ref, entry) of those place() left waiting
        # once every pack each points into is stored and named in it: the capture may
        # encode them from then on.
        self.on_stored: Callable[[list[tuple[int, Entry]]], None] | None = None
        # One stream: bytes of the capture still to read, once the walk has found them
        # (the open pack is sealed early once only tuning.PACK_TAIL of them are left)
        self.remaining: Callable[[], int] | None = None
        repo.packer = self

    # --- what the capture hands over --------------------------------------------------
    def store_chunk(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """A chunk of a bigger file, into a pack. Returns (id, 0): its bytes count when
        its pack is stored (stored_bytes)."""
        cid = self.repo.chunk_id(data)
        if len(data) <= tuning.INLINE_MAX:
            self.add_piece(cid, bytes(data))
        elif not self._have(cid):  # compressed here, on the capture's thread
            self._add_big(cid, encode_payload(self.repo.zc(), data), len(data))
        return cid, 0

    def store_block(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """A fixed block of a big file (blocks/) or of an image state: into the big packs
        like any big chunk (each its own frame), so a 2 GiB image is ~64 PUTs on S3, not
        2,048; a small piece (an extent's end) into a small pack. A block stored already,
        in a pack or as an object of its own (what older engines wrote for every block),
        is not stored again, so a disk-image file and the same bytes as an image state
        share their blocks, across repository generations too. Returns (id, 0): its bytes
        count when its pack is stored (stored_bytes)."""
        return self.store_chunk(data)

    def slices_of(self, chunks: list[bytes]) -> list[tuple[int, bytes, int, int]]:
        """After finish(): (index, pack, offset, length) of those of chunks that live in a
        pack; the others are objects of their own (stored by an earlier version)."""
        out = []
        for i, cid in enumerate(chunks):
            hit = self.repo.find_packed(cid)
            if hit is not None:
                out.append((i, *hit))
        return out

    def add_payload(self, cid: bytes, payload: bytes) -> None:
        """A big chunk a reader process encoded already (see Repository.store_payload)."""
        if not self._have(cid):
            self._add_big(cid, payload, packformat.plain_size(payload))

    def place(self, ref: int, e: Entry, tiny: bytes) -> bool:
        """Once a file is read: a small file's bytes into a pack (`tiny`, its only chunk),
        or else a bigger file's packed chunks noted in e.slices. True: e names every pack
        it needs; False: a pack is still to be stored (on_stored names (ref, e) then;
        `ref` is the caller's: a capture's index of the entry)."""
        if tiny:
            return self.add(ref, e, tiny)
        return self.add_slices(ref, e)

    def add(self, ref: int, e: Entry, data: bytes) -> bool:
        """Pack a single-chunk file's bytes (e.chunks[0] is its id) and point e at them.
        True when its pack id is known already."""
        cid = e.chunks[0][0]
        with self._lock:
            p = self._where.get(cid)
            if p is None:
                # in a pack stored already (by an earlier capture, or by this one: then
                # forgotten here), else new: one lookup either way
                hit = self.repo.find_packed(cid)
                if hit is not None:
                    e.pack, e.pack_off, e.pack_len = hit
                    return True
                p = self._append(cid, data)
            e.pack_off, e.pack_len = p.where[cid]
            if p.id:
                e.pack = p.id
            else:
                p.files.append((ref, e))
            known = bool(p.id)
            full = self._full(self._small)
        if full:
            self._bound()
        return known

    def add_piece(self, cid: bytes, data: bytes) -> None:
        """Pack a small chunk of a bigger file, unless it is stored already (as an object
        or in a pack); add_slices() then points the file's entry at it."""
        if self._have(cid):
            return
        with self._lock:
            if cid not in self._where:
                self._append(cid, data)
            full = self._full(self._small)
        if full:
            self._bound()

    def add_slices(self, ref: int, e: Entry) -> bool:
        """Point e.slices at those of e.chunks that live in a pack. True when every one of
        those packs is stored already."""
        slices: list[tuple[int, bytes, int, int]] = []
        with self._lock:
            for i, (cid, _off) in enumerate(e.chunks):
                hit = self.repo.find_packed(cid)
                if hit is not None:
                    slices.append((i, *hit))
                    continue
                p = self._where.get(cid)
                if p is None:
                    continue  # an object of its own (written by an earlier version)
                off, ln = p.where[cid]
                if not p.id:
                    p.slots.append((ref, e, len(slices)))
                slices.append((i, p.id, off, ln))
            e.slices = slices
            return all(pack for _i, pack, _o, _n in slices)

    # --- filling packs ----------------------------------------------------------------
    def _have(self, cid: bytes) -> bool:
        if self.repo.find_packed(cid) is not None or self.repo.has_object(cid):
            return True
        with self._lock:
            return cid in self._where

    def _add_big(self, cid: bytes, payload: bytes, size: int) -> None:
        with self._lock:
            if cid in self._where:  # the same chunk, compressed by two threads at once
                return
            p = self._big
            if p.buf:  # one stream: the small members before it make a frame of their own
                self._cut(p)
            p.where[cid] = (p.plain, size)
            p.frames.append(payload)
            p.sizes.append(size)
            p.plain += size
            p.stored += len(payload)
            self._where[cid] = p
            full = self._full(p)
        if full:
            self._bound()

    def _append(self, cid: bytes, data: bytes) -> _Pack:
        """Under _lock: add a member to the open small pack; returns that pack. A frame
        is cut (and compressed) at the first member end past BLOCK bytes."""
        p = self._small
        p.where[cid] = (p.plain, len(data))
        self._where[cid] = p
        p.buf.append(data)
        p.fill += len(data)
        p.plain += len(data)
        p.loose += len(data)
        if p.fill >= packformat.BLOCK:
            self._cut(p)
        return p

    def _cut(self, p: _Pack) -> None:
        """Under _lock: the small members not yet in a frame make one, joined and
        compressed on the packer thread."""
        p.frames.append(self._thread.submit(self._compress, p.buf))
        p.sizes.append(p.fill)
        p.buf, p.fill = [], 0

    def _full(self, p: _Pack) -> bool:
        """Under _lock: seal the open pack p if it is full; True when it was sealed."""
        if p.big:
            full = (p.stored >= tuning.PACK_SIZE or p.plain >= tuning.PACK_PLAIN_MAX
                    or len(p.frames) >= packformat.MAX_FRAMES)
        elif self.one_stream:  # room for a cut frame and a big one, or the partial one
            full = (p.stored + p.loose >= tuning.PACK_SIZE or p.loose >= self.pack_size
                    or p.plain >= tuning.PACK_PLAIN_MAX
                    or len(p.frames) >= packformat.MAX_FRAMES - 2
                    or len(p.files) + len(p.slots) >= tuning.PACK_MAX_FILES
                    or (self.remaining is not None and p.stored + p.loose >= 2 * tuning.PACK_TAIL
                        and self.remaining() <= tuning.PACK_TAIL))
        else:  # room for the partial frame still to come; and a bound on the entries a
            # capture holds decoded until the pack is stored and named in them
            full = (p.plain >= self.pack_size or len(p.frames) >= packformat.MAX_FRAMES - 1
                    or len(p.files) + len(p.slots) >= tuning.PACK_MAX_FILES)
        if full:
            self._seal(p)
        return full

    def finish(self) -> None:
        """Store the open packs and wait for every store; raises what a store raised."""
        with self._lock:
            for p in (self._small, self._big) if not self.one_stream else (self._small,):
                if p.where:
                    self._seal(p)
        for f in self._stores:
            f.result()
        self._stores = []

    def close(self) -> None:
        if self.repo.packer is self:
            self.repo.packer = None
        self._storer.shutdown(wait=True, cancel_futures=True)
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _seal(self, p: _Pack) -> None:
        """Under _lock: hand pack p to a store thread; its last partial frame is
        compressed on the packer thread, after its other frames (the store waits for
        them all)."""
        if p.buf:
            self._cut(p)
        self._stores.append(self._storer.submit(self._store, p))
        if self.one_stream:
            self._small = self._big = _Pack(big=False)
        elif p.big:
            self._big = _Pack(big=True)
        else:
            self._small = _Pack(big=False)

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

    def _compress(self, pieces: list[bytes]) -> bytes:
        if self._zc is None:
            self._zc = compressor(tuning.ZSTD_LEVEL, tuning.ZSTD_HASH_LOG)
        return encode_payload(self._zc, b"".join(pieces))

    def _store(self, p: _Pack) -> None:
        done = [f.result() if isinstance(f, Future) else f for f in p.frames]
        sizes = list(p.sizes)
        members = [(cid, off, ln) for cid, (off, ln) in p.where.items()]
        pack_id, n = self.repo.store_pack(list(zip(done, sizes, strict=True)), members)
        with self._lock:
            self.stored_bytes += n
            p.id = pack_id
            for _ref, e in p.files:
                e.pack = pack_id
            for _ref, e, k in p.slots:
                i, _none, off, ln = e.slices[k]
                e.slices[k] = (i, pack_id, off, ln)
            placed = p.files + list({id(e): (ref, e) for ref, e, _k in p.slots
                                     if all(pack for _i, pack, _o, _n in e.slices)}.values())
            # Stored: the repository finds its members from now on (find_packed), so this
            # capture forgets them (a million small files: ~180 bytes each held otherwise).
            for cid in p.where:
                if self._where.get(cid) is p:
                    del self._where[cid]
            p.buf, p.fill, p.frames, p.where = [], 0, [], {}
            p.files, p.slots = [], []
        if self.on_stored is not None and placed:
            self.on_stored(placed)
