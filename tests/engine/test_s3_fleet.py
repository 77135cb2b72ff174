"""s3:// with a real SeaweedFS: the store dies, hosts capture and reclaim at once, a reclaim
dies, an object rots, credentials are wrong, and ten servers share one image's data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine import Engine, EngineError, SnapshotCorrupt, StorageUnavailable, tuning
from workers.engine.model import StorageOptions
from workers.engine.repository.repository import chunk_key
from workers.engine.repository.s3backend import S3Backend
from workers.engine.repository.s3locks import EXCLUSIVE_KEY, SHARED_PREFIX

from .conftest import dir_state, make_meta
from .treecmp import assert_same

ROOT = Path(__file__).resolve().parents[2]
FAST = {"lock_settle": 0.05, "lock_stale": 3.0, "reclaim_margin": 0.001}


@pytest.fixture
def weed() -> Iterator[SeaweedProcess]:
    """A server of this test's own: these tests kill it."""
    server = SeaweedProcess().start()
    server.make_bucket(S3_BUCKET)
    try:
        yield server
    finally:
        server.close()


def url() -> str:
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"


def options(weed: SeaweedProcess, cache: Path, **over: Any) -> StorageOptions:
    return weed.options(cache_dir=str(cache), **{**FAST, **over})


def make_tree(root: Path, seed: int, files: int = 20, size: int = 200_000) -> Path:
    root.mkdir(parents=True)
    rnd = __import__("random").Random(seed)
    for i in range(files):
        (root / f"f{i:03}").write_bytes(rnd.randbytes(size + i))
    (root / "small").write_bytes(rnd.randbytes(3000))
    return root


