"""The s3:// backend against a real SeaweedFS: objects, ranges, faults, the listing cache."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine.model import StorageUnavailable
from workers.engine.repository.listcache import CONDEMNED_KEY, Condemned
from workers.engine.repository.repository import Repository
from workers.engine.repository.s3backend import S3Backend


@pytest.fixture
def weed() -> Iterator[SeaweedProcess]:
    server = SeaweedProcess().start()
    server.make_bucket("snaps")
    try:
        yield server
    finally:
        server.close()


def backend_for(weed: SeaweedProcess, bucket: str = "snaps", cache_dir: str | None = None,
                endpoint: str | None = None, secret: str | None = None) -> S3Backend:
    opts = weed.options(endpoint=endpoint, cache_dir=cache_dir,
                        **({"secret": secret} if secret else {}))  # type: ignore[arg-type]
    return S3Backend.from_url(f"s3://{bucket}/repo", opts)


def check_objects_ranges_and_listing(b: S3Backend) -> None:
    """Objects, ranged GETs, listing, create-once PUTs (If-None-Match: *) and deletes on
    one store; run against SeaweedFS here and Ceph RGW in test_rgw.py."""
    b.check()
    assert b.writable()
    data = {f"data/{i:02x}/{i:064x}": os.urandom(1000 + i) for i in range(40)}
    for key, value in data.items():
        assert b.put(key, value)  # asynchronous: up to STREAMS at once
    b.barrier(list(data))
    key, value = next(iter(data.items()))
    assert b.get(key) == value
    assert b.get_head(key, 10) == value[:10]
    assert b.get_range(key, 500, 20) == value[500:520]
    assert b.get_range(key, len(value) - 3, 100) == value[-3:]  # past the end: the rest
    assert b.stat(key) == len(value) and b.exists(key)
    assert sorted(k for k, _s, _m in b.list("data/")) == sorted(data)
    assert b.put_exclusive("config", b"one") and not b.put_exclusive("config", b"two")
    assert b.get("config") == b"one"
    b.delete(key)
    assert not b.exists(key) and b.stat(key) is None
    with pytest.raises(FileNotFoundError):
        b.get(key)
    assert b.honours_if_none_match()


def test_objects_ranges_and_listing(weed: SeaweedProcess) -> None:
    check_objects_ranges_and_listing(backend_for(weed))
    counts = weed.requests("snaps")
    assert counts["PUT"] >= 40 and counts["LIST"] >= 1


def test_bad_credentials_and_missing_bucket_name_the_bucket(weed: SeaweedProcess) -> None:
    bad = backend_for(weed, secret="wrong-secret")
    with pytest.raises(StorageUnavailable, match=r"bucket .snaps.*access denied"):
        bad.check()
    assert not bad.writable()
    missing = backend_for(weed, bucket="nosuch")
    with pytest.raises(StorageUnavailable, match="bucket 'nosuch' does not exist"):
        missing.check()
    down = backend_for(weed, endpoint="http://127.0.0.1:9")
    down.retry_for = 1.0
    with pytest.raises(StorageUnavailable, match="bucket 'snaps' did not answer"):
        down.check()


def test_pieces_are_one_put_of_their_bytes_in_order(weed: SeaweedProcess) -> None:
    """A pack is handed over as its pieces (never joined here): one PUT whatever their
    number and size, never a multipart upload (obstore's default for a list, and for
    more than its 5 MiB chunk: 3 requests or more, and hidden parts left by a kill)."""
    b = backend_for(weed)
    pieces = [os.urandom(n) for n in (1, 6 << 20, 3, 1 << 20, 0, 77)]
    before = weed.requests("snaps").get("PUT", 0)
    key = "data/ab/" + "ab" * 32
    assert b.put_pieces(key, pieces)
    b.barrier([key])
    assert weed.requests("snaps")["PUT"] - before == 1
    assert b.get(key) == b"".join(pieces) and b.stat(key) == sum(map(len, pieces))
    assert b.puts == 1 and b._in_flight == 0


def test_store_killed_mid_upload_then_restarted_loses_nothing(weed: SeaweedProcess) -> None:
    """SIGKILL the S3 server while uploads run; they are retried once it is back (an
    object put as pieces is sent whole again)."""
    b = backend_for(weed)
    data = {f"data/{i % 256:02x}/{i:064x}": os.urandom(64 << 10) for i in range(200)}
    packs = {f"data/ff/{i:064x}": [os.urandom(1 << 20) for _ in range(4)] for i in range(4)}
    killer = threading.Timer(0.05, weed.kill)
    killer.start()
    for i, (key, value) in enumerate(list(data.items())):
        b.put(key, value)
        if i % 50 == 0:
            pack, pieces = packs.popitem()
            b.put_pieces(pack, pieces)
            data[pack] = b"".join(pieces)
    killer.join()
    time.sleep(1.0)  # the store stays down a moment
    weed.start()
    b.barrier(None)  # waits for every upload, retried across the outage
    assert all(b.get(k) == v for k, v in data.items())


def test_throttling_is_retried_with_back_off(weed: SeaweedProcess) -> None:
    proxy = S3Proxy(weed.endpoint).start()
    try:
        b = backend_for(weed, endpoint=proxy.endpoint)
        proxy.throttle = 6  # more than object_store's own retries for one request
        started = time.monotonic()
        b.put("data/aa/slow", b"payload", durable=True)
        assert b.get("data/aa/slow") == b"payload"
        assert proxy.throttle == 0 and time.monotonic() - started > 0.2
    finally:
        proxy.close()


def test_a_store_that_ignores_if_none_match_is_detected(weed: SeaweedProcess) -> None:
    proxy = S3Proxy(weed.endpoint).start()
    try:
        b = backend_for(weed, endpoint=proxy.endpoint)
        assert b.honours_if_none_match()
        proxy.ignore_if_none_match = True
        assert not b.honours_if_none_match()
    finally:
        proxy.close()


def test_capture_listing_comes_from_the_host_cache(weed: SeaweedProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = str(tmp_path / "cache")
    b = backend_for(weed, cache_dir=cache)
    repo = Repository(b)
    repo.load_known()
    ids = [repo.store_chunk(os.urandom(5000))[0] for _ in range(30)]
    b.barrier(None)
    lists = weed.requests("snaps").get("LIST", 0)
    # another process of this host: its view comes from the cache file, no LIST
    b2 = backend_for(weed, cache_dir=cache)
    repo2 = Repository(b2)
    repo2.load_known()
    assert set(repo2.known_ids()) == set(ids)
    assert weed.requests("snaps").get("LIST", 0) == lists and b2.cache is not None
    assert b2.cache.rebuilds == 0
    # a reclaim condemns an object: every capture treats it as absent at once, and the
    # changed marker makes the next view a fresh LIST
    import msgspec

    from workers.engine.repository.repository import chunk_key

    marker = Condemned(cycle="c1", keys=[chunk_key(ids[0])])
    b.put(CONDEMNED_KEY, msgspec.msgpack.encode(marker), durable=True)
    repo2.load_known()
    assert ids[0] not in repo2.known_ids() and len(repo2.known_ids()) == 29
    assert b2.cache.rebuilds == 1


def test_the_host_that_makes_a_repository_lists_nothing_for_its_first_capture(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    # Its config just put create-once, the repository holds nothing: no LIST of data/ and
    # packidx/ (bench/s3.py: 17 requests for the first capture, was 19). A view left by a
    # repository that was at this URL before (wiped, made again) is replaced, not trusted.
    cache = str(tmp_path / "cache")
    old = backend_for(weed, cache_dir=cache)
    Repository(old).load_known()
    assert old.cache is not None
    old.cache.added("data/ab/" + "ab" * 32, 10)  # a key the wiped repository had
    old.delete("config")
    b = backend_for(weed, cache_dir=cache)
    repo = Repository(b)  # makes the config again
    lists = weed.requests("snaps").get("LIST", 0)
    repo.load_known()
    assert weed.requests("snaps").get("LIST", 0) == lists and b.cache is not None
    assert b.cache.rebuilds == 0 and not repo.known_ids()
    ids = [repo.store_chunk(os.urandom(5000))[0] for _ in range(3)]
    b.barrier(None)
    # another host (its own cache) lists once and sees them; this host's view has them
    other = backend_for(weed, cache_dir=str(tmp_path / "other"))
    repo2 = Repository(other)
    repo2.load_known()
    assert set(ids) <= set(repo2.known_ids()) and other.cache is not None
    assert other.cache.rebuilds == 1
    again = Repository(backend_for(weed, cache_dir=cache))
    again.load_known()
    assert set(again.known_ids()) == set(ids)


def test_the_host_cache_is_per_store_not_per_bucket_name(
        weed: SeaweedProcess, seaweed: SeaweedProcess, tmp_path: Path) -> None:
    # Two stores holding a bucket of the same name (a move to another provider, a second
    # site): what one holds must never be the other's view, or a capture to the second
    # skips uploads it needs and its snapshot references objects that are not there.
    cache = str(tmp_path / "cache")
    weed.make_bucket(S3_BUCKET)
    first = S3Backend.from_url(f"s3://{S3_BUCKET}/twin", weed.options(cache_dir=cache))
    repo = Repository(first)
    repo.load_known()
    ids = [repo.store_chunk(os.urandom(5000))[0] for _ in range(5)]
    first.barrier(None)
    other = S3Backend.from_url(f"s3://{S3_BUCKET}/twin", seaweed.options(cache_dir=cache))
    repo2 = Repository(other)
    repo2.load_known()
    assert not set(ids) & set(repo2.known_ids())
    # the same store and repository again: its cache, no LIST
    again = S3Backend.from_url(f"s3://{S3_BUCKET}/twin/", weed.options(cache_dir=cache))
    repo3 = Repository(again)
    repo3.load_known()
    assert set(repo3.known_ids()) == set(ids) and again.cache is not None
    assert again.cache.rebuilds == 0


def test_finding_the_parent_reads_each_snapshot_header_once_per_host(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    """A capture looks for its server's newest snapshot among every snapshot's header: those
    come from the host's cache once read (a manifest never changes), so a capture's GETs do
    not grow with the fleet's snapshots; a deleted snapshot is not listed, so not read."""
    from workers.engine import Engine, StateSpec
    from workers.engine.model import SnapshotMeta

    src = tmp_path / "srv"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)

    def capture(sid: int, host: str = "a") -> int:
        """GETs of one capture of server sid by a new engine (another process) of host."""
        opts = weed.options(cache_dir=str(tmp_path / host), lock_settle=0.05)
        engine = Engine("s3://snaps/fleet", opts)
        before = weed.requests("snaps").get("GET", 0)
        engine.capture(SnapshotMeta(snapshot_id=sid, server_id=sid, server_name=f"s{sid}",
                                    account="a", name="n", description=None,
                                    created_at="2026-01-01T00:00:00Z"),
                       StateSpec(kind="directory", path=str(src)))
        return weed.requests("snaps").get("GET", 0) - before

    for sid in range(1, 7):
        capture(sid)
    # each reads the one header it had not seen (its predecessor's, written, not read)
    seventh, eighth = capture(7), capture(8)
    assert seventh == eighth, (seventh, eighth)
    other_host = capture(9, "b")  # another host reads all 8 once (and the pack's index)
    assert other_host >= eighth + 7, (eighth, other_host)
    opts = weed.options(cache_dir=str(tmp_path / "a"), lock_settle=0.05)
    Engine("s3://snaps/fleet", opts).delete(3)
    # new to host a: 8's header (it wrote it, never read it) and 9's; 3 is not listed
    assert capture(10) == eighth + 1


