"""Peak memory of a process tree, sampled (bench/service.py --scale): the sum of PSS (and of
RSS) over every process of the tree, read from /proc every `period` seconds.

PSS counts a page shared by n processes as 1/n in each, so the sum over a tree is the
memory the tree really holds (RSS would count a forked worker's shared pages once per
process). Both are reported; the targets use PSS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

KiB = 1024


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        out[int(d)] = int(stat.rpartition(")")[2].split()[1])
    return out


def tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def children_named(parent: int, word: str) -> list[int]:
    """Descendants of `parent` whose command line names `word`, whose parent does not."""
    pids = tree([parent])
    named = {p for p in pids if any(word in a for a in cmdline(p)[:3])}
    ppid = _ppids()
    return [p for p in named if ppid.get(p) not in named]


def pss_rss(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes; (0, 0) once it is gone."""
    r = rollup(pid)
    return r.get("Pss", 0), r.get("Rss", 0)


def rollup(pid: int) -> dict[str, int]:
    """/proc/pid/smaps_rollup's sizes in bytes (Rss, Pss, Pss_Anon, ...); {} once gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * KiB
    except OSError:
        pass
    return out


def describe(pid: int) -> str:
    """A short name for a process of the tree: its command's last words."""
    args = cmdline(pid)
    if len(args) > 1 and args[1] == "-c":  # a reader/writer process: its code's first line
        return "python -c " + args[2].strip().splitlines()[0][:40]
    return " ".join(a.rsplit("/", 1)[-1] for a in args[:4])[:60]


class PeakSampler:
    """Samples the trees under roots() in a thread until stop(); keeps the peak sums."""

    def __init__(self, roots: Callable[[], list[int]], period: float = 0.1) -> None:
        self.roots, self.period = roots, period
        self.peak_pss = self.peak_rss = self.peak_procs = self.samples = 0
        # at the peak PSS sample: (pid, name, PSS, PSS of anonymous memory) of each process
        self.at_peak: list[tuple[int, str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        pids = tree(self.roots())
        pss = rss = 0
        each = []
        for p in pids:
            r = rollup(p)
            pss += r.get("Pss", 0)
            rss += r.get("Rss", 0)
            each.append((p, r.get("Pss", 0), r.get("Pss_Anon", 0)))
        self.samples += 1
        if pss > self.peak_pss:
            self.at_peak = [(p, describe(p), a, b) for p, a, b in each]
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, len(pids))
