"""Repository: content-addressed chunks plus manifests on top of a Backend.

- `config` holds a random 32-byte BLAKE3 key made at init; chunk id = keyed BLAKE3 of the
  plaintext, so ids reveal nothing across repositories and cannot be precomputed.
- An object is a 1-byte header (0 = raw, 1 = zstd) + payload; zstd is kept only when it is
  smaller. Reads always re-hash the plaintext and compare with the id (verify-on-read).
- Manifests live at snapshots/<id> (manifests.py reads them); writing one is the commit
  point (see put_manifest).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import blake3
import msgspec
import zstandard

from .. import tuning
from ..model import SnapshotCorrupt
from . import manifest, packformat
from .backend import Backend
from .manifests import Manifests
from .packformat import RAW, ZSTD
from .packindex import PackIndex

# A capture's chunks go into pack objects (packformat.py, packwriter.py): small files
# together, big chunks together, several MiB per object, so a capture makes a handful of
# PUTs, not one per chunk. Each pack has an index object packidx/<pack id> listing (chunk
# id, offset, length) of its members, so content already in any pack is never stored
# again (dedup, resumability). Chunk objects of their own (data/<chunk id>) are what
# earlier versions wrote for big chunks, and what image captures write: still read.
PACKIDX = "packidx"
SYNCED_KEY = "synced"  # start time (ns) of the last full-filesystem sync before a commit


if TYPE_CHECKING:  # for the type checker only: a Protocol class costs an import 0.5 M instructions

    class Packer(Protocol):
        """Where a capture's chunks go while it runs (packwriter.TinyPacker)."""

        def store_chunk(self, data: bytes | memoryview) -> tuple[bytes, int]: ...
        def add_payload(self, cid: bytes, payload: bytes) -> None: ...


class Config(msgspec.Struct):
    version: int
    key: bytes
    chunk_min: int = 256 * 1024
    chunk_avg: int = 1024 * 1024
    chunk_max: int = 4 * 1024 * 1024
    block_size: int = 1024 * 1024
    # Regular files of at least this many bytes (in a directory state) are cut like images:
    # block_size blocks at fixed offsets (see chunker.py), so a disk-image file and the same
    # bytes as an image state share their chunks, and blocks are read and written in parallel.
    big_file: int = 64 * 1024 * 1024


class ObjectCorrupt(Exception):
    """Raised by read_chunk; callers turn it into SnapshotCorrupt naming the snapshot."""


def compressor(level: int, hash_log: int) -> zstandard.ZstdCompressor:
    """A compressor at `level` with a hash table of 2^hash_log entries (0: the level's)."""
    if not hash_log:
        return zstandard.ZstdCompressor(level=level)
    return zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters
                                    .from_level(level, hash_log=hash_log))


def encode_payload(zc: zstandard.ZstdCompressor, data: bytes | bytearray | memoryview) -> bytes:
    """1-byte header + zstd, or + raw data when compression does not make it smaller."""
    comp = zc.compress(data)
    if len(comp) < len(data):
        return bytes([ZSTD]) + comp
    # one copy of a view (a reader's CDC chunk): bytes(data) and then + made two, each
    # into fresh pages (the bench's 60 MB of random big chunks: ~50 ms of readers' CPU)
    return b"".join((bytes([RAW]), data))


def chunk_key(cid: bytes) -> str:
    h = cid.hex()
    return f"data/{h[:2]}/{h}"


def pack_index_key(pack: bytes) -> str:
    return f"{PACKIDX}/{pack.hex()}"


def pack_data_key(index_key: str) -> str:
    """The object key of the pack an index key (packidx/<hex>) describes."""
    h = index_key.rsplit("/", 1)[1]
    return f"data/{h[:2]}/{h}"


