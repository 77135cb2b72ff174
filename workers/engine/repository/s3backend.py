"""s3:// backend: the repository's objects in an S3-compatible bucket, through obstore.

Same keys and bytes as the file:// layout (config, data/ab/<id>, packidx/<id>,
snapshots/<id>, ...) under the URL's prefix, so a repository can be copied between the two
with any S3 tool. Why obstore (Rust object_store) and not boto3: on SeaweedFS here, 1000
PUTs of 16 KiB from 8 threads took 0.63 s and 0.23 s of CPU against boto3's 2.11 s and
1.60 s (GETs 0.41 s vs 1.87 s); a capture's CPU goes to hashing and compressing instead.

Throughput and faults:
- Plain puts are asynchronous: up to tuning.S3_STREAMS uploads run at once (bounded by
  bytes in flight too), and barrier() waits for them and raises the first failure, so the commit
  point (the manifest, put after the barrier) never precedes its objects. A get, stat or
  exists of a key still uploading waits for that upload.
- get_head/get_range are ranged GETs (a small file's block of a pack, a manifest header).
- Transient failures (timeouts, connection errors, 5xx, 429/503 throttling) are retried
  with exponential back-off for up to tuning.S3_RETRY_FOR seconds; our writes are
  idempotent (content-addressed, or whole-object replaces), so a PUT is retried too (object_store
  itself retries only safe requests on a timeout). An outage longer than that fails the
  operation with StorageUnavailable; the job is retried and resumes (nothing stored twice).
- check() at start-up names the bucket on bad credentials, a missing bucket or an
  unreachable endpoint; exclusive() reports whether the store honours If-None-Match.
- The capture's listing of what the repository holds comes from a per-host cache
  (listcache.py), not a LIST per capture.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import urlparse

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PreconditionError,
)
from obstore.store import S3Store

from .. import tuning
from ..model import EngineError, StorageOptions, StorageUnavailable
from . import s3retry
from .listcache import MANIFEST_PREFIX, ListingCache, ObjectInfo

T = TypeVar("T")
LOCKS_PREFIX = "locks/"
PROBE_PREFIX = LOCKS_PREFIX + "probe-"
CONFIG_KEY = "config"


class S3Backend:
    """s3://bucket/prefix backend (see the module doc)."""

    durable_on_put = True  # a successful PUT is durable and whole
    remote = True  # every read a request: read ahead (packfetch.py)

    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, region: str | None,
                 key_id: str | None, secret: str | None, retry_for: float = tuning.S3_RETRY_FOR,
                 cache: ListingCache | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = endpoint
        # called before a manifest is committed: the lock protocol's last check (s3locks)
        self.before_commit: Callable[[], None] | None = None
        self.url = f"s3://{bucket}/{self.prefix}"
        self.retry_for = retry_for
        self.puts = 0  # objects written (tests count them to prove no re-writes)
        self.put_keys: deque[str] = deque(maxlen=tuning.RECENT_PUT_KEYS)
        opts: dict[str, object] = {"timeout": "120s", "connect_timeout": "5s",
                                   "pool_max_idle_per_host": str(tuning.S3_STREAMS)}
        if endpoint and endpoint.startswith("http://"):
            opts["allow_http"] = True
        self.store = S3Store(
            bucket, prefix=self.prefix or None, endpoint=endpoint, region=region or "us-east-1",
            access_key_id=key_id, secret_access_key=secret,
            virtual_hosted_style_request=False,
            client_options=opts,  # type: ignore[arg-type]
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
        )
        self._pool = ThreadPoolExecutor(tuning.S3_STREAMS, thread_name_prefix="s3put")
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._in_flight = 0
        self._pending: dict[str, Future[None]] = {}
        self._failed: BaseException | None = None
        self._config: bytes | None = None  # the repository's config, once read
        self.cache = cache
        if cache is not None:
            cache.attach(self)
        self.options = StorageOptions(endpoint=endpoint, access_key_id=key_id,
                                      secret_access_key=secret, region=region)

    @classmethod
    def from_url(cls, url: str, options: StorageOptions) -> S3Backend:
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc:
            raise EngineError(f"unsupported storage URL {url!r}: use s3://bucket/prefix")
        # The host cache is the store's and the repository's: keyed by the endpoint too,
        # since two stores may each hold a bucket of that name (one's objects listed as the
        # other's made a capture skip uploads its snapshot needed). Default AWS: "".
        where = f"{options.endpoint or ''} s3://{u.netloc}/{u.path.strip('/')}"
        s3 = cls(u.netloc, u.path, endpoint=options.endpoint, region=options.region,
                 key_id=options.access_key_id, secret=options.secret_access_key,
                 cache=ListingCache(options.cache_dir, where))
        s3.options = options
        return s3

    def location(self) -> tuple[str, StorageOptions]:
        return self.url, self.options

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return s3retry.call(self.bucket, self.retry_for, what, fn)

    # --- writes -----------------------------------------------------------------------
    def put_pieces(self, key: str, pieces: Sequence[bytes]) -> bool:
        """One PUT of the pieces as one body, never joined here: obstore sends the list
        as it is (a payload of parts, signed and sent in turn, with the GIL released). A
        join of each pack (~27 MiB, the bench's 124 MB in all) was a copy into fresh
        pages made holding the GIL, which the capture's walk and result threads wait for
        (py-spy of bench/s3.py's capture: ~90 ms of the parent's samples in the join)."""
        return self._put_later(key, list(pieces), sum(len(p) for p in pieces))

    def put(self, key: str, data: bytes | Sequence[bytes], *, durable: bool = False,
            exclusive: bool = False) -> bool:
        if not isinstance(data, bytes):
            data = b"".join(data)  # one body (see put_pieces)
        if exclusive:
            return self.put_exclusive(key, data)
        if durable:
            if key.startswith(MANIFEST_PREFIX) and self.before_commit is not None:
                self.before_commit()
            self._wait_key(key)
            self._call(f"PUT {key}", lambda: _put(self.store, key, data))
            self._stored(key, len(data))
            return True
        return self._put_later(key, data, len(data))

    def _put_later(self, key: str, data: bytes | list[bytes], length: int) -> bool:
        """An upload on the pool (data: one body, or its pieces in order)."""
        size = max(length, 1)
        with self._room:
            self._raise_failed()
            while self._in_flight and self._in_flight + size > tuning.S3_IN_FLIGHT_BYTES:
                self._room.wait()
                self._raise_failed()
            self._in_flight += size
            prior = self._pending.get(key)
            fut = self._pool.submit(self._upload, key, data, size, prior)
            self._pending[key] = fut
        fut.add_done_callback(lambda f, k=key: self._forget(k, f))  # type: ignore[misc]
        return True

    def _forget(self, key: str, fut: Future[None]) -> None:
        with self._lock:
            if self._pending.get(key) is fut:
                del self._pending[key]

    def _upload(self, key: str, data: bytes | list[bytes], size: int,
                prior: Future[None] | None) -> None:
        try:
            if prior is not None:
                prior.result()  # two puts of one key land in order
            self._call(f"PUT {key}", lambda: _put(self.store, key, data))
            if isinstance(data, bytes):
                self._stored(key, len(data), data)
            else:  # a pack: its bytes are not kept in the host's cache (listcache.py)
                self._stored(key, sum(len(p) for p in data))
        except BaseException as e:
            with self._lock:
                if self._failed is None:
                    self._failed = e
            raise
        finally:
            with self._room:
                self._in_flight -= size
                self._room.notify_all()

    def _stored(self, key: str, size: int, data: bytes = b"") -> None:
        if key.startswith(LOCKS_PREFIX):
            return  # lock objects and probes are not the repository's objects
        if self.cache is not None and data:
            self.cache.keep_object(key, data)
        with self._lock:
            self.puts += 1
            self.put_keys.append(key)
        if self.cache is not None:
            self.cache.added(key, size)

    def put_exclusive(self, key: str, data: bytes) -> bool:
        """Create key only if absent (If-None-Match: *); False when it existed. A store
        that ignores the header (rclone's) replaces the object and answers True, so a
        manifest (the only object put this way that may exist already, from another
        delivery of its capture, which may have reported its snapshot) is looked for
        first (one HEAD a commit): there, only two commits within that HEAD's round trip
        can still both land, the last one's standing."""
        if key.startswith(MANIFEST_PREFIX):
            if self.before_commit is not None:
                self.before_commit()
            if self.exists(key):
                return False
        self._wait_key(key)
        try:
            self._call(f"PUT {key}", lambda: obstore.put(self.store, key, data, mode="create"))
        except (AlreadyExistsError, PreconditionError):
            return False
        self._stored(key, len(data))
        if key == CONFIG_KEY and self.cache is not None:
            self.cache.start_empty()  # a new repository: nothing to list
        return True

    def _raise_failed(self) -> None:
        err = self._failed
        if err is not None:
            self._failed = None
            if isinstance(err, EngineError):
                raise err
            raise StorageUnavailable(f"an upload to bucket {self.bucket!r} failed: "
                                     f"{s3retry.short(err)}") from err

    def _wait_key(self, key: str) -> None:
        with self._lock:
            fut = self._pending.get(key)
        if fut is not None:
            try:
                fut.result()
            except BaseException:
                self._raise_failed()
                raise

    def barrier(self, keys: Sequence[str] | None) -> None:
        """Wait until every upload started so far is stored; raise the first failure. A
        successful S3 PUT is durable, so there is nothing else to flush."""
        with self._lock:
            futs = list(self._pending.values())
        for fut in futs:
            try:
                fut.result()
            except BaseException:
                break
        with self._lock:
            self._raise_failed()

    def delete(self, key: str) -> None:
        self._wait_key(key)
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        """One multi-object DELETE per 1000 keys; keys that are gone already are fine."""
        for i in range(0, len(keys), 1000):
            batch = list(keys[i:i + 1000])
            self._call("DELETE", lambda b=batch: obstore.delete(self.store, b))  # type: ignore[misc]
            if self.cache is not None:
                self.cache.removed(batch)

    # --- reads ------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        if key == CONFIG_KEY and self._config is not None:
            return self._config
        self._wait_key(key)
        kept = None if self.cache is None else self.cache.cached_object(key)
        if kept is not None:
            return kept
        data = bytes(self._call(f"GET {key}", lambda: obstore.get(self.store, key).bytes()))
        if self.cache is not None:
            self.cache.keep_object(key, data)
        return data

    def get_head(self, key: str, n: int, *, listed: str | None = None) -> bytes:
        if not listed or self.cache is None:
            return self._range(key, 0, n)
        kept = self.cache.cached_head(key, listed)
        if kept is not None and (kept[1] or len(kept[0]) >= n):
            return kept[0][:n]
        data = self._range(key, 0, n)
        self.cache.keep_head(key, listed, data, whole=len(data) < n)  # short: all there is
        return data

    def get_range(self, key: str, offset: int, n: int) -> bytes:
        return self._range(key, offset, n)

    def _range(self, key: str, offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        self._wait_key(key)
        try:
            return bytes(self._call(f"GET {key}", lambda: obstore.get_range(
                self.store, key, start=offset, length=n)))
        except BaseError as e:
            if "416" in str(e):  # range past the end (an empty object): nothing there
                return b""
            raise

    def get_range_pieces(self, key: str, offset: int, n: int, piece: int) -> Iterator[bytes]:
        """One ranged GET, yielded as its body arrives (a restore decodes a pack's first
        frames while the rest is still on the wire). A failure midway is not the whole
        request's: the rest is read with get_range and its retries."""
        if n <= 0:
            return
        self._wait_key(key)
        pos, end = offset, offset + n
        try:
            result = self._call(f"GET {key}", lambda: obstore.get(
                self.store, key, options={"range": (offset, end)}))
        except BaseError as e:
            if "416" in str(e):  # range past the end (an empty object): nothing there
                return
            raise
        try:
            for chunk in result.stream(min_chunk_size=piece):
                data = bytes(chunk)
                pos += len(data)
                yield data
        except Exception as e:
            if not s3retry.transient(e):
                raise
            if pos < end:
                rest = self._range(key, pos, end - pos)
                if rest:
                    yield rest

    def head(self, key: str) -> ObjectInfo | None:
        """Size, last modified (by the store's clock) and ETag of an object, or None."""
        self._wait_key(key)
        try:
            meta = self._call(f"HEAD {key}", lambda: obstore.head(self.store, key))
        except FileNotFoundError:
            return None
        return ObjectInfo(int(meta["size"]), meta["last_modified"], meta["e_tag"] or "")

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def stat(self, key: str) -> int | None:
        found = self.head(key)
        return None if found is None else found.size

    def list(self, prefix: str, *, cached: bool = False) -> Iterator[tuple[str, int, int]]:
        """(key, size, last modified ns). cached=True: the capture's view, from the per-host
        cache when it is valid (see listcache.py); otherwise one LIST of the bucket."""
        if cached and self.cache is not None:
            yield from self.cache.listing(prefix)
            return
        yield from self.list_fresh(prefix)

    def list_fresh(self, prefix: str) -> Iterator[tuple[str, int, int]]:
        def page() -> list[tuple[str, int, int]]:
            out = []
            for batch in obstore.list(self.store, prefix=prefix, chunk_size=1000):
                for meta in batch:
                    ts = int(meta["last_modified"].timestamp() * 1e9)
                    out.append((str(meta["path"]), int(meta["size"]), ts))
            return out

        # A LIST is retried whole: a listing half-read before a failure is not yielded.
        yield from self._call(f"LIST {prefix}", page)

    def list_versions(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, ETag) from one LIST; this host's cached heads of objects under prefix that
        are no longer listed (deleted, or rewritten: another ETag) are forgotten."""
        def page() -> list[tuple[str, str]]:
            return [(str(meta["path"]), str(meta["e_tag"] or ""))
                    for batch in obstore.list(self.store, prefix=prefix, chunk_size=1000)
                    for meta in batch]

        listed = self._call(f"LIST {prefix}", page)
        if self.cache is not None:
            self.cache.prune_heads(prefix, listed)
        yield from listed

    def list_since(self, prefix: str, since_ns: int) -> Iterator[tuple[str, bool]]:
        # A stored S3 object is durable and whole: never "maybe not durable yet", never torn.
        for key, size, _mtime in self.list(prefix, cached=True):
            if size > 0:
                yield key, False

    # --- health -----------------------------------------------------------------------
    def check(self) -> None:
        """Raise StorageUnavailable naming the bucket when it cannot be used at all."""
        try:
            # the config never changes once made: Repository's read of it is this one
            self._config = bytes(self._call(
                "GET config", lambda: obstore.get(self.store, "config").bytes()))
        except FileNotFoundError as e:
            if "NoSuchBucket" in str(e):
                raise StorageUnavailable(f"bucket {self.bucket!r} does not exist at "
                                         f"{self._endpoint_name()}") from e

    def _endpoint_name(self) -> str:
        return self.endpoint or "the default AWS endpoint"

    def writable(self) -> bool:
        try:
            self.check()
            probe = PROBE_PREFIX + os.urandom(6).hex()
            self._call("PUT probe", lambda: obstore.put(self.store, probe, b"x"))
            self._call("DELETE probe", lambda: obstore.delete(self.store, probe))
            return True
        except (EngineError, BaseError, OSError):
            return False

    def honours_if_none_match(self) -> bool:
        """Does a second create of one key fail? (rclone's S3 server, for one, ignores it.)"""
        probe = PROBE_PREFIX + "inm-" + os.urandom(6).hex()
        try:
            first = self.put_exclusive(probe, b"1")
            second = self.put_exclusive(probe, b"2")
            return first and not second and self.get(probe) == b"1"
        finally:
            self._call("DELETE probe", lambda: obstore.delete(self.store, probe))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _put(store: S3Store, key: str, data: bytes | list[bytes]) -> None:
    """One PUT, never a multipart upload: objects are at most a pack (~32 MiB, far below
    S3's 5 GiB), a multipart upload of one costs 2 + size/5 MiB requests (a 32 MiB pack
    counted 9 PUTs on SeaweedFS), and an upload killed midway would leave hidden parts
    behind in the bucket; a whole PUT is stored entirely or not at all."""
    obstore.put(store, key, data, use_multipart=False)


def server_now(backend: S3Backend) -> datetime:
    """The store's clock (what it stamps LastModified with), read off a probe object; the
    reclaim protocol compares only times of this one clock, so hosts' clocks may differ."""
    probe = PROBE_PREFIX + "clock-" + os.urandom(6).hex()
    backend.put(probe, b"", durable=True)
    try:
        found = backend.head(probe)
    finally:
        backend.delete(probe)
    return found.modified if found is not None else datetime.now(UTC)
