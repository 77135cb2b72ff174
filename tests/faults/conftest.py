"""Fault tests: the whole service as real processes, killed with real signals.

Liveness settings are shortened through the environment (the same variables production
uses), so a dead worker's message comes back within seconds rather than a minute.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.service import Service

THROTTLE = Path(__file__).resolve().parent / "throttle"  # see throttle/sitecustomize.py

FAST_ENV = {
    # Jobs on the big state take seconds on any machine, so a kill lands mid-job.
    "FAULT_TEST_MBPS": "50",
    # A pack per big chunk (as test_crash.py): objects are stored from the first chunk on,
    # so a kill at the first progress lands among stored objects (32 MiB packs: none yet).
    "FAULT_TEST_PACK_SIZE": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(THROTTLE), os.environ.get("PYTHONPATH")) if p),
    "SNAPSHOTS_HEARTBEAT_TIMEOUT": "3",
    "SNAPSHOTS_MAINTENANCE_CHANCE": "1000000",
    "SNAPSHOTS_REAPER_INTERVAL": "0.5",
    "SNAPSHOTS_REQUEUE_AFTER": "3",
    "SNAPSHOTS_RECLAIM_INTERVAL": "2",
    # An interrupted job is delivered again after 0.2 s rather than 2-4 s (the same path).
    "SNAPSHOTS_RETRY_BACKOFF": "0.2",
}

# Big enough that a capture or restore takes seconds, so a kill lands mid-job; small
# enough to keep the suite quick and its disk use modest (FAULT_STATE_MB overrides it).
BIG_FILES = 6
BIG_FILE_MB = int(os.environ.get("FAULT_STATE_MB", "120")) // BIG_FILES

ServiceFactory = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Builds (not starts) Services with the fast liveness settings; stops and removes them."""
    made: list[Service] = []

    def make(**extra_env: str) -> Service:
        root = tmp_path / f"service{len(made)}"
        # faults.unthrottle(svc) lifts FAULT_TEST_MBPS once a kill has landed
        svc = Service(root, **{**FAST_ENV, "FAULT_TEST_UNTHROTTLED": str(root / "unthrottled"),
                               **extra_env})
        made.append(svc)
        return svc

    try:
        yield make
    finally:
        for svc in made:
            svc.stop(graceful=False)  # the test is over: its workers' orderly stop proves nothing
            print(svc.logs())  # pytest shows it only when the test failed
            shutil.rmtree(svc.root, ignore_errors=True)


@pytest.fixture
def big_state(tmp_path: Path) -> Iterator[Path]:
    """A directory state (~120 MB of random data) whose jobs take seconds under the test
    throttle (FAULT_TEST_MBPS), so that a kill lands mid-job."""
    root = tmp_path / "servers" / "big"
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "app.conf").write_text("listen 80\n")
    (root / "link").symlink_to("/etc/passwd")
    for i in range(BIG_FILES):
        with (root / f"data{i}.bin").open("wb") as fh:
            for _ in range(BIG_FILE_MB):
                fh.write(os.urandom(1 << 20))
    yield root
    shutil.rmtree(tmp_path / "servers", ignore_errors=True)


@pytest.fixture
def states(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "states"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
