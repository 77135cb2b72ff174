"""Read-ahead of a restore's packs: coalesced ranged GETs, several at once, bounded memory.

The plan is every member (pack, offset, length) a restore will read, in about the order it
reads them. Each pack the plan touches is one job, in order of first need:
- dense (the needed bytes are at least half of the plaintext up to the last needed byte,
  as in a full restore): one GET from the object's start to a bound past the last needed
  frame (a frame's stored bytes are at most its plaintext + 1, and a frame ends at most
  BLOCK + INLINE_MAX past a member's end), which brings the frame table along: one
  request per pack. The bound is clipped at the object's end by the store. Its body is
  read as it arrives: each frame is decoded, and its members can be written, as soon as
  its bytes are in, not once the whole pack (32 MiB) is (the writers used to wait for
  that first GET to end, 0.3-0.7 s on the loaded machine here).
- sparse (a few files of a pack): the frame table (one GET of HEADER_MAX bytes, unless the
  cache knows it: a writer taking over another's rest is handed its tables), then the
  needed frames, neighbours closer than tuning.RESTORE_COALESCE_GAP merged into one GET.
Up to tuning.RESTORE_FETCH_STREAMS jobs run at once, while the plaintext of the jobs
running or not yet consumed stays under tuning.RESTORE_FETCH_BYTES. A read whose job has not
started runs it itself, so a read never waits behind the window. A decoded frame is
dropped once every planned read of it was served; a read outside the plan (or of a pack
of an older format, left to on-demand reads) gets None and reads on demand.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import zstandard

from .. import tuning
from . import packformat
from .packformat import Layout
from .repository import ObjectCorrupt, Repository, chunk_key


class PackCache(Protocol):
    """What the read-ahead needs of packreader.PackCache (which owns it)."""

    repo: Repository

    def layout(self, pack: bytes, head: bytes | None = None) -> Layout: ...
    def known_layout(self, pack: bytes) -> Layout | None: ...
    def zd(self) -> zstandard.ZstdDecompressor: ...

_NEW, _RUNNING, _DONE = 0, 1, 2


class _Job:
    def __init__(self, pack: bytes) -> None:
        self.pack = pack
        self.planned: Counter[tuple[int, int]] = Counter()  # (offset, length) -> reads
        self.reads: Counter[tuple[int, int]] = Counter()  # ... of them not yet served
        self.state = _NEW
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.layout: Layout | None = None  # None once done: an older format, on demand
        self.frames: dict[int, bytes] = {}  # decoded frames still to be read
        self.decoded: set[int] = set()  # frames decoded so far (read or not)
        self.refs: Counter[int] = Counter()  # frame -> planned reads left
        self.future: Future[None] | None = None

    @property
    def cost(self) -> int:
        return sum(ln for _off, ln in self.planned)


class Prefetch:
    def __init__(self, cache: PackCache, plan: list[tuple[bytes, int, int]],
                 budget: int = 0) -> None:
        """budget: plaintext bytes held at most (default tuning.RESTORE_FETCH_BYTES); a
        job bigger than it still runs, alone."""
        self.cache = cache
        self._budget = budget or tuning.RESTORE_FETCH_BYTES
        jobs: dict[bytes, _Job] = {}
        for pack, off, ln in plan:
            job = jobs.get(pack)
            if job is None:
                job = jobs[pack] = _Job(pack)
            job.planned[(off, ln)] += 1
        for job in jobs.values():
            job.reads = Counter(job.planned)
        self._jobs = jobs
        self._order = list(jobs.values())
        self._costs = {j.pack: j.cost for j in self._order}
        self._next = 0
        self._held = 0  # plaintext bytes of jobs started and not yet consumed
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a job got frames, or ended
        self._pool = ThreadPoolExecutor(tuning.RESTORE_FETCH_STREAMS,
                                        thread_name_prefix="fetch")
        self.gets = 0  # GETs made (tests prove the coalescing with it)
        self._pump()

    def _pump(self) -> None:
        with self._lock:
            while self._next < len(self._order):
                job = self._order[self._next]
                if job.state != _NEW:  # claimed by a read meanwhile (its cost may be
                    self._next += 1  # released already: no longer in _costs)
                    continue
                cost = self._costs[job.pack]
                if self._held and self._held + cost > self._budget:
                    return
                self._next += 1
                job.state = _RUNNING
                self._held += cost
                job.future = self._pool.submit(self._run, job)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for job in self._order:
                if job.future is not None and job.future.cancelled():
                    job.done.set()  # its reads (if any come) go on demand
                job.frames.clear()
            self._ready.notify_all()

    def _run(self, job: _Job) -> None:
        try:
            self._fetch(job)
        except FileNotFoundError as err:
            job.error = ObjectCorrupt(f"object {job.pack.hex()} is missing")
            job.error.__cause__ = err
        except BaseException as err:  # raised to every read of this pack
            job.error = err
        finally:
            with self._lock:
                job.state = _DONE
                job.done.set()
                self._ready.notify_all()
                # every frame read already (while the pack streamed in), or none to read
                spent = job.layout is None or job.error is not None or not job.frames
            if spent:
                self._release(job)

    def _release(self, job: _Job) -> None:
        with self._lock:
            self._held -= self._costs.pop(job.pack, 0)
        self._pump()

    def _get(self, key: str, offset: int, n: int) -> bytes:
        with self._lock:
            self.gets += 1
        return self.cache.repo.backend.get_range(key, offset, n)

    def _refs(self, job: _Job, lay: Layout) -> Counter[int]:
        """frame -> planned reads of it"""
        refs: Counter[int] = Counter()
        for (off, ln), n in job.planned.items():
            if ln:
                for i in packformat.span(lay, off, ln):
                    refs[i] += n
        return refs

    def _decode(self, lay: Layout, i: int, raw: memoryview) -> bytes:
        f = lay.frames[i]
        if len(raw) != f.end - f.start:
            raise ValueError("pack is shorter than its frame table")
        plain = packformat.decode_frame(self.cache.zd(), packformat.PACK, raw)
        if len(plain) != f.size:
            raise ValueError("a frame's size does not match its table")
        return plain

    def _stream(self, job: _Job, key: str, bound: int) -> int | None:
        """The dense GET, its frames decoded and handed to the reads as they arrive; how
        many bytes came (None: not a format-3 pack, read on demand). The body's pieces
        are kept as they came, each only until every needed frame it holds is decoded: a
        frame within one piece is decoded from it in place; copying them all into one
        buffer of the pack's size cost a copy of every byte and a page fault every 4 KiB
        (in a restore writer of the 10k-file bench, 16,000 of its 37,000 faults)."""
        with self._lock:
            self.gets += 1
        body = _Pieces()
        lay: Layout | None = None
        todo: list[int] = []  # needed frames not decoded yet, in the object's order
        pieces = self.cache.repo.backend.get_range_pieces(key, 0, bound, packformat.BLOCK)
        for piece in pieces:
            body.add(piece[:bound - body.end] if body.end + len(piece) > bound else piece)
            if lay is None:
                if body.first(1) != bytes([packformat.PACK]):
                    return None  # an older format: read on demand, as before
                if body.end < packformat.HEADER_MAX:
                    continue
                lay, todo = self._start(job, body.first(packformat.HEADER_MAX))
            todo = self._publish(job, lay, todo, body)
        if lay is None:  # a pack smaller than the table's bound: all of it is here
            if body.first(1) != bytes([packformat.PACK]):
                return None
            lay, todo = self._start(job, body.first(body.end))
            self._publish(job, lay, todo, body)
        return body.end

    def _start(self, job: _Job, head: bytes) -> tuple[Layout, list[int]]:
        lay = self.cache.layout(job.pack, head)
        refs = self._refs(job, lay)
        with self._lock:
            job.frames, job.refs, job.layout = {}, refs, lay
        return lay, sorted(refs)

    def _publish(self, job: _Job, lay: Layout, todo: list[int], body: _Pieces) -> list[int]:
        """Decode the needed frames whose bytes are all in; the ones still to come."""
        done = 0
        for i in todo:
            f = lay.frames[i]
            if f.end > body.end:
                break
            plain = self._decode(lay, i, body.range(f.start, f.end))
            with self._lock:
                job.frames[i] = plain
                job.decoded.add(i)
                self._ready.notify_all()
            done += 1
        todo = todo[done:]
        body.drop_before(lay.frames[todo[0]].start if todo else body.end)
        return todo

    def _fetch(self, job: _Job) -> None:
        key = chunk_key(job.pack)
        end = max(off + ln for off, ln in job.planned)
        bufs: list[tuple[int, bytes | memoryview]] = []  # (object offset, bytes)
        if 2 * job.cost >= end:
            bound = (packformat.HEADER_MAX + end + packformat.BLOCK + tuning.INLINE_MAX
                     + packformat.MAX_FRAMES)
            got = self._stream(job, key, bound)
            if got is None:
                return  # an older format: read on demand, as before
            lay = job.layout
            assert lay is not None
            refs = job.refs  # those in the bytes that came are decoded
        else:
            known = self.cache.known_layout(job.pack)
            if known is not None:  # handed over by the writer whose rest this is
                lay, got = known, 0
            else:
                data = self._get(key, 0, packformat.HEADER_MAX)
                if data[:1] != bytes([packformat.PACK]):
                    return  # an older format: read on demand, as before
                lay = self.cache.layout(job.pack, data)
                bufs.append((0, data))
                got = len(data)
            refs = self._refs(job, lay)
        group: list[packformat.Frame] = []
        for i in sorted(refs):
            f = lay.frames[i]
            if f.end <= got:
                continue
            if group and f.start - group[-1].end > tuning.RESTORE_COALESCE_GAP:
                bufs.append((group[0].start, self._get(key, group[0].start,
                                                       group[-1].end - group[0].start)))
                group = []
            group.append(f)
        if group:
            bufs.append((group[0].start, self._get(key, group[0].start,
                                                   group[-1].end - group[0].start)))
        frames = {}
        for i in refs:
            f = lay.frames[i]
            if i in job.decoded:
                continue  # decoded while the pack streamed in (and maybe read already)
            at, buf = next((a, b) for a, b in reversed(bufs) if a <= f.start)
            frames[i] = self._decode(lay, i, memoryview(buf)[f.start - at:f.end - at])
        with self._lock:
            job.frames.update(frames)
            job.refs, job.layout = refs, lay
            self._ready.notify_all()

    def take(self, pack: bytes, off: int, ln: int) -> bytes | None:
        """The member's plaintext (not yet checked), or None: read it on demand."""
        job = self._jobs.get(pack)
        if job is None:
            return None
        claim = False
        with self._lock:
            if job.reads[(off, ln)] <= 0:
                return None  # not planned (or read more often than planned)
            job.reads[(off, ln)] -= 1
            if job.state == _NEW:
                job.state, claim = _RUNNING, True
                self._held += self._costs[pack]
        if claim:
            self._run(job)
        with self._ready:
            while True:  # until this member's frames are in (the pack may still stream)
                if job.error is not None:
                    raise job.error
                lay = job.layout
                idx = [] if lay is None or not ln else packformat.span(lay, off, ln)
                if job.done.is_set() or (lay is not None and all(
                        i in job.frames for i in idx)):
                    break
                self._ready.wait()
            if lay is None:
                return None
            if not ln:
                return b""
            parts = [job.frames.get(i) for i in idx]
            for i in idx:
                job.refs[i] -= 1
                if job.refs[i] <= 0:
                    job.frames.pop(i, None)
            drained = not job.frames and job.state == _DONE
        if drained:
            self._release(job)
        if any(p is None for p in parts):
            return None  # dropped by close(): on demand
        start = off - lay.frames[idx[0]].plain
        return b"".join(p for p in parts if p is not None)[start:start + ln]


class _Pieces:
    """A GET's body as its pieces came (object offsets from 0), kept from the first one
    a frame still to decode needs."""

    def __init__(self) -> None:
        self._pieces: list[tuple[int, bytes]] = []  # (offset, bytes), in order
        self.end = 0  # bytes received

    def add(self, piece: bytes) -> None:
        if piece:
            self._pieces.append((self.end, piece))
            self.end += len(piece)

    def first(self, n: int) -> bytes:
        """The body's first n bytes (only before anything was dropped)."""
        return self.range(0, min(n, self.end)).tobytes()

    def range(self, a: int, b: int) -> memoryview:
        """Bytes [a, b) of the body, all received and not dropped: in place when one
        piece holds them, else joined."""
        parts = []
        for off, piece in self._pieces:
            if off + len(piece) <= a:
                continue
            if off >= b:
                break
            parts.append(memoryview(piece)[max(0, a - off):b - off])
        if len(parts) == 1:
            return parts[0]
        return memoryview(b"".join(parts))

    def drop_before(self, pos: int) -> None:
        """Forget the pieces that end at or before pos."""
        keep = 0
        for off, piece in self._pieces:
            if off + len(piece) > pos:
                break
            keep += 1
        del self._pieces[:keep]
