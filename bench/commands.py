"""Running a command for bench/engine.py: timed, never raising, its result an Outcome."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


PY = sys.executable
MiB = 1 << 20
TIMEOUT = 3600.0


@dataclass
class Outcome:
    """One timed operation: seconds, or an error message."""

    secs: float | None = None
    error: str | None = None
    out: str = ""
    noise: float = 0.0  # share of the machine that other work used meanwhile
    failed: int = 0  # runs in which this failed (medians over several runs)


def sh(cmd: str | list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Outcome:
    """Run a command, time it, never raise."""
    argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Outcome(error=str(e))
    secs = time.perf_counter() - t0
    out = p.stdout.decode(errors="replace")
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        tail = " | ".join(err[-3:]) or out.strip()[-300:]
        return Outcome(error=f"exit {p.returncode}: {tail[:300]}", out=out)
    return Outcome(secs=secs, out=out)