class Repository(Manifests):
    def __init__(self, backend: Backend, config: Config | None = None) -> None:
        """config: the repository's, when the caller read it already (one request less per
        capture on S3); otherwise read, or made when the repository is new."""
        self.backend = backend
        if config is None:
            try:
                raw = backend.get("config")
            except FileNotFoundError:
                cfg = msgspec.msgpack.encode(Config(version=1, key=os.urandom(32)))
                if backend.put("config", cfg, durable=True, exclusive=True):
                    raw = cfg
                else:  # another process initialised the repository first: use its key
                    raw = backend.get("config")
            config = msgspec.msgpack.decode(raw, type=Config)
        self.config = config
        self.key = self.config.key
        self._local = threading.local()
        self._known: set[bytes] = set()
        self._pending: set[bytes] = set()
        self._known_lock = threading.Lock()
        self._written: list[str] = []  # keys put since the last barrier
        self._fresh: set[bytes] = set()  # stored after the last full sync: maybe not durable
        # fresh objects reused, not known durable when reused: judged at the commit, once
        # `durable` holds every parent object (a capture's readers reuse while its walk is
        # still passing the parent's entries)
        self._reused_fresh: set[bytes] = set()
        self._packed = PackIndex()  # chunk -> (pack, off, len)
        # objects a committed snapshot (the parent) references: synced before its commit,
        # so reusing them never calls for a full sync however recently they were written
        self.durable: set[bytes] = set()
        # the capture's packer (packwriter.py), while one runs: chunks go into its packs
        self.packer: Packer | None = None

    # --- chunks -----------------------------------------------------------------------
    def chunk_id(self, data: bytes | memoryview) -> bytes:
        # Single-threaded on purpose: capture already runs one hashing thread per core.
        return blake3.blake3(data, key=self.key).digest()

    def zc(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "zc", None)
        if c is None:  # compressors are not thread-safe: one per thread
            c = compressor(tuning.ZSTD_LEVEL, tuning.ZSTD_HASH_LOG)
            self._local.zc = c
        return c

    def _zd(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "zd", None)
        if d is None:
            d = zstandard.ZstdDecompressor()
            self._local.zd = d
        return d

    def load_known(self) -> None:
        """Load the ids of every stored chunk once per capture: existence checks become set
        lookups. Empty objects (a crash before the data reached disk) are removed; objects
        stored after the last full sync are noted as possibly not durable yet."""
        known: set[bytes] = set()
        fresh: set[bytes] = set()
        since = 0 if self.backend.durable_on_put else self._synced_at()
        for key, maybe_fresh in self.backend.list_since("data/", since):
            try:
                cid = bytes.fromhex(key.rsplit("/", 1)[1])
            except ValueError:
                continue
            known.add(cid)
            if maybe_fresh:
                fresh.add(cid)
        packed = PackIndex()
        indexes = list(self.backend.list(PACKIDX + "/", cached=True))
        packed.reserve(sum(size for _k, size, _m in indexes) // 43)  # ~43 bytes a member
        for key, _size, _mtime in indexes:
            try:
                pack = bytes.fromhex(key.rsplit("/", 1)[1])
                if pack not in known:  # pack lost, torn or condemned (not in the data/ view)
                    continue
                members = msgspec.msgpack.decode(self.backend.get(key),
                                                 type=list[tuple[bytes, int, int]])
            except (OSError, ValueError, msgspec.DecodeError):
                continue  # an index only saves space: unreadable means not used
            packed.add_many(pack, members)
        with self._known_lock:
            self._known, self._fresh, self._reused_fresh = known, fresh, set()
            self._written = []
            self._packed = packed

    def has_chunk(self, cid: bytes) -> bool:
        """For reuse of a committed parent's chunks (durable: synced before its commit)."""
        return cid in self._known

    def _present(self, cid: bytes) -> bool:
        """Under _known_lock: is cid stored (or being stored)? Notes reuse of a chunk that
        may not be durable yet (written after the last full sync, by a killed capture)."""
        if cid in self._known:
            if cid in self._fresh and cid not in self.durable:
                if len(self._reused_fresh) < tuning.REUSED_FRESH_MAX:
                    self._reused_fresh.add(cid)
                else:  # too many to keep: a full sync, as if none were durable
                    self._reused_fresh.add(b"")
            return True
        return cid in self._pending

    def store_chunk(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """Store a chunk unless already present; returns (id, bytes newly written). While
        a capture's packer is attached, into its packs (their bytes count when stored)."""
        if self.packer is not None:
            return self.packer.store_chunk(data)
        return self.store_object(data)

    def store_object(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """Store a chunk as an object of its own (image blocks, and the fixed blocks of a
        directory's big files, which image states share) unless present."""
        cid = self.chunk_id(data)
        with self._known_lock:
            if self._present(cid):
                return cid, 0  # checked before compressing: a known chunk costs one hash
        return cid, self.put_object(cid, encode_payload(self.zc(), data))

    def store_payload(self, cid: bytes, payload: bytes) -> int:
        """Store an already encoded chunk (from a capture worker process) unless present;
        returns the bytes newly written. The id was computed by the worker with our key.
        While a capture's packer is attached, into its packs (0 now, counted at store)."""
        if self.packer is not None:
            self.packer.add_payload(cid, payload)
            return 0
        return self.put_object(cid, payload)

    def put_object(self, cid: bytes, payload: bytes | list[bytes]) -> int:
        """Store the object cid (a chunk's payload, or a pack: its pieces) unless present."""
        with self._known_lock:
            if self._present(cid):
                return 0
            self._pending.add(cid)
        try:
            if isinstance(payload, list):
                self.backend.put_pieces(chunk_key(cid), payload)
            else:
                self.backend.put(chunk_key(cid), payload)
        except BaseException:
            with self._known_lock:
                self._pending.discard(cid)
            raise
        with self._known_lock:
            self._pending.discard(cid)
            self._known.add(cid)
            self._written.append(chunk_key(cid))
        return len(payload) if isinstance(payload, bytes) else sum(map(len, payload))

    def has_object(self, cid: bytes) -> bool:
        """Is cid stored as an object of its own (or being stored) by now?"""
        with self._known_lock:
            return self._present(cid)

    def find_packed(self, cid: bytes) -> tuple[bytes, int, int] | None:
        """(pack, offset, length) of a small file's content already stored in a pack."""
        with self._known_lock:
            hit = self._packed.get(cid)
            if hit is not None and not self._present(hit[0]):
                return None
            return hit

    def store_pack(self, frames: list[tuple[bytes, int]],
                   members: list[tuple[bytes, int, int]]) -> tuple[bytes, int]:
        """Store a format-3 pack (packformat.py) of frames (payload, plaintext size) holding
        members (chunk id, plaintext offset, length), then its index; returns (pack id,
        bytes newly written). The id is the keyed hash of the pack's tables."""
        head, table = packformat.tables([(len(p), n) for p, n in frames], members)
        pack = self.chunk_id(head + table)
        n = self.put_object(pack, [head, *(p for p, _n in frames), table])
        idx = msgspec.msgpack.encode(members)
        # Not part of the commit barrier: an index lost or torn in a crash only costs
        # dedup (load_known skips what does not decode or names a missing pack).
        self.backend.put(pack_index_key(pack), idx)
        with self._known_lock:
            self._packed.add_many(pack, members, replace=False)
        return pack, n + len(idx)

    def _synced_at(self) -> int:
        try:
            return int(self.backend.get(SYNCED_KEY))
        except (OSError, ValueError):
            return 0  # never recorded: treat every stored chunk as possibly not durable

    def known_ids(self) -> list[bytes]:
        """Ids of the stored objects and of the members of stored packs: a capture's
        reader processes neither encode nor send these (the parent finds them again)."""
        with self._known_lock:
            return [*self._known, *(c for c, pack in self._packed.members()
                                    if pack in self._known)]

    def read_chunk(self, cid: bytes) -> bytes:
        """The verified plaintext of a stored object (a chunk or a tiny pack)."""
        try:
            obj = self.backend.get(chunk_key(cid))
        except FileNotFoundError as e:
            raise ObjectCorrupt(f"object {cid.hex()} is missing") from e
        return self.decode_checked(cid, obj, f"object {cid.hex()}")

    def decode_checked(self, cid: bytes, obj: bytes, what: str) -> bytes:
        if not obj:
            raise ObjectCorrupt(f"{what} is empty")
        try:
            if obj[0] == RAW:
                data = obj[1:]
            elif obj[0] == ZSTD:
                data = self._zd().decompress(obj[1:])
            elif obj[0] == packformat.BLOCKS:
                data = packformat.decode_all(self._zd(), obj)
            elif obj[0] == packformat.PACK:  # the id covers its tables, members their ids
                data, members, tables = packformat.decode_pack(self._zd(), obj)
                if self.chunk_id(tables) != cid:
                    raise ObjectCorrupt(f"{what} fails its id check")
                for mid, off, ln in members:
                    if off + ln > len(data) or self.chunk_id(data[off:off + ln]) != mid:
                        raise ObjectCorrupt(f"{what}: member {mid.hex()} fails its id check")
                return data
            else:
                raise ObjectCorrupt(f"{what} has an unknown header")
        except (zstandard.ZstdError, ValueError) as e:
            raise ObjectCorrupt(f"{what} does not decompress: {e}") from e
        if self.chunk_id(data) != cid:
            raise ObjectCorrupt(f"{what} fails its id check")
        return data

    def read_object(self, cid: bytes) -> bytes:
        """The stored bytes of an object, not decoded (see PackCache)."""
        try:
            return self.backend.get(chunk_key(cid))
        except FileNotFoundError as e:
            raise ObjectCorrupt(f"object {cid.hex()} is missing") from e

    def read_chunk_for(self, snapshot_id: int, cid: bytes) -> bytes:
        try:
            return self.read_chunk(cid)
        except ObjectCorrupt as e:
            raise SnapshotCorrupt(f"snapshot {snapshot_id} is corrupt: {e}") from e

    def list_chunks(self) -> list[tuple[str, int]]:
        return [(key, size) for key, size, _mtime in self.backend.list("data/")]

    # --- the commit -------------------------------------------------------------------
    def put_manifest(self, header: manifest.Header, body: bytes | Sequence[bytes]) -> bool:
        """body: manifest.encode_body() of the tree, or its pieces (DirBodyWriter.
        finish_pieces: written one after the other, never joined on file://; the caller
        counts its size as stored).
        False: the manifest existed already (another delivery of the same capture committed
        first; created once with If-None-Match: * on S3, link() on file://), and stays."""
        # One barrier makes every chunk the snapshot needs durable, then the manifest itself
        # is written durably (temp, fsync, rename, fsync dir): after this the snapshot exists.
        # Chunks of committed snapshots are durable already. A chunk reused from a killed
        # capture (stored after the last full sync) may not be: then sync everything, and
        # record when that full sync started so later captures know what is durable.
        with self._known_lock:
            written, reused = self._written, self._reused_fresh
            self._written, self._reused_fresh = [], set()
        full = any(cid not in self.durable for cid in reused)
        if not self.backend.durable_on_put and (full or len(written) > tuning.FULL_SYNC_AT):
            # Everything stored before the sync started is durable from now on; the margin
            # covers the coarse clock the filesystem stamps mtimes with.
            started = time.time_ns() - 2_000_000_000
            self.backend.barrier(None)
            self.backend.put(SYNCED_KEY, str(started).encode(), durable=True)
        else:
            self.backend.barrier(written)
        pieces = manifest.assemble_pieces(header, [body] if isinstance(body, bytes) else body)
        return self.backend.put(self.manifest_key(header.meta.snapshot_id), pieces,
                                durable=True, exclusive=True)
