"""Loaded at start-up by every Python process the fault tests launch (their PYTHONPATH).

With FAULT_TEST_MBPS set, the engine's progress accounting waits so that one job moves at
most that many MB/s in each process: a kill then lands mid-job however fast the machine
and the engine are. Nothing else changes: the engine still reads, hashes, stores and
restores every byte for real.

With FAULT_TEST_UNTHROTTLED set too (a path), the throttle holds only while that file does
not exist: a test lifts it once its kill has landed, so what follows (the resumed job, a
restore that checks the result) runs at the machine's speed.

With FAULT_TEST_PACK_SIZE set (bytes), big chunks are sealed into packs of that many stored
bytes instead of 32 MiB (tuning.PACK_SIZE): 1 makes a pack per chunk, so a capture killed
at its first progress has stored objects already, to be found again after the resume.

With FAULT_TEST_CLOCK_SKEW set (seconds, may be negative), time.time of the process is
that far off: a host whose clock drifted from Redis's.

With FAULT_TEST_COMMIT_GATE set (a directory), while the test keeps a file DIR/hold, a
worker's final transition of an operation N first creates DIR/reached-N, then waits (up to
60 s) for DIR/go-N: the test kills Redis between the two, so the outage lands exactly at the
commit, whatever the machine's speed.

With FAULT_TEST_WEB_GATE set (a directory), while the test keeps a file DIR/hold, the web
process, once a create_snapshot or start_restore script has answered, creates
DIR/committed-<script> and waits there: the test SIGKILLs it between the state transition
and anything the request does after it.
"""

from __future__ import annotations

import os

_SKEW = os.environ.get("FAULT_TEST_CLOCK_SKEW")
_MBPS = os.environ.get("FAULT_TEST_MBPS")
_PACK_SIZE = os.environ.get("FAULT_TEST_PACK_SIZE")
_GATE = os.environ.get("FAULT_TEST_COMMIT_GATE")
_WEB_GATE = os.environ.get("FAULT_TEST_WEB_GATE")

if _SKEW:
    # This process's wall clock is off by that many seconds (a host whose clock drifted):
    # time.time only; Redis, the other processes and the monotonic clock keep the true one.
    import time as _skewed

    _true_time = _skewed.time
    _skewed.time = lambda: _true_time() + float(_SKEW)  # type: ignore[arg-type]

if _GATE:
    import time as _time
    from pathlib import Path as _Path
    from typing import Any as _Any

    from shared import store as _store

    _transition = _store.Store._transition

    def _gated(self: _store.Store, name: str, op_id: int, ends: str, *args: _Any) -> _Any:
        gate = _Path(_GATE)  # type: ignore[arg-type]
        if (gate / "hold").exists():
            (gate / f"reached-{op_id}").touch()
            deadline = _time.monotonic() + 60
            while not (gate / f"go-{op_id}").exists() and _time.monotonic() < deadline:
                _time.sleep(0.01)
        return _transition(self, name, op_id, ends, *args)

    _store.Store._transition = _gated  # type: ignore[method-assign]

if _WEB_GATE:
    import asyncio as _asyncio
    from pathlib import Path as _WebPath
    from typing import Any as _WebAny

    from shared import async_store as _async_store

    _run = _async_store.AsyncStore._run

    async def _held(self: _async_store.AsyncStore, name: str, *args: _WebAny) -> _WebAny:
        answer = await _run(self, name, *args)
        gate = _WebPath(_WEB_GATE)  # type: ignore[arg-type]
        if name in ("create_snapshot", "start_restore") and (gate / "hold").exists():
            (gate / f"committed-{name}").touch()
            await _asyncio.sleep(3600)
        return answer

    _async_store.AsyncStore._run = _held  # type: ignore[method-assign]

if _PACK_SIZE:
    from workers.engine import tuning as _tuning

    _tuning.PACK_SIZE = int(_PACK_SIZE)

if _MBPS:
    import threading
    import time

    from workers.engine import progress as _progress

    _rate = float(_MBPS) * 1e6
    _lock = threading.Lock()
    _next = [0.0]
    _add = _progress.Progress.add
    _lifted = os.environ.get("FAULT_TEST_UNTHROTTLED")

    def _throttled_add(self: _progress.Progress, n: int) -> None:
        if n > 0 and not (_lifted and os.path.exists(_lifted)):
            with _lock:  # one token bucket per process, shared by the engine's threads
                now = time.monotonic()
                start = max(now, _next[0])
                _next[0] = start + n / _rate
            time.sleep(start + n / _rate - now)
        _add(self, n)

    _progress.Progress.add = _throttled_add  # type: ignore[method-assign]