def child(repo: str, opts: StorageOptions, **args: Any) -> subprocess.Popen[str]:
    spec = {"url": repo, "options": msgspec.to_builtins(opts), **args}
    return subprocess.Popen([sys.executable, "-m", "tests.engine.s3_child", json.dumps(spec)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_store_killed_mid_capture_resumes_and_stores_nothing_twice(
        weed: SeaweedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PACK_SIZE", 1 << 20)  # 18 MB: ~18 packs, killed among them
    src = make_tree(tmp_path / "src", 1, files=30, size=600_000)
    # locks stale after 60 s here: an outage longer than that makes the capture give up
    # before its commit (LockLost), as it must; this one is a few seconds
    engine = Engine(url(), options(weed, tmp_path / "cache", lock_stale=60.0))
    backend = engine.backend

    def kill_when_busy() -> None:
        while backend.puts < 5:
            time.sleep(0.005)
        weed.kill()
        time.sleep(1.5)  # down for a moment, then back on the same ports and data
        weed.start()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    res = engine.capture(make_meta(1), dir_state(src))  # rides the outage out (retries)
    killer.join()
    data_keys = [k for k in backend.put_keys if k.startswith("data/")]
    assert len(data_keys) == len(set(data_keys)) > 5  # nothing stored twice
    stored = {k for k, _s, _m in backend.list("data/")}
    assert stored == set(data_keys)
    engine.restore(1, dir_state(tmp_path / "out"))
    assert_same(src, tmp_path / "out")
    assert res.size_bytes > 18_000_000


def test_outage_longer_than_the_retries_fails_then_the_rerun_resumes(
        weed: SeaweedProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PACK_SIZE", 1 << 20)  # ~18 packs: killed among them
    src = make_tree(tmp_path / "src", 2, files=30, size=600_000)
    repo = url()
    engine = Engine(repo, options(weed, tmp_path / "cache"))
    engine.backend.retry_for = 1.0  # type: ignore[attr-defined]
    backend = engine.backend

    def kill_when_busy() -> None:
        while backend.puts < 8:
            time.sleep(0.005)
        weed.kill()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    with pytest.raises(StorageUnavailable, match=f"bucket '{S3_BUCKET}'"):
        engine.capture(make_meta(1), dir_state(src))
    killer.join()
    before = set(backend.put_keys)
    weed.start()
    again = Engine(repo, options(weed, tmp_path / "cache"))
    again.capture(make_meta(1), dir_state(src))
    rerun = [k for k in again.backend.put_keys if k.startswith("data/")]
    assert not before & set(rerun)  # what the first attempt stored is not stored again
    again.restore(1, dir_state(tmp_path / "out"))
    assert_same(src, tmp_path / "out")


def test_capture_and_reclaim_at_once_on_two_hosts_lose_nothing(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    """Host b captures (and deletes) while host a reclaims in a loop; afterwards every
    snapshot left restores exactly, and the reclaim really deleted garbage meanwhile."""
    repo = url()
    host_b = Engine(repo, options(weed, tmp_path / "cache-b"))
    trees = {i: make_tree(tmp_path / f"t{i}", seed=i % 3, files=6, size=150_000 + 1000 * i)
             for i in range(1, 9)}
    for i in (1, 2):
        host_b.capture(make_meta(i, server_id=i), dir_state(trees[i]))
    host_b.delete(1)  # garbage for the reclaim; tree 4 has the same content (seed 1)
    reclaimer = child(repo, options(weed, tmp_path / "cache-a"), op="reclaim_loop",
                      seconds=8)
    kept = {2}
    for i in range(3, 9):
        host_b.capture(make_meta(i, server_id=i), dir_state(trees[i]))
        kept.add(i)
        if i % 3 == 0:
            host_b.delete(i - 1)
            kept.discard(i - 1)
        time.sleep(0.4)
    out, _ = reclaimer.communicate(timeout=60)
    totals = json.loads(out)
    host_a = Engine(repo, options(weed, tmp_path / "cache-a"))
    for _ in range(2):  # two more cycles: whatever is condemned now is swept
        time.sleep(1.1)
        totals["removed"] += host_a.reclaim(wait=True).objects_removed
    assert totals["removed"] > 0 and totals["runs"] > 5, totals
    assert sorted(s.meta.snapshot_id for s in host_a.list_snapshots()) == sorted(kept)
    for i in sorted(kept):
        assert host_a.verify(i).ok, i
        dst = tmp_path / f"out{i}"
        host_a.restore(i, dir_state(dst))
        assert_same(trees[i], dst)


def test_reclaim_killed_mid_run_blocks_nobody_for_long(weed: SeaweedProcess,
                                                       tmp_path: Path) -> None:
    repo = url()
    engine = Engine(repo, options(weed, tmp_path / "cache"))
    garbage = [chunk_key(os.urandom(32)) for _ in range(300)]
    for key in garbage:
        engine.backend.put(key, b"\x00unreferenced")
    engine.backend.barrier(None)
    # a reclaim on another host that dies holding the exclusive lock (its pause before
    # listing the shared locks is long, so it is killed while it holds it)
    dying = child(repo, options(weed, tmp_path / "cache-x", lock_settle=30.0), op="reclaim")
    deadline = time.monotonic() + 20
    while not engine.backend.exists(EXCLUSIVE_KEY):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dying.send_signal(signal.SIGKILL)
    dying.wait()
    # a capture waits for the lock to go stale (3 s here, 30 min by default), not forever
    src = make_tree(tmp_path / "src", 5, files=3)
    started = time.monotonic()
    engine.capture(make_meta(1), dir_state(src))
    assert 1.0 < time.monotonic() - started < 20
    # the next reclaim replaces the dead one's lock and finishes the job over two cycles
    engine.reclaim(wait=True)
    time.sleep(1.1)
    stats = engine.reclaim(wait=True)
    assert stats.objects_removed >= len(garbage)
    assert not any(engine.backend.exists(k) for k in garbage[:20])
    engine.restore(1, dir_state(tmp_path / "out"))
    assert_same(src, tmp_path / "out")


def test_a_dead_hosts_shared_lock_stops_reclaims_only_until_stale(
        weed: SeaweedProcess, tmp_path: Path) -> None:
    engine = Engine(url(), options(weed, tmp_path / "cache"))
    engine.backend.put(SHARED_PREFIX + "dead-host", b"{}", durable=True)
    assert engine.reclaim().skipped_locked  # a capture may be running there
    time.sleep(4.0)  # lock_stale is 3 s here
    assert not engine.reclaim().skipped_locked
    assert not engine.backend.exists(SHARED_PREFIX + "dead-host")


def test_corrupt_object_refused_by_restore_and_named_by_verify(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    repo = url()
    engine = Engine(repo, options(seaweed, tmp_path / "cache"))
    src = make_tree(tmp_path / "src", 7, files=4, size=400_000)
    engine.capture(make_meta(1), dir_state(src))
    victim = next(k for k, size, _m in engine.backend.list("data/") if size > 100_000)
    raw = bytearray(engine.backend.get(victim))
    raw[len(raw) // 2] ^= 0xFF
    engine.backend.put(victim, bytes(raw), durable=True)
    with pytest.raises(SnapshotCorrupt, match="snapshot 1"):
        engine.restore(1, dir_state(tmp_path / "out"))
    report = engine.verify(1)
    assert not report.ok and any(victim in e for e in report.errors)
    # the operator's command says the same, configured the way the service is
    env = {**os.environ, **seaweed.env(S3_BUCKET, repo.split("/", 3)[3]),
           "SNAPSHOTS_DATA_DIR": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "workers.catalog", "verify"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "snapshot 1: CORRUPT" in r.stdout and victim in r.stdout


def test_wrong_credentials_fail_at_start_naming_the_bucket(seaweed: SeaweedProcess,
                                                           tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match=f"bucket '{S3_BUCKET}'.*access denied"):
        Engine(url(), options(seaweed, tmp_path / "cache", secret="wrong"))
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket' does not exist"):
        Engine("s3://no-such-bucket/x", options(seaweed, tmp_path / "cache"))


def test_reclaim_refused_on_a_store_that_ignores_if_none_match(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    proxy = S3Proxy(seaweed.endpoint).start()
    try:
        engine = Engine(url(), options(seaweed, tmp_path / "cache", endpoint=proxy.endpoint))
        src = make_tree(tmp_path / "src", 8, files=2)
        engine.capture(make_meta(1), dir_state(src))  # captures need no conditional write
        assert not engine.reclaim().skipped_locked
        proxy.ignore_if_none_match = True
        with pytest.raises(EngineError, match="ignores If-None-Match"):
            engine.reclaim()
        engine.restore(1, dir_state(tmp_path / "out"))
        assert_same(src, tmp_path / "out")
    finally:
        proxy.close()


def test_ten_servers_from_one_image_store_it_about_once(seaweed: SeaweedProcess,
                                                        tmp_path: Path) -> None:
    """Fleet-wide dedup: ten servers cloned from one tree, each a little different, on two
    hosts (their own caches), store about one tree plus the differences."""
    repo = url()
    hosts = [Engine(repo, options(seaweed, tmp_path / f"cache-{h}")) for h in "ab"]
    base = make_tree(tmp_path / "base", 11, files=40, size=120_000)  # ~4.8 MB, incompressible
    total_size = stored = 0
    diff_bytes = 0
    for i in range(10):
        srv = tmp_path / f"srv{i}"
        shutil.copytree(base, srv)
        (srv / f"f{i:03}").write_bytes(os.urandom(50_000))  # one file changed
        (srv / "hostname").write_text(f"server-{i}\n")  # one file added
        diff_bytes += 50_000 + 10
        res = hosts[i % 2].capture(make_meta(i + 1, server_id=i + 1), dir_state(srv))
        total_size += res.size_bytes
        stored += res.stored_bytes
    one = sum(p.stat().st_size for p in base.iterdir())
    print(f"\nfleet dedup: 10 servers, {total_size / 1e6:.1f} MB of state, stored "
          f"{stored / 1e6:.2f} MB = {stored / one:.2f}x one tree ({one / 1e6:.2f} MB) "
          f"+ differences {diff_bytes / 1e6:.2f} MB")
    assert stored < 1.15 * one + 3 * diff_bytes + 200_000  # manifests and pack indexes too
    dst = tmp_path / "out"
    hosts[1].restore(7, dir_state(dst))
    assert_same(tmp_path / "srv6", dst)


def test_two_deliveries_of_one_capture_commit_one_manifest(seaweed: SeaweedProcess,
                                                           tmp_path: Path) -> None:
    """Two deliveries of one capture on two hosts, both past the "committed already?" check:
    the one that commits second finds the manifest made (If-None-Match: *) and answers the
    first's snapshot; the stored manifest and every host's view of it are the first's."""
    repo = url()
    src = make_tree(tmp_path / "srv", 3, files=5, size=20_000)
    late = Engine(repo, options(seaweed, tmp_path / "cache-b"))
    early = Engine(repo, options(seaweed, tmp_path / "cache-a"))
    assert late.list_snapshots() == []  # b lists (and would cache) before either commits
    first: list[Any] = []
    assert isinstance(late.backend, S3Backend)
    commit = late.backend.before_commit
    assert commit is not None

    def overtaken() -> None:  # b is about to commit: a's delivery runs whole first
        if not first:
            (src / "f000").write_bytes(b"changed between the deliveries")
            first.append(early.capture(make_meta(1), dir_state(src)))
        commit()

    late.backend.before_commit = overtaken
    got = late.capture(make_meta(1), dir_state(src))
    assert first and got == first[0]
    for engine in (early, late):
        (snap,) = engine.list_snapshots()
        assert snap.size_bytes == first[0].size_bytes
    dst = tmp_path / "out"
    late.restore(1, dir_state(dst))
    assert (dst / "f000").read_bytes() == b"changed between the deliveries"
