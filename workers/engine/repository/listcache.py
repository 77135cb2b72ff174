"""Per-host cache of what an S3 repository holds: no LIST on a capture's hot path.

A capture needs the set of stored objects (data/, packidx/) to skip what is stored already.
On a bucket that is a LIST of every key (one request per 1000) each time; here it is a
file per repository under the host's cache directory, updated by this host's own puts and
deletes and rebuilt from a LIST when it is missing, older than
tuning.LIST_CACHE_MAX_AGE, or when a reclaim has condemned objects since it was built
(the marker object below changed).

Why a stale cache is safe: objects are content-addressed and never change, so a key this
host does not know of yet only costs a re-upload of identical bytes (the same key; stored
once). The only danger would be a key the cache still lists after a reclaim deleted it.
The reclaim protocol (s3reclaim.py) deletes only keys it first CONDEMNED in the marker
object, at least one safety margin earlier; every capture reads the marker before it
trusts the cache and treats condemned keys as absent (it stores them again), and a changed
marker invalidates the cache. So no capture can reference an object that may be deleted.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import NamedTuple, Protocol

import blake3
import msgspec

from .. import tuning


class ObjectInfo(NamedTuple):
    size: int
    modified: datetime  # the store's clock
    etag: str


class ObjectStore(Protocol):
    """What the cache needs of the S3 backend (which owns the cache)."""

    def head(self, key: str) -> ObjectInfo | None: ...
    def get(self, key: str) -> bytes: ...
    def list_fresh(self, prefix: str) -> Iterator[tuple[str, int, int]]: ...

CONDEMNED_KEY = "reclaim/condemned"  # written by the reclaim only (s3reclaim.py)
PACKIDX_PREFIX = "packidx/"
MANIFEST_PREFIX = "snapshots/"
CACHED_PREFIXES = ("data/", PACKIDX_PREFIX)


class Condemned(msgspec.Struct):
    """The marker: keys a reclaim found unreferenced and will delete on its next cycle."""

    cycle: str  # a random id per reclaim cycle
    keys: list[str]


class _State(msgspec.Struct):
    url: str
    marker: str  # ETag, size and time of the marker object, "" when there is none
    built: float  # time.time() of the LIST this was built from
    entries: dict[str, dict[str, tuple[int, int]]]  # prefix -> key -> (size, mtime ns)


def marker_token(found: ObjectInfo | None) -> str:
    return "" if found is None else f"{found.etag}:{found.size}:{found.modified.isoformat()}"


class ListingCache:
    """The cache file is a snapshot (from the last LIST) plus an append-only journal of the
    keys this host's processes stored or deleted since (one short line each, O_APPEND, so
    several worker processes share it and a killed capture's objects are still known to
    its rerun: it resumes without storing them again). A rebuild writes a new snapshot and
    starts a new journal whose first line names that snapshot."""

    def __init__(self, cache_dir: str | None, url: str, *,
                 max_age: float = tuning.LIST_CACHE_MAX_AGE) -> None:
        """url: what the cache is of, the store's endpoint with the repository's URL
        (S3Backend.from_url): one file per store and repository, never per bucket name."""
        self.url = url
        self.max_age = max_age
        base = None if cache_dir is None else os.path.join(
            cache_dir, f"listing-{blake3.blake3(url.encode()).hexdigest()[:24]}")
        self.path = None if base is None else base + ".msgpack"
        self.journal = None if base is None else base + ".journal"
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._pos = 0  # journal bytes applied to _state
        self._condemned: set[str] = set()
        self._condemned_token: str | None = None
        self._backend: ObjectStore | None = None
        self.rebuilds = 0  # LIST rebuilds (tests and the benchmark count them)

    def attach(self, backend: ObjectStore) -> None:
        self._backend = backend

    def _load(self) -> _State | None:
        if self.path is None:
            return None
        try:
            with open(self.path, "rb") as f:
                state = msgspec.msgpack.decode(f.read(), type=_State)
        except (OSError, msgspec.DecodeError):
            return None
        return state if state.url == self.url else None

    def _catch_up(self) -> None:
        """Under _lock: apply the journal's new lines (other processes' writes too); a
        journal of another snapshot (a rebuild elsewhere) means: load that snapshot."""
        if self.journal is None:
            return
        try:
            with open(self.journal, "rb") as f:
                head = f.readline()
                if self._state is None or head != _journal_head(self._state):
                    self._state, self._pos = self._load(), 0
                    if self._state is None or head != _journal_head(self._state):
                        self._state = None  # snapshot and journal disagree: rebuild
                        return
                f.seek(max(self._pos, len(head)))
                tail = f.read()
        except FileNotFoundError:
            self._state = None
            return
        end = tail.rfind(b"\n") + 1  # a line being appended right now waits for next time
        for line in tail[:end].splitlines():
            self._apply(line.decode(errors="replace"))
        self._pos = max(self._pos, len(head)) + end

    def _apply(self, line: str) -> None:
        key, _, size = line.partition(" ")
        removed = key.startswith("-")
        key = key.lstrip("-")
        prefix = key.split("/", 1)[0] + "/"
        if self._state is None or prefix not in self._state.entries:
            return
        if removed:
            self._state.entries[prefix].pop(key, None)
        else:
            self._state.entries[prefix][key] = (int(size or 0), 0)

    def _refresh_marker(self) -> str:
        """One HEAD of the marker (and a GET when it changed): the condemned keys now."""
        assert self._backend is not None
        token = marker_token(self._backend.head(CONDEMNED_KEY))
        if token != self._condemned_token:
            keys: set[str] = set()
            if token:
                try:
                    raw = self._backend.get(CONDEMNED_KEY)
                    keys = set(msgspec.msgpack.decode(raw, type=Condemned).keys)
                except FileNotFoundError:
                    token = ""
            self._condemned, self._condemned_token = keys, token
        return token

    def listing(self, prefix: str) -> Iterator[tuple[str, int, int]]:
        """The capture's view of prefix: cached keys minus condemned ones."""
        assert self._backend is not None
        if prefix not in CACHED_PREFIXES:
            yield from self._backend.list_fresh(prefix)
            return
        # Repository.load_known lists data/ first and uses an index of packidx/ only when
        # its pack is in that (marker-checked) view, so a packidx/ view right after one
        # needs no marker read of its own: one HEAD per capture, not two.
        token = (self._condemned_token if prefix == PACKIDX_PREFIX
                 and self._condemned_token is not None else self._refresh_marker())
        with self._lock:
            self._catch_up()
            state = self._state
            fresh = (state is not None and state.marker == token
                     and time.time() - state.built < self.max_age)
        if not fresh:
            self._rebuild(token)
        with self._lock:
            assert self._state is not None
            items = list(self._state.entries[prefix].items())
            hidden = self._condemned
        for key, (size, mtime) in items:
            if key not in hidden:
                yield key, size, mtime

    def _rebuild(self, token: str) -> None:
        assert self._backend is not None
        started = time.time()
        entries = {p: {k: (s, m) for k, s, m in self._backend.list_fresh(p)}
                   for p in CACHED_PREFIXES}
        self.rebuilds += 1
        self._install(_State(url=self.url, marker=token, built=started, entries=entries))
        self._prune_objects(entries[PACKIDX_PREFIX])
        self._forget_others()

    def _prune_objects(self, listed: Iterable[str]) -> None:
        """Kept index objects of packs a full listing no longer shows (a reclaim deleted
        them) are removed: kept forever, they grew with every pack the host ever saw.
        Another process may keep an index written after that listing meanwhile: losing
        it costs a GET."""
        if self.path is None:
            return
        wanted = {_flat(k) for k in listed}
        objects = os.path.dirname(self._object_path(PACKIDX_PREFIX + "x"))
        with contextlib.suppress(OSError), os.scandir(objects) as it:
            for e in it:
                if e.name not in wanted and not e.name.startswith(".listing-"):
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)

    def _forget_others(self) -> None:
        """The cache files of other repositories (other URLs; earlier versions keyed them
        otherwise) that no process of this host touched for tuning.
        LIST_CACHE_FORGET_AFTER: nothing else ever removed them. One still in use loses
        nothing it cannot rebuild (a LIST, and a GET per index it reads again)."""
        if self.path is None:
            return
        import shutil  # here, as tempfile in _replace: most processes never need it

        cache_dir, mine = os.path.split(self.path.removesuffix(".msgpack"))
        families: dict[str, list[tuple[str, float]]] = {}
        with contextlib.suppress(OSError), os.scandir(cache_dir) as it:
            for e in it:
                base = e.name.split(".", 1)[0]
                if base.startswith("listing-") and base != mine:
                    with contextlib.suppress(OSError):
                        families.setdefault(base, []).append(
                            (e.path, e.stat(follow_symlinks=False).st_mtime))
        cutoff = time.time() - tuning.LIST_CACHE_FORGET_AFTER
        for paths in families.values():
            if max(mtime for _p, mtime in paths) < cutoff:
                for path, _m in paths:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(path)

    def start_empty(self) -> None:
        """The repository was just made here (its config put create-once): the view is
        of nothing stored and no marker, so this host's first capture makes no LIST (two,
        data/ and packidx/). Safe whatever the store holds: a key missing from the view
        costs a re-upload of the same bytes, never a reference to a deleted object, and
        a marker found by a capture makes its view a LIST (see the module doc)."""
        self._install(_State(url=self.url, marker="", built=time.time(),
                             entries={p: {} for p in CACHED_PREFIXES}))

    def _install(self, state: _State) -> None:
        with self._lock:
            self._state = state
            self._pos = len(_journal_head(state))
            if self.path is None or self.journal is None:
                return
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                _replace(self.path, msgspec.msgpack.encode(state))
                _replace(self.journal, _journal_head(state))
            except OSError:
                pass  # a cache: losing it costs one LIST next time

    def _append(self, lines: list[str]) -> None:
        """Under _lock. One write per call: appends of concurrent processes never mix."""
        if self.journal is None or self._state is None:
            return
        data = "".join(line + "\n" for line in lines).encode()
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError:
            return  # no journal (no rebuild yet): the next listing rebuilds anyway
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)

    def added(self, key: str, size: int) -> None:
        prefix = key.split("/", 1)[0] + "/"
        if prefix not in CACHED_PREFIXES:
            return
        with self._lock:
            if self._state is not None:
                self._state.entries[prefix][key] = (size, time.time_ns())
                self._append([f"{key} {size}"])

    def removed(self, keys: Iterable[str]) -> None:
        gone = [k for k in keys if k.split("/", 1)[0] + "/" in CACHED_PREFIXES]
        if not gone:
            return
        with self._lock:
            if self._state is not None:
                for key in gone:
                    self._state.entries[key.split("/", 1)[0] + "/"].pop(key, None)
                self._append([f"-{k}" for k in gone])

    # Index objects (packidx/<pack id>) never change once written: kept as files, so a
    # capture reads each pack's index from the store once per host, not once per capture.
    def cached_object(self, key: str) -> bytes | None:
        if self.path is None or not key.startswith("packidx/"):
            return None
        try:
            with open(self._object_path(key), "rb") as f:
                return f.read()
        except OSError:
            return None

    def keep_object(self, key: str, data: bytes) -> None:
        if self.path is None or not key.startswith("packidx/"):
            return
        path = self._object_path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _replace(path, data)
        except OSError:
            pass

    # A manifest's first bytes (its header), by the version (ETag) a LIST gave: a capture
    # looking for its parent reads every snapshot's header, so without this its GETs grew
    # with the fleet. Keyed by the ETag, not the listed size and time: two deliveries of
    # one capture may both write its manifest within the store's one-second LastModified,
    # at the same size (on a store that ignores If-None-Match both PUTs land). Each file
    # is a flag byte (W: the whole object, P: its first bytes) and the bytes; the heads of
    # objects a full listing no longer shows are pruned (prune_heads).
    def cached_head(self, key: str, version: str) -> tuple[bytes, bool] | None:
        if self.path is None:
            return None
        try:
            with open(self._head_path(key, version), "rb") as f:
                data = f.read()
        except OSError:
            return None
        return (data[1:], data[:1] == b"W") if data[:1] in (b"W", b"P") else None

    def keep_head(self, key: str, version: str, data: bytes, *, whole: bool) -> None:
        if self.path is None:
            return
        path = self._head_path(key, version)
        try:
            if not os.path.isdir(self._heads_dir()):
                self._drop_old_heads()
                os.makedirs(self._heads_dir(), exist_ok=True)
            _replace(path, (b"W" if whole else b"P") + data)
        except OSError:
            pass

    def prune_heads(self, prefix: str, listed: Iterable[tuple[str, str]]) -> int:
        """Remove the kept heads of keys under prefix that are not in a full listing of it
        (deleted snapshots, rewritten objects); returns how many. Another process may keep
        a head of an object written after that listing meanwhile: losing it costs a GET."""
        if self.path is None:
            return 0
        wanted = {os.path.basename(self._head_path(k, v)) for k, v in listed}
        start = _flat(prefix)
        removed = 0
        try:
            names = os.listdir(self._heads_dir())
        except OSError:
            return 0
        for name in names:
            if name.startswith(start) and name not in wanted:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._heads_dir(), name))
                    removed += 1
        return removed

    def _drop_old_heads(self) -> None:
        """Heads kept by earlier versions (beside the index objects, keyed by size and
        time, never pruned): removed once, when this host first keeps a head here."""
        objects = self._object_path("x").rsplit(os.sep, 1)[0]
        with contextlib.suppress(OSError), os.scandir(objects) as it:
            for e in it:
                if e.name.startswith(_flat(MANIFEST_PREFIX)) and "@" in e.name:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)

    def _head_path(self, key: str, version: str) -> str:
        tag = blake3.blake3(version.encode()).hexdigest()[:32]  # ETags hold quotes and '-'
        return os.path.join(self._heads_dir(), f"{_flat(key)}@{tag}")

    def _heads_dir(self) -> str:
        assert self.path is not None
        return self.path.removesuffix(".msgpack") + ".heads"

    def _object_path(self, key: str) -> str:
        assert self.path is not None
        return os.path.join(self.path.removesuffix(".msgpack") + ".objects", _flat(key))

    def invalidate(self) -> None:
        """Forget everything (the reclaim calls this on its own host after deleting)."""
        with self._lock:
            self._state = None
            for path in (self.path, self.journal):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)


def _flat(key: str) -> str:
    """A key as one file name ('/' -> '-'; keys hold no '-' of their own)."""
    return key.replace("/", "-")


def _journal_head(state: _State) -> bytes:
    return f"snapshot {state.built!r} {state.marker}\n".encode()


def _replace(path: str, data: bytes) -> None:
    import tempfile  # here: its imports (shutil, random, lzma...) cost every process ~5 ms

    fd, tmp = tempfile.mkstemp(prefix=".listing-", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
