"""Which engine errors the job layer retries: exactly the TransientEngineErrors.

The end-to-end proof is tests/faults/test_worker_kill.py (a SIGTERM'd capture resumes on
another worker); this pins the rule itself, so it cannot drift back to exact-type checks.
"""

from __future__ import annotations

import pytest

from workers.engine import (
    Cancelled,
    EngineError,
    SnapshotCorrupt,
    SnapshotNotFound,
    StateInvalid,
    StorageFull,
    TransientEngineError,
)
from workers.engine.model import StorageUnavailable
from workers.jobs import Jobs


@pytest.mark.parametrize("exc", [
    TransientEngineError("a capture worker process died"),
    StorageUnavailable("the bucket did not answer"),
])
def test_transient_errors_are_retried(exc: EngineError) -> None:
    assert Jobs._transient(exc)


@pytest.mark.parametrize("exc", [
    EngineError("unsupported storage URL"),
    StorageFull("no space"),
    SnapshotCorrupt("bad chunk"),
    SnapshotNotFound("gone"),
    StateInvalid("a symlink"),
    Cancelled("stopped on request"),
])
def test_other_engine_errors_are_final(exc: EngineError) -> None:
    assert not Jobs._transient(exc)
