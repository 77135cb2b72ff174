"""A repository lock on s3:// whose refreshes stopped for longer than it takes to go stale
is lost for good, even once the store answers again (s3locks.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.support.s3proxy import S3Proxy
from tests.support.seaweed import S3_BUCKET, SeaweedProcess
from workers.engine.repository.s3backend import S3Backend
from workers.engine.repository.s3locks import LockLost, S3Locks


def test_a_lock_that_missed_its_refreshes_stays_lost_when_the_store_comes_back(
        seaweed: SeaweedProcess, tmp_path: Path) -> None:
    proxy = S3Proxy(seaweed.endpoint).start()
    try:
        opts = seaweed.options(endpoint=proxy.endpoint, cache_dir=str(tmp_path / "cache"))
        backend = S3Backend.from_url(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", opts)
        locks = S3Locks(backend, stale=1.2, settle=0.05)  # refreshed every 0.2 s
        with locks.shared():
            (held,) = locks._held
            time.sleep(0.5)
            locks.check_held()  # refreshed as it should be
            proxy.throttle = 10**9  # the store away for longer than the lock's staleness:
            time.sleep(1.6)  # a reclaim elsewhere may have deleted it and swept meanwhile
            with pytest.raises(LockLost):
                locks.check_held()
            puts = proxy.counts["PUT"]
            proxy.throttle = 0
            # Until the refresh thread gives the lock up, or a refresh gets through (the
            # put retried through the outage); then it is still lost.
            deadline = time.monotonic() + 20
            while held._thread.is_alive() and proxy.counts["PUT"] == puts:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)
            with pytest.raises(LockLost):
                locks.check_held()  # passed before: the late refresh made it fresh again
    finally:
        proxy.close()


def test_a_host_suspended_past_the_lock_staleness_finds_its_lock_lost(
        seaweed: SeaweedProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    # A suspend (a laptop lid, a VM's suspend to RAM) stops CLOCK_MONOTONIC, not
    # CLOCK_BOOTTIME nor the store's clock: the lock went stale to every other host while
    # this one slept, so it must not commit nor delete on waking.
    backend = S3Backend.from_url(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", seaweed.options())
    locks = S3Locks(backend, stale=60, settle=0.05)  # no refresh falls due in this test
    with locks.shared():
        locks.check_held()
        real = time.clock_gettime

        def suspended(clock: int) -> float:  # as the kernel counts 2 minutes asleep
            return real(clock) + (120 if clock == time.CLOCK_BOOTTIME else 0)

        monkeypatch.setattr(time, "clock_gettime", suspended)
        with pytest.raises(LockLost):
            locks.check_held()
