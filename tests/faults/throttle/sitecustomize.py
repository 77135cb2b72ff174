"""Loaded at start-up by every Python process the fault tests launch (their PYTHONPATH).

With FAULT_TEST_MBPS set, the engine's progress accounting waits so that one job moves at
most that many MB/s in each process: a kill then lands mid-job however fast the machine
and the engine are. Nothing else changes: the engine still reads, hashes, stores and
restores every byte for real.

With FAULT_TEST_PACK_SIZE set (bytes), big chunks are sealed into packs of that many stored
bytes instead of 32 MiB (tuning.PACK_SIZE): 1 makes a pack per chunk, so a capture killed
at its first progress has stored objects already, to be found again after the resume.
"""

from __future__ import annotations

import os

_MBPS = os.environ.get("FAULT_TEST_MBPS")
_PACK_SIZE = os.environ.get("FAULT_TEST_PACK_SIZE")

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

    def _throttled_add(self: _progress.Progress, n: int) -> None:
        if n > 0:
            with _lock:  # one token bucket per process, shared by the engine's threads
                now = time.monotonic()
                start = max(now, _next[0])
                _next[0] = start + n / _rate
            time.sleep(start + n / _rate - now)
        _add(self, n)

    _progress.Progress.add = _throttled_add  # type: ignore[method-assign]
