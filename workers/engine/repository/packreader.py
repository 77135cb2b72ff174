"""Reading small files out of tiny packs (restore and verify).

Only the 1 MiB blocks a file's slice spans are read (a range read of their frames, after
the pack's small block table) and decompressed (see packformat.py), so restoring a few small
files costs a few blocks, not whole packs. Every slice is checked against its file's
chunk id. Packs written before block framing are decoded whole and checked against their
id, as before. Memory stays bounded (tuning.PACK_CACHE_*).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import zstandard

from .. import tuning
from ..model import SnapshotCorrupt
from . import packformat
from .manifest import Entry
from .repository import ObjectCorrupt, Repository, chunk_key

OLD_FORMAT: list[tuple[int, int]] = []  # the table of a pack without blocks

V = TypeVar("V")


class _Lru(Generic[V]):
    """A small thread-safe LRU; a missing value is loaded by one thread, others wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            val = self._items.get(key)
            if val is not None:
                self._items.move_to_end(key)
                return val
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                val = self._items.get(key)
            if val is None:
                val = load()
                with self._lock:
                    self._items[key] = val
                    while len(self._items) > self.size:
                        self._items.popitem(last=False)
                    self._loading.pop(key, None)
        return val


class PackCache:
    def __init__(self, repo: Repository, snapshot_id: int) -> None:
        self.repo, self.sid = repo, snapshot_id
        self._objs: _Lru[bytes] = _Lru(tuning.PACK_CACHE_OBJECTS)
        self._tables: _Lru[list[tuple[int, int]]] = _Lru(tuning.PACK_CACHE_TABLES)
        self._blocks: _Lru[bytes] = _Lru(tuning.PACK_CACHE_BLOCKS)
        self._local = threading.local()

    def _corrupt(self, pack: bytes, path: bytes, why: object) -> SnapshotCorrupt:
        return SnapshotCorrupt(f"snapshot {self.sid} is corrupt: object {pack.hex()} "
                               f"{why} (file {path!r})")

    def _zd(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "zd", None)
        if d is None:
            d = self._local.zd = zstandard.ZstdDecompressor()
        return d

    def _slice(self, pack: bytes, off: int, ln: int) -> bytes:
        table = self._tables.get(pack, lambda: self._table(pack))
        if table is OLD_FORMAT:  # one frame, decoded and checked whole
            obj = self._objs.get(pack, lambda: self.repo.read_object(pack))
            whole = self._blocks.get((pack, -1), lambda: self.repo.decode_checked(
                pack, obj, f"object {pack.hex()}"))
            return whole[off : off + ln]
        if ln == 0:
            return b""
        first, last = off // packformat.BLOCK, (off + ln - 1) // packformat.BLOCK
        if last >= len(table):
            raise ValueError("block out of range")
        parts = [self._block(pack, table[i], i) for i in range(first, last + 1)]
        start = off - first * packformat.BLOCK
        return b"".join(parts)[start : start + ln]

    def _table(self, pack: bytes) -> list[tuple[int, int]]:
        key = chunk_key(pack)
        try:
            head = self.repo.backend.get_head(key, 5 + 4 * 32)
            if head[:1] != bytes([packformat.BLOCKS]):
                return OLD_FORMAT
            need = packformat.table_size(head)
            if need > len(head):
                head = self.repo.backend.get_head(key, need)
            size = self.repo.backend.stat(key)
        except FileNotFoundError as err:
            raise ObjectCorrupt(f"object {pack.hex()} is missing") from err
        if size is None:
            raise ObjectCorrupt(f"object {pack.hex()} is missing")
        return packformat.frames(head, size)

    def _block(self, pack: bytes, frame: tuple[int, int], i: int) -> bytes:
        a, b = frame
        return self._blocks.get((pack, i), lambda: self._zd().decompress(
            self.repo.backend.get_range(chunk_key(pack), a, b - a)))

    def read(self, e: Entry) -> bytes:
        """A small file's bytes (e.pack), checked against its chunk id."""
        if len(e.chunks) != 1:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {e.path!r} is packed "
                                  "but has not one chunk")
        return self.read_member(e.pack, e.pack_off, e.pack_len, e.chunks[0][0], e.path)

    def read_member(self, pack: bytes, off: int, ln: int, cid: bytes, path: bytes) -> bytes:
        """One packed chunk (of file `path`), checked against its id."""
        try:
            data = self._slice(pack, off, ln)
        except ObjectCorrupt as err:
            raise self._corrupt(pack, path, str(err).removeprefix(f"object {pack.hex()} ")) \
                from err
        except (zstandard.ZstdError, ValueError) as err:
            raise self._corrupt(pack, path, f"does not decompress: {err}") from err
        if self.repo.chunk_id(data) != cid:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {path!r} does not match "
                                  f"its id in object {pack.hex()}")
        return data
