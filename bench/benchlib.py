"""Helpers shared by bench/engine.py and bench/api.py: machine info, one benchmark at a time,
and waiting for a quiet machine (this 2-core box is shared with test runs)."""

from __future__ import annotations

import fcntl
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = Path("/tmp/server-snapshots-bench.lock")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def loadavg() -> str:
    """The load averages as uptime shows them (1, 5, 15 min)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    return f"nproc={os.cpu_count()}, CPU {cpu_model()}, {platform.platform()}"


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold a machine-wide lock so two benchmark runs never overlap (they would skew both)."""
    with LOCK_FILE.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another benchmark is running; waiting for it to finish ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]), idle


def busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all CPUs)."""
    total, idle = _cpu_times()
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of our finished (waited-for) child processes, their children included."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Noise:
    """How much of the machine other work used while we timed something."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.child0 = time.perf_counter(), busy_seconds(), children_cpu()

    def fraction(self) -> float:
        wall = max(1e-6, time.perf_counter() - self.t0)
        other = (busy_seconds() - self.busy0) - (children_cpu() - self.child0)
        return max(0.0, other / (wall * (os.cpu_count() or 1)))


def busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over a short window (anything: other people's tests too)."""
    t0, i0 = _cpu_times()
    time.sleep(seconds)
    t1, i1 = _cpu_times()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> str:
    """Wait (up to max_wait s) until the machine is mostly idle; describe what we saw."""
    deadline = time.monotonic() + max_wait
    busy = busy_fraction()
    announced = False
    while busy > threshold and time.monotonic() < deadline:
        if not announced:
            print(f"machine {busy:.0%} busy with other work; waiting up to {max_wait:.0f} s ...")
            announced = True
        busy = busy_fraction(5.0)
    note = "" if busy <= threshold else " (NOT quiet: figures are noisy)"
    return f"{busy:.0%} CPU busy with other work just before the run{note}"
