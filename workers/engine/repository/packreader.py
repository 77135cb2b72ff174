"""Reading chunks out of packs (restore and verify).

On demand, only the frames a member spans are read (a range read, after the pack's small
frame table) and decompressed (see packformat.py), so restoring a few files costs a few
frames, not whole packs. A restore that knows what it will write hands the whole list to
prefetch_members() first: packfetch.py then reads those packs ahead of the writers, with
coalesced ranged GETs (a whole pack in one GET when most of it is needed), several at
once. Every member is checked against its chunk id wherever it came from. Packs written
before format 3 are read as before (block-framed: frames of BLOCK bytes; older: one zstd
frame, decoded and checked whole). Memory stays bounded (tuning.PACK_CACHE_*,
tuning.RESTORE_FETCH_BYTES).
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

import zstandard

from .. import tuning
from ..model import SnapshotCorrupt
from . import packformat
from .manifest import Entry
from .packformat import OLD_FORMAT, Frame, Layout, decode_frame, make_layout, pack_layout, span
from .repository import ObjectCorrupt, Repository, chunk_key

V = TypeVar("V")

if TYPE_CHECKING:
    from .packfetch import Prefetch


class _Lru(Generic[V]):
    """A small thread-safe LRU; a missing value is loaded by one thread, others wait."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> V | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Hashable, val: V) -> None:
        with self._lock:
            self._items[key] = val
            while len(self._items) > self.size:
                self._items.popitem(last=False)

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
        self._layouts: _Lru[Layout] = _Lru(tuning.PACK_CACHE_TABLES)
        self._blocks: _Lru[bytes] = _Lru(tuning.PACK_CACHE_BLOCKS)
        self._local = threading.local()
        self._fetch: Prefetch | None = None

    def _corrupt(self, pack: bytes, path: bytes, why: object) -> SnapshotCorrupt:
        return SnapshotCorrupt(f"snapshot {self.sid} is corrupt: object {pack.hex()} "
                               f"{why} (file {path!r})")

    def zd(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "zd", None)
        if d is None:
            d = self._local.zd = zstandard.ZstdDecompressor()
        return d

    # --- read-ahead -------------------------------------------------------------------
    def prefetch_members(self, plan: list[tuple[bytes, int, int]], budget: int = 0) -> None:
        """Read these members (pack, offset, length) ahead of the reads of them, which are
        expected in about this order (see packfetch.py); reads not in the plan, or after
        close(), are served on demand. budget: Prefetch's."""
        if plan:
            from .packfetch import Prefetch  # read-ahead: a patch's few reads never load it

            self.close()
            self._fetch = Prefetch(self, plan, budget)

    def close(self) -> None:
        fetch, self._fetch = self._fetch, None
        if fetch is not None:
            fetch.close()

    # --- on demand --------------------------------------------------------------------
    def layout(self, pack: bytes, head: bytes | None = None) -> Layout:
        """The frame layout of a pack; head: its first bytes, when read already."""
        if head is not None and head[:1] == bytes([packformat.PACK]):
            return self._layouts.get(pack, lambda: pack_layout(head))
        return self._layouts.get(pack, lambda: self._read_layout(pack))

    def known_layout(self, pack: bytes) -> Layout | None:
        """The layout of a format-3 pack when it is known without a request: read
        already, or handed over (seed_layouts)."""
        lay = self._layouts.peek(pack)
        return lay if lay is not None and lay.kind == packformat.PACK else None

    def known_layouts(self, packs: Iterable[bytes]) -> list[tuple[bytes, Layout]]:
        return [(p, lay) for p in packs if (lay := self.known_layout(p)) is not None]

    def seed_layouts(self, layouts: Iterable[tuple[bytes, Layout]]) -> None:
        """Layouts another reader of the same packs found (a restore writer taking over
        the rest of another's share): their frame tables are not read again."""
        for pack, lay in layouts:
            if lay.kind == packformat.PACK:
                self._layouts.put(pack, lay)

    def _read_layout(self, pack: bytes) -> Layout:
        key = chunk_key(pack)
        try:
            head = self.repo.backend.get_head(key, packformat.HEADER_MAX)
            if head[:1] == bytes([packformat.PACK]):
                return pack_layout(head)
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
        blocks = packformat.frames(head, size)
        return make_layout(packformat.BLOCKS, [
            Frame(a, b, i * packformat.BLOCK, packformat.BLOCK)
            for i, (a, b) in enumerate(blocks)])

    def _slice(self, pack: bytes, off: int, ln: int) -> bytes:
        lay = self.layout(pack)
        if lay.kind not in (packformat.PACK, packformat.BLOCKS):  # one frame: whole
            obj = self._objs.get(pack, lambda: self.repo.read_object(pack))
            whole = self._blocks.get((pack, -1), lambda: self.repo.decode_checked(
                pack, obj, f"object {pack.hex()}"))
            return whole[off : off + ln]
        if ln == 0:
            return b""
        frames = span(lay, off, ln)
        if len(frames) == 1:  # the common case: a small file inside one frame
            f = lay.frames[frames[0]]
            data = self._frame(pack, lay, frames[0])
            if ln < len(data):  # a frame of small members (a big chunk is a frame alone)
                self._local.last = (pack, f.plain, f.plain + len(data), data)
            return data[off - f.plain : off - f.plain + ln]
        parts = [self._frame(pack, lay, i) for i in frames]
        start = off - lay.frames[frames[0]].plain
        return b"".join(parts)[start : start + ln]

    def _in_last(self, pack: bytes, off: int, ln: int) -> bytes | None:
        """The member when it lies inside the frame this thread decoded last: the small
        files of a pack come in its order, ~a hundred a frame, so most reads skip the
        layout, the span and the frame cache's lock (its bytes are checked against the
        chunk id all the same)."""
        last: tuple[bytes, int, int, bytes] | None = getattr(self._local, "last", None)
        if last is None or last[0] != pack or not ln:
            return None
        _p, start, end, data = last
        if off < start or off + ln > end:
            return None
        return data[off - start : off - start + ln]

    def _frame(self, pack: bytes, lay: Layout, i: int) -> bytes:
        f = lay.frames[i]
        return self._blocks.get((pack, i), lambda: decode_frame(
            self.zd(), lay.kind, self.repo.backend.get_range(chunk_key(pack), f.start,
                                                             f.end - f.start)))

    def read(self, e: Entry) -> bytes:
        """A small file's bytes (e.pack), checked against its chunk id."""
        if len(e.chunks) != 1:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {e.path!r} is packed "
                                  "but has not one chunk")
        return self.read_member(e.pack, e.pack_off, e.pack_len, e.chunks[0][0], e.path)

    def read_member_into(self, pack: bytes, off: int, ln: int, cid: bytes, path: bytes,
                         out: mmap.mmap) -> bytes | int:
        """read_member(), or for a big chunk (a frame of its own: a disk image's block) of a
        local pack read on demand, its bytes decoded into out and checked there: returns
        their length. No buffer is allocated for it (a new 1 MiB one is 256 page faults
        and their zeroing, and glibc's per-thread arenas gave it back with madvise), its
        frame is read past the page cache (LocalBackend.get_range_into: no insertion and
        copy) into this thread's scratch buffer, and nothing is copied again to be written
        (out is the O_DIRECT write's buffer: blocks/pipeline.py). The bench's 300 MiB
        image written alone (the parent's path), CPU medians of 4 alternating with the
        previous code at load ~8: 0.49 -> 0.33 s cold, 0.49 -> 0.33 s warm."""
        get_into = getattr(self.repo.backend, "get_range_into", None)  # local only
        if get_into is None or self._fetch is not None or not 0 < ln <= len(out):
            return self.read_member(pack, off, ln, cid, path)
        try:
            lay = self.layout(pack)
            frames = span(lay, off, ln) if lay.kind == packformat.PACK else range(0)
        except ObjectCorrupt as err:
            raise self._corrupt(pack, path, str(err).removeprefix(f"object {pack.hex()} ")) \
                from err
        except ValueError as err:
            raise self._corrupt(pack, path, f"does not decompress: {err}") from err
        f = lay.frames[frames[0]] if len(frames) == 1 else None
        if f is None or f.plain != off or f.size != ln:  # small members share their frames
            return self.read_member(pack, off, ln, cid, path)
        stored = f.end - f.start
        from ..fs import directio  # here: a patch restore (no big file) never loads it

        scratch: mmap.mmap | None = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < stored + 2 * directio.ALIGN:
            scratch = self._local.scratch = directio.buffer(stored + 2 * directio.ALIGN)
        try:
            payload = get_into(chunk_key(pack), f.start, stored, scratch)
        except FileNotFoundError as err:
            raise self._corrupt(pack, path, "is missing") from err
        view = memoryview(out)[:ln]
        try:
            if len(payload) != stored or not stored:
                raise ValueError("truncated frame")
            if payload[0] == packformat.RAW and stored == ln + 1:
                view[:] = payload[1:]
            elif payload[0] == packformat.ZSTD:
                reader = self.zd().stream_reader(payload[1:], read_size=stored)
                got = 0
                while got < ln and (n := reader.readinto(view[got:])):
                    got += n
                if got != ln:
                    raise ValueError(f"{got} bytes, not {ln}")
            else:
                raise ValueError("unknown frame header")
        except (zstandard.ZstdError, ValueError) as err:
            raise self._corrupt(pack, path, f"does not decompress: {err}") from err
        if self.repo.chunk_id(view) != cid:
            raise SnapshotCorrupt(f"snapshot {self.sid} is corrupt: {path!r} does not match "
                                  f"its id in object {pack.hex()}")
        return ln

    def read_member(self, pack: bytes, off: int, ln: int, cid: bytes, path: bytes) -> bytes:
        """One packed chunk (of file `path`), checked against its id."""
        try:
            fetch = self._fetch
            data = None if fetch is None else fetch.take(pack, off, ln)
            if data is None:
                data = self._in_last(pack, off, ln)
            if data is None:
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
