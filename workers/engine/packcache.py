"""Reading small files out of tiny packs (restore and verify).

A pack (up to archiver.TINY_PACK bytes of small files) is read and verified as a whole
once, then sliced; every slice is checked against its file's chunk id too. Only the few
most recently used packs are kept, so memory stays bounded however many small files a
snapshot holds; packs are filled in capture order, so restore's access is mostly
sequential and a pack is rarely read twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .manifest import Entry
from .model import SnapshotCorrupt
from .repository import Repository

KEEP = 4  # packs kept decoded (4 x 16 MiB at most)


class PackCache:
    def __init__(self, repo: Repository, snapshot_id: int) -> None:
        self.repo, self.sid, self.keep = repo, snapshot_id, KEEP
        self._packs: OrderedDict[bytes, bytes] = OrderedDict()
        self._loading: dict[bytes, threading.Lock] = {}
        self._lock = threading.Lock()

    def _get(self, pack_id: bytes) -> bytes:
        with self._lock:
            pack = self._packs.get(pack_id)
            if pack is not None:
                self._packs.move_to_end(pack_id)
                return pack
            load_lock = self._loading.setdefault(pack_id, threading.Lock())
        with load_lock:  # one thread decodes a pack; others wanting it wait, not re-read
            with self._lock:
                pack = self._packs.get(pack_id)
            if pack is None:
                pack = self.repo.read_chunk_for(self.sid, pack_id)
                with self._lock:
                    self._packs[pack_id] = pack
                    while len(self._packs) > self.keep:
                        self._packs.popitem(last=False)
                    self._loading.pop(pack_id, None)
        return pack

    def read(self, e: Entry) -> bytes:
        pack = self._get(e.pack)
        data = pack[e.pack_off : e.pack_off + e.pack_len]
        if len(e.chunks) != 1 or self.repo.chunk_id(data) != e.chunks[0][0]:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {e.path!r} does not match "
                                  f"its id in object {e.pack.hex()}")
        return data
