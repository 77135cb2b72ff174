"""Per-host cache of what an S3 repository holds: no LIST on a capture's hot path.

A capture needs the set of stored objects (data/, packidx/) to skip what is stored already.
On a bucket that is a LIST of every key (one request per 1000) each time; here it is a
file per repository under the host's cache directory, updated by this host's own puts and
deletes and rebuilt from a LIST when it is missing, older than MAX_AGE, or when a reclaim
has condemned objects since it was built (the marker object below changed).

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
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import NamedTuple, Protocol

import blake3
import msgspec


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
MAX_AGE = 3600.0  # seconds: rebuild at least this often (new objects of other hosts)
CACHED_PREFIXES = ("data/", "packidx/")


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
    def __init__(self, cache_dir: str | None, url: str, *, max_age: float = MAX_AGE) -> None:
        self.url = url
        self.max_age = max_age
        self.path = None if cache_dir is None else os.path.join(
            cache_dir, f"listing-{blake3.blake3(url.encode()).hexdigest()[:24]}.msgpack")
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._condemned: set[str] = set()
        self._condemned_token: str | None = None
        self._dirty = False
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
        token = self._refresh_marker()
        with self._lock:
            state = self._state or self._load()
            fresh = (state is not None and state.marker == token
                     and time.time() - state.built < self.max_age
                     and prefix in state.entries)
        if not fresh:
            state = self._rebuild(token, state)
        assert state is not None
        with self._lock:
            self._state = state
            items = list(state.entries[prefix].items())
            hidden = self._condemned
        for key, (size, mtime) in items:
            if key not in hidden:
                yield key, size, mtime

    def _rebuild(self, token: str, old: _State | None) -> _State:
        assert self._backend is not None
        started = time.time()
        entries = {p: {k: (s, m) for k, s, m in self._backend.list_fresh(p)}
                   for p in CACHED_PREFIXES}
        state = _State(url=self.url, marker=token, built=started, entries=entries)
        self.rebuilds += 1
        with self._lock:
            self._state = state
            self._dirty = True
        self.save()
        return state

    def added(self, key: str, size: int) -> None:
        prefix = key.split("/", 1)[0] + "/"
        with self._lock:
            if self._state is not None and prefix in self._state.entries:
                self._state.entries[prefix][key] = (size, time.time_ns())
                self._dirty = True

    def removed(self, keys: Iterable[str]) -> None:
        with self._lock:
            if self._state is None:
                return
            for key in keys:
                prefix = key.split("/", 1)[0] + "/"
                if self._state.entries.get(prefix, {}).pop(key, None) is not None:
                    self._dirty = True

    def invalidate(self) -> None:
        """Forget everything (the reclaim calls this on its own host after deleting)."""
        with self._lock:
            self._state = None
            self._condemned_token = None
            if self.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    def save(self) -> None:
        """Write the cache file atomically (temp + rename), when it changed."""
        with self._lock:
            if self.path is None or self._state is None or not self._dirty:
                return
            raw = msgspec.msgpack.encode(self._state)
            self._dirty = False
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".listing-", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a cache: losing it costs one LIST next time
