"""The tree a capture builds: the walk that builds it (the capture's first pass, Walker),
the tree held encoded, and the parent snapshot read beside the walk.

A capture of a million files used to hold a million Entry objects (~700 bytes each with
their path, lists and ints) until the manifest was encoded, and an incremental one the
parent's million decoded entries as well. Here each entry is kept as its msgpack bytes
(~180 bytes held) while it may still change, decoded only while a reader fills it in, and
goes into the manifest body, compressed as it is built (dirbody.DirBodyWriter: ~45
bytes), once it is final: the same format as before. The parent is decoded one entry at a
time as the walk passes its path: both are in walk order (depth first, names sorted), so
finding a path's parent entry is a merge, not a lookup in a dict of every path.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec
import zstandard

from .. import tuning
from ..fs import fsutil
from ..repository import dirbody, manifest
from ..repository.manifest import BLK, CHR, DIR, FIFO, FILE, HARDLINK, SOCK, SYMLINK, Entry

if TYPE_CHECKING:
    from ..progress import Progress
    from ..repository.repository import Repository


class _PathOnly(msgspec.Struct, array_like=True):
    path: bytes  # an array-like struct ignores the entry's trailing fields


_path_dec = msgspec.msgpack.Decoder(_PathOnly)
log = logging.getLogger(__name__)


_DROPPED, _DIR, _LINK = 1, 2, 4  # EncodedTree's flags of an entry
_FLAGS = {DIR: _DIR, HARDLINK: _LINK}
_BATCH = 1024  # final entries walked that wait to go into the body together
_RUN = 4096  # final entries behind a pending one that are held compressed together
_encode = manifest.encode_entry
_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, stat.S_IFREG, stat.S_IFDIR


_HOLE = 0xFFFFFFFF  # a _Run's length of an entry it does not hold (still pending)


class _Run:
    """Final entries of [start, end) held compressed while a pending entry before them
    keeps them from the body: their msgpack joined and compressed, and each one's length;
    the pending entries among them (`holes`) stay in EncodedTree.raw."""

    __slots__ = ("data", "end", "holes", "lengths", "start")

    def __init__(self, zc: zstandard.ZstdCompressor, start: int, raws: list[bytes],
                 holes: list[int]) -> None:
        self.start, self.end = start, start + len(raws)
        self.holes = array("q", holes)
        self.lengths = array("I", map(len, raws))
        for k in holes:
            self.lengths[k - start] = _HOLE
        held = set(holes)
        self.data = zc.compress(b"".join(r for k, r in enumerate(raws, start)
                                         if k not in held) if holes else b"".join(raws))

    def raws(self) -> list[bytes | None]:
        """Its entries in order, None for each hole."""
        joined = zstandard.ZstdDecompressor().decompress(self.data)
        out: list[bytes | None] = []
        at = 0
        for n in self.lengths:
            if n == _HOLE:
                out.append(None)
                continue
            out.append(joined[at : at + n])
            at += n
        return out


class EncodedTree:
    """Entries in walk order, each msgpack-encoded until it is final, then added to the
    manifest body being compressed (dirbody.DirBodyWriter); the size of each regular file
    beside. An entry is final once nothing changes it any more: when walked, unless it is
    a file to read (`pending`); a file read, once put() with its pack ids; or dropped. The
    final entries before the first pending one go into the body, so the tree holds
    encoded only the entries from the oldest file still being read on (readers follow
    the walk; a pack names its files once stored), ~45 compressed bytes for the others.
    Behind a file still to read, final entries wait: an incremental's changed files are
    read after its walk (a small capture reads with threads once the walk is done), so its
    first changed file held every later entry encoded, ~200 bytes each (a million files,
    100 touched: ~190 MB). Runs of _RUN final entries or more behind a pending one are
    therefore held compressed (_Run, ~50 bytes an entry) until the body reaches them.
    Thread-safe: the packer thread puts entries while the walk appends."""

    def __init__(self) -> None:
        self.raw: list[bytes | None] = []  # None once in the body (or dropped)
        self.sizes = array("q")  # a regular file's size, 0 for any other entry
        self.dropped: set[bytes] = set()  # paths of the files dropped (not captured)
        self._pending = bytearray()  # 1: a file still to read
        self._flags = bytearray()
        self._lock = threading.Lock()
        self._next = 0  # the first entry not yet in the body
        self._runs: deque[_Run] = deque()  # in order, all at or after _next
        self._packed_to = 0  # entries before it are in the body, pending, or in a run
        self._zc = zstandard.ZstdCompressor(level=1)  # the runs' (used under _lock)
        self._body = dirbody.DirBodyWriter()
        self._files_size = 0  # of the regular files in the body
        self._others = 0  # entries but directories in the body

    def __len__(self) -> int:
        return len(self.raw)

    def append(self, e: Entry, *, pending: bool = False) -> int:
        """Entry e, walked (the walk's thread only). Not under the lock: _advance reads
        the entries below len(raw), and raw is appended last."""
        kind = e.kind
        self._pending.append(pending)
        self._flags.append(_FLAGS.get(kind, 0))
        self.sizes.append(e.size if kind == FILE else 0)
        self.raw.append(_encode(e))
        i = len(self.raw) - 1
        if i - self._next >= _BATCH:
            with self._lock:
                self._advance()
                if i - max(self._next, self._packed_to) >= 2 * _RUN:
                    self._pack_runs(i + 1)
        return i

    def __getitem__(self, i: int) -> Entry:
        raw = self.raw[i]
        assert raw is not None, "an entry already final"
        return manifest.entry(raw)

    def put(self, i: int, e: Entry) -> None:
        """Entry i as it is now (a reader filled it in): final."""
        raw = manifest.encode_entry(e)
        with self._lock:
            assert self._pending[i], "an entry put twice"
            self.raw[i] = raw
            self.sizes[i] = e.size if e.kind == FILE else 0
            self._pending[i] = 0
            if i == self._next:
                self._advance()

    def put_many(self, items: list[tuple[int, Entry]]) -> None:
        """put() of each (index, entry): a stored pack's thousands of files, encoded
        before and set under one taking of the lock (the packer thread holds the GIL
        for this, beside the walk's thread)."""
        enc = [(i, _encode(e), e.size if e.kind == FILE else 0) for i, e in items]
        with self._lock:
            raw, sizes, pending = self.raw, self.sizes, self._pending
            for i, r, size in enc:
                assert pending[i], "an entry put twice"
                raw[i] = r
                sizes[i] = size
                pending[i] = 0
            self._advance()

    def drop(self, i: int) -> bytes:
        """A file to read that is not captured after all; returns its path."""
        path = self.path(i)
        with self._lock:
            assert self._pending[i], "a final entry dropped"
            self.dropped.add(path)
            self._pending[i] = 0
            self._flags[i] |= _DROPPED
            if i == self._next:
                self._advance()
        return path

    def path(self, i: int) -> bytes:
        raw = self.raw[i]
        assert raw is not None, "an entry already final"
        return _path_dec.decode(raw).path

    def _pack_runs(self, n: int) -> None:
        """Under _lock: runs of at least _RUN final entries among the entries below n not
        yet in the body or a run, compressed (_Run) and let go of; the pending entries
        among them stay (a run's holes). Runs stopped at each pending entry before: an
        incremental's changed files spread closely over the tree (the scale run's 100 at
        100k, one every ~1,000 entries) left no stretch of _RUN, so every entry walked
        behind the first was held encoded (+12 MiB peak at 100k)."""
        raw, pending = self.raw, self._pending
        start = k = max(self._next, self._packed_to)
        held = 0  # final entries in [start, k)
        holes: list[int] = []
        while k < n:
            j = pending.find(1, k, n)
            end = n if j < 0 else j
            held += end - k
            if held >= _RUN:
                self._runs.append(_Run(self._zc, start, raw[start:end], holes))  # type: ignore[arg-type]
                for a, b in itertools.pairwise([start - 1, *holes, end]):  # all but holes
                    raw[a + 1 : b] = [None] * (b - a - 1)
                start, held, holes = end, 0, []
            if j < 0:
                break  # a short last run: it may grow with the next entries walked
            holes.append(j)
            if len(holes) * 16 > held:
                # no run starts with a pending entry, nor holds many (a full capture's
                # files are all pending: scanned again from its start at every call, the
                # walk was quadratic)
                start, held, holes = j + 1, 0, []
            k = j + 1
        self._packed_to = start

    def _advance(self) -> None:
        """Under _lock: the final entries from _next on into the body, up to a pending one
        (those held in a run decompressed on the way)."""
        while True:
            i = self._next
            if self._runs and self._runs[0].start == i:
                run = self._runs.popleft()
                got, raw = run.raws(), self.raw
                if any(self._pending[h] for h in run.holes):
                    # one still to read: its entries back, to go in as those before it do
                    for k, r in enumerate(got, i):
                        if r is not None:
                            raw[k] = r
                    continue
                for h in run.holes:  # read (or dropped) by now: final
                    got[h - i], raw[h] = raw[h], None
                self._add(i, run.end, got)
                continue
            raw = self.raw
            n = len(raw)
            j = self._pending.find(1, i, n)
            if j < 0:
                j = n
            if self._runs and self._runs[0].start < j:
                j = self._runs[0].start
            if j == i:
                return
            batch = raw[i:j]
            raw[i:j] = [None] * (j - i)
            self._add(i, j, batch)

    def _add(self, i: int, j: int, batch: Sequence[bytes | None]) -> None:
        """Under _lock: entries [i, j) into the body. A hard link's target comes before it
        in walk order, so it is final (kept or dropped) by the time the link is."""
        self._next = j
        if not self.dropped:
            self._body.add_many(batch)  # type: ignore[arg-type]
            self._files_size += sum(self.sizes[i:j])
            self._others += (j - i) - self._flags.count(_DIR, i, j)
            return
        for k, r in enumerate(batch, i):  # some files were dropped: one at a time
            f = self._flags[k]
            assert r is not None
            if f & _DROPPED or (f & _LINK and manifest.entry(r).target in self.dropped):
                continue
            self._body.add_many([r])
            self._files_size += self.sizes[k]
            self._others += not f & _DIR

    def body(self) -> tuple[list[bytes], int, int]:
        """(encoded manifest body in pieces, bytes of its regular files, its entries but
        directories) once every entry is final: those captured, less those dropped on the
        way."""
        with self._lock:
            self._advance()
            if self._next != len(self.raw):
                raise AssertionError(f"entry {self._next} is still being read")
            return self._body.finish_pieces(), self._files_size, self._others

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """The body's pieces (manifest.Header.pieces), once body() returned."""
        return self._body.pieces


class ParentCursor:
    """The parent snapshot's entries, decoded one at a time as the walk passes their paths;
    and the set of objects they name (what its commit made durable, Repository.durable).
    `vouched` False: its ctimes do not stand for its bytes, so no file is taken from it."""

    def __init__(self, pieces: Iterable[list[msgspec.Raw]], vouched: bool) -> None:
        self._pieces = iter(pieces)  # manifest.iter_pieces: decoded as the walk needs them
        self._raws: list[msgspec.Raw] = []
        self._next = 0
        self._cur: Entry | None = None
        self._key: list[bytes] = []
        self.vouched = vouched
        self.objects: set[bytes] = set()
        self.ended = False  # past its last entry: get() finds nothing more (a full capture)
        self.seen = 0  # entries decoded so far
        self._advance()

    def _advance(self) -> None:
        while self._next >= len(self._raws):
            try:
                self._raws, self._next = next(self._pieces), 0
            except StopIteration:
                self._raws, self._cur, self.ended = [], None, True
                return
            except (ValueError, msgspec.DecodeError, zstandard.ZstdError) as exc:
                # the rest of a damaged parent is not used: its files are read again
                log.warning("parent manifest unreadable past %d entries: %s", self.seen, exc)
                self._raws, self._cur, self.ended = [], None, True
                self._pieces = iter(())
                return
        self.seen += 1
        e = self._cur = manifest.entry(self._raws[self._next])
        self._next += 1
        self._key = e.path.split(b"/")
        self.objects |= e.objects()

    def get(self, path: bytes) -> Entry | None:
        """The parent's regular file at `path`, if any. Paths must be asked in walk order
        (a path asked out of order is simply not found: the file is read again)."""
        if self._cur is None:
            return None  # past the parent's last entry (a full capture: from the start)
        key = path.split(b"/")
        while self._cur is not None and self._key < key:
            self._advance()
        cur = self._cur
        if cur is None or self._key != key or cur.kind != FILE or not self.vouched:
            return None
        return cur

    def finish(self) -> set[bytes]:
        """Every object the parent names (its remaining entries decoded too)."""
        while self._cur is not None:
            self._advance()
        self._raws, self._pieces = [], iter(())
        return self.objects



class Walker:
    """The capture's first pass: lstat every entry below the root through directory fds
    (O_NOFOLLOW: never a symlink), recording metadata, xattrs, symlink targets, device
    numbers and hard-link groups into the tree, and taking each regular file unchanged
    since the parent snapshot from the parent's entry. What is left to read is the second
    pass's (archiver.py): `on_dir` gets each directory's path, inode and the tree indexes
    and names of its files to read whole once the walk has finished listing it (its
    subdirectories first), so reading may start while the walk goes on; `on_big` gets each
    big file (read in blocks) as soon as it is walked, with its directory's fd and its
    name, so the big file's reads and compression overlap the rest of the walk and the
    small files. A mount point inside the state is kept as a directory, its contents not
    captured."""

    def __init__(self, repo: Repository, tree: EncodedTree, parent: ParentCursor,
                 progress: Progress, warnings: list[str], root_dev: int,
                 mounts: set[tuple[int, int]], start_readers: Callable[[], None],
                 on_dir: Callable[[bytes, int, array[int], list[bytes]], None],
                 on_big: Callable[[int, bytes, int], None]) -> None:
        self.repo = repo
        self.tree = tree
        self.parent = parent
        self.progress = progress
        self.warnings = warnings
        self.total = 0  # bytes of every regular file
        self.reused = 0  # bytes of the files unchanged since the parent
        self._root_dev = root_dev
        self._mounts = mounts
        self._links: dict[tuple[int, int], bytes] = {}
        self._walk_bytes = 0  # bytes of files the walk saw that the parent cannot vouch for
        # called once the files to read are known to make a big capture
        self._start_readers = start_readers
        self._readers_started = False
        self._big_file = repo.config.big_file  # chunker.fixed_block: read in blocks
        self._on_dir = on_dir
        self._on_big = on_big

    def walk(self, fd: int, rel: bytes) -> None:
        self.progress.poll()
        st = os.fstat(fd)
        self.tree.append(Entry(path=rel, kind=DIR, mode=st.st_mode, uid=st.st_uid,
                               gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                               xattrs=fsutil.read_xattrs(fd)))
        if rel and (st.st_dev != self._root_dev or (st.st_dev, st.st_ino) in self._mounts):
            # A mount point inside the state (e.g. /proc of a container): keep the
            # directory, not the other filesystem.
            self.warnings.append(f"{fsutil.shown(rel)}: mount point, contents not captured")
            return
        # indexes of its files to read whole (not unchanged since the parent)
        files = array("q")
        names: list[bytes] = []  # their names, in the same order
        dir_ino = st.st_ino
        parent, append = self.parent, self.tree.append
        for name in sorted(fsutil.iter_names(fd)):
            path = rel + b"/" + name if rel else name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between readdir and lstat: it is simply not there
            mode = st.st_mode
            fmt = mode & _S_IFMT
            if fmt == _S_IFREG and st.st_nlink == 1 and parent.ended:
                # The common case, on its own short path (the walk's thread is the capture's
                # critical path): a regular file with one link and no parent entry to take
                # it from; its reader lists its xattrs.
                size = st.st_size
                ent = Entry(path, FILE, mode, st.st_uid, st.st_gid, st.st_mtime_ns, size,
                            st.st_ctime_ns, st.st_ino)
                self.total += size
                idx = append(ent, pending=True)
                if size >= self._big_file:
                    self._on_big(fd, name, idx)  # read in blocks, not by the readers
                    continue
                files.append(idx)
                names.append(name)
                self._walk_bytes += size
                if not self._readers_started and (
                        self._walk_bytes >= tuning.CAPTURE_PROCESS_THRESHOLD):
                    self._readers_started = True
                    self._start_readers()
                continue
            if fmt == _S_IFDIR:
                try:
                    sub = os.open(name, fsutil.DIR_FLAGS, dir_fd=fd)
                except OSError as err:  # replaced by a symlink or removed meanwhile
                    fsutil.check_exhausted(err)
                    self.warnings.append(f"{fsutil.shown(path)}: changed during capture ({err})")
                    continue
                try:
                    self.walk(sub, path)
                finally:
                    os.close(sub)
                continue
            ent = Entry(path=path, kind=FILE, mode=mode, uid=st.st_uid, gid=st.st_gid,
                        mtime_ns=st.st_mtime_ns)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1:
                primary = self._links.get(key)
                if primary is not None:
                    ent.kind, ent.target = HARDLINK, primary
                    self.tree.append(ent)
                    continue
            p = self.parent.get(path) if stat.S_ISREG(mode) else None
            try:
                if p is not None and p.ctime_ns and (p.ino, p.ctime_ns) == (st.st_ino,
                                                                            st.st_ctime_ns):
                    ent.xattrs = p.xattrs  # setting/removing an xattr changes ctime: unchanged
                elif not stat.S_ISREG(mode):
                    ent.xattrs = fsutil.read_xattrs(fsutil.proc_path(fd, name))
                # else a file to read: its reader lists them on the descriptor it reads
                # (no lookup through /proc per file here); a change between the walk and
                # the read moves ctime, so the capture vouches for nothing then (_vouch)
                if stat.S_ISLNK(mode):
                    ent.target = os.fsencode(os.readlink(name, dir_fd=fd))
            except FileNotFoundError:
                continue  # vanished after its lstat: not there, as if gone before
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise  # a real error (EIO...) fails the capture
                # readlink of what is no longer a symlink: replaced since its lstat
                self.warnings.append(f"{fsutil.shown(path)}: changed during capture ({err}); "
                                     "not captured")
                continue
            if st.st_nlink > 1:
                self._links[key] = path  # only once it is surely an entry: links name it
            pending = big = False  # a file to read: final once read (EncodedTree.put)
            if stat.S_ISREG(mode):
                ent.size, ent.ctime_ns, ent.ino = st.st_size, st.st_ctime_ns, st.st_ino
                self.total += st.st_size
                if self._reuse(ent, p):
                    self.reused += st.st_size
                elif st.st_size >= self._big_file:
                    pending = big = True  # read in blocks (on_big), not by the readers
                else:
                    files.append(len(self.tree))
                    names.append(name)
                    pending = True
                    self._walk_bytes += st.st_size
                    if not self._readers_started and (
                            self._walk_bytes >= tuning.CAPTURE_PROCESS_THRESHOLD):
                        self._readers_started = True
                        self._start_readers()
            elif stat.S_ISLNK(mode):
                ent.kind, ent.size = SYMLINK, st.st_size
            else:
                ent.kind = (FIFO if stat.S_ISFIFO(mode) else CHR if stat.S_ISCHR(mode)
                            else BLK if stat.S_ISBLK(mode) else SOCK)
                ent.rdev = st.st_rdev
            idx = self.tree.append(ent, pending=pending)
            if big:
                self._on_big(fd, name, idx)
        self._on_dir(rel, dir_ino, files, names)

    def _reuse(self, e: Entry, p: Entry | None) -> bool:
        """Take a regular file's data from the parent's entry p when the file is unchanged
        since (same size, mtime, and the inode and ctime its capture vouched for)."""
        if (p is None or p.kind != FILE or p.size != e.size or p.mtime_ns != e.mtime_ns
                or p.ctime_ns != e.ctime_ns or p.ino != e.ino):
            return False
        if not (self.repo.has_chunk(p.pack) if p.pack
                else all(self.repo.has_chunk(cid) for cid in p.objects())):
            return False  # parent data went missing: read the file again
        e.chunks, e.pack, e.pack_off, e.pack_len = p.chunks, p.pack, p.pack_off, p.pack_len
        e.slices = p.slices
        return True