def test_a_rewritten_manifest_is_never_read_from_a_stale_cached_head(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    """Two writes of one manifest key with the same size within one second (two deliveries
    of a capture, on a store that ignores If-None-Match) list the same size and, at the
    store's one-second LastModified, the same time: the cached head is keyed by the ETag,
    so the host reads the object's bytes now, and the replaced version's head is pruned."""
    cache = str(tmp_path / "cache")
    b = backend_for(weed, cache_dir=cache)
    key = "snapshots/5"
    first, second = b"A" * 3000, b"B" * 3000
    b.put(key, first, durable=True)
    (v1,) = [v for k, v in b.list_versions("snapshots/") if k == key]
    assert b.get_head(key, 100, listed=v1) == first[:100]
    gets = weed.requests("snaps").get("GET", 0)
    assert b.get_head(key, 100, listed=v1) == first[:100]  # from the host's cache
    assert weed.requests("snaps").get("GET", 0) == gets
    b.put(key, second, durable=True)  # a plain PUT replaces: what such a store does
    (v2,) = [v for k, v in b.list_versions("snapshots/") if k == key]
    assert v2 != v1
    assert b.get_head(key, 100, listed=v2) == second[:100]
    assert b.cache is not None and b.cache.cached_head(key, v1) is None  # pruned


def test_cached_heads_of_deleted_snapshots_are_pruned(weed: SeaweedProcess,
                                                       tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = backend_for(weed, cache_dir=str(cache))
    repo = Repository(b)
    for sid in range(1, 6):
        b.put(repo.manifest_key(sid), b"x" * (100 + sid), durable=True)
    for sid, version in repo.listed_manifests():
        b.get_head(repo.manifest_key(sid), 50, listed=version)
    (heads_dir,) = cache.glob("*.heads")
    assert len(os.listdir(heads_dir)) == 5
    repo.delete_manifest(2)
    repo.delete_manifest(4)
    assert [sid for sid, _v in repo.listed_manifests()] == [1, 3, 5]
    assert sorted(n.split("@")[0] for n in os.listdir(heads_dir)) == [
        "snapshots-1", "snapshots-3", "snapshots-5"]


def test_a_rebuild_forgets_what_the_store_and_this_host_no_longer_use(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    # The host kept every pack index it read or wrote as a file, and the cache files of
    # every repository URL it ever used (keyed otherwise by earlier versions): none was
    # ever removed, and the cache directory grew with every pack the host ever saw.
    cache = tmp_path / "cache"
    b = backend_for(weed, cache_dir=str(cache))
    keys = [f"packidx/{i:064x}" for i in range(4)]
    for key in keys:
        b.put(key, b"index of " + key.encode())  # kept as the host writes it
    b.barrier(None)
    (objects,) = cache.glob("*.objects")
    assert len(os.listdir(objects)) == 4
    other_host = backend_for(weed)  # its reclaim deletes two packs' indexes
    other_host.delete(keys[0])
    other_host.delete(keys[2])
    month = time.time() - 31 * 86400
    unused = [cache / "listing-0123.msgpack", cache / "listing-0123.journal",
              cache / "listing-0123.objects"]
    unused[2].mkdir()
    (unused[2] / "packidx-00").write_bytes(b"x")
    for p in (*unused[:2], cache / "listing-4567.msgpack"):
        p.write_bytes(b"x")
    for p in unused:
        os.utime(p, (month, month))
    assert b.cache is not None
    b.cache.invalidate()
    list(b.cache.listing("data/"))  # a rebuild: a LIST of the store
    assert sorted(os.listdir(objects)) == sorted(k.replace("/", "-") for k in keys[1::2])
    assert not any(p.exists() for p in unused)
    assert (cache / "listing-4567.msgpack").exists()  # touched within the month: kept
