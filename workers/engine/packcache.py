"""Reading small files out of tiny packs (restore and verify).

A pack object is kept compressed in memory (the few most recently used) and only the
1 MiB blocks a file's slice spans are decompressed (see blocks.py), so restoring a few
small files costs a few blocks, not whole packs. Every slice is checked against its file's
chunk id. Packs written before block framing are decoded whole and checked against their
id, as before. Memory stays bounded: KEEP objects and KEEP_BLOCKS decoded blocks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import zstandard

from . import blocks
from .manifest import Entry
from .model import SnapshotCorrupt
from .repository import ObjectCorrupt, Repository

KEEP = 4  # compressed pack objects kept (16 MiB of small files each, at most)
KEEP_BLOCKS = 32  # decoded 1 MiB blocks kept


class _Lru:
    """A small thread-safe LRU; a missing value is loaded by one thread, others wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], bytes]) -> bytes:
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
        self._objs = _Lru(KEEP)
        self._blocks = _Lru(KEEP_BLOCKS)
        self._local = threading.local()

    def _corrupt(self, e: Entry, why: object) -> SnapshotCorrupt:
        return SnapshotCorrupt(f"snapshot {self.sid} is corrupt: object {e.pack.hex()} "
                               f"{why} (file {e.path!r})")

    def _zd(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "zd", None)
        if d is None:
            d = self._local.zd = zstandard.ZstdDecompressor()
        return d

    def _slice(self, e: Entry) -> bytes:
        obj = self._objs.get(e.pack, lambda: self.repo.read_object(e.pack))
        off, ln = e.pack_off, e.pack_len
        if obj[:1] != bytes([blocks.BLOCKS]):  # older pack: one frame, decoded and checked
            whole = self._blocks.get((e.pack, -1), lambda: self.repo.decode_checked(
                e.pack, obj, f"object {e.pack.hex()}"))
            return whole[off : off + ln]
        if ln == 0:
            return b""
        first, last = off // blocks.BLOCK, (off + ln - 1) // blocks.BLOCK
        parts = [self._block(e.pack, obj, i) for i in range(first, last + 1)]
        start = off - first * blocks.BLOCK
        return b"".join(parts)[start : start + ln]

    def _block(self, pack: bytes, obj: bytes, i: int) -> bytes:
        return self._blocks.get((pack, i), lambda: blocks.decode_block(self._zd(), obj, i))

    def read(self, e: Entry) -> bytes:
        try:
            data = self._slice(e)
        except ObjectCorrupt as err:
            raise self._corrupt(e, str(err).removeprefix(f"object {e.pack.hex()} ")) from err
        except (zstandard.ZstdError, ValueError) as err:
            raise self._corrupt(e, f"does not decompress: {err}") from err
        if len(e.chunks) != 1 or self.repo.chunk_id(data) != e.chunks[0][0]:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {e.path!r} does not match "
                                  f"its id in object {e.pack.hex()}")
        return data
