"""Load with wrk for bench/api.py: one timed run per target (requests/s, latency, server CPU
time), interleaved rounds and their median."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchlib import loadavg
from processes import Procs


@dataclass
class Target:
    name: str
    url: str
    token: str | None
    pids: list[int]  # server processes whose CPU time this target costs
    redis_pid: int | None = None


@dataclass
class WrkResult:
    name: str
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    bad: str = ""
    error: str | None = None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m[2]]


def parse_wrk(name: str, out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    count = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and count):
        return WrkResult(name, error=f"cannot parse wrk output: {out[-300:]}")
    bad = []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        bad.append(f"{m[1]} non-2xx")
    if m := re.search(r"Socket errors: (.*)", out):
        bad.append(f"socket errors: {m[1].strip()}")
    return WrkResult(
        name, float(rps[1]), _ms(p50[1]), _ms(p99[1]), int(count[1]), bad="; ".join(bad)
    )


def cpu_seconds(sessions: list[int]) -> float:
    """User + system CPU time of every process in the given sessions."""
    ticks = 0
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) in sessions:  # field 6 (session), counted after the comm
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(t: Target, args: argparse.Namespace, show: bool) -> WrkResult:
    head = ["-H", f"Authorization: Bearer {t.token}"] if t.token else []
    common = ["wrk", f"-t{args.threads}", f"-c{args.connections}", *head]
    subprocess.run([*common, "-d2s", t.url], capture_output=True)  # warm-up, not measured
    argv = [*common, f"-d{args.duration}s", "--latency", t.url]
    redis = [t.redis_pid] if t.redis_pid else []
    cpu0, rcpu0 = cpu_seconds(t.pids), cpu_seconds(redis)
    p = subprocess.run(argv, capture_output=True, text=True)
    cpu, rcpu = cpu_seconds(t.pids) - cpu0, cpu_seconds(redis) - rcpu0
    if p.returncode != 0:
        return WrkResult(t.name, error=f"wrk exit {p.returncode}: {p.stderr.strip()[-300:]}")
    if show:
        shown = " ".join(argv)
        print(f"  {t.name}: {shown.replace(t.token, '$TOKEN') if t.token else shown}")
    res = parse_wrk(t.name, p.stdout)
    res.cpu_s, res.redis_cpu_s = cpu + rcpu, rcpu
    return res


def combine(name: str, runs: list[WrkResult]) -> WrkResult:
    """Median of the rounds; CPU per request over all of them."""
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[0]
    out = WrkResult(
        name,
        rps=statistics.median(r.rps or 0.0 for r in ok),
        p50_ms=statistics.median(r.p50_ms or 0.0 for r in ok),
        p99_ms=statistics.median(r.p99_ms or 0.0 for r in ok),
        requests=sum(r.requests for r in ok),
        cpu_s=sum(r.cpu_s for r in ok),
        redis_cpu_s=sum(r.redis_cpu_s for r in ok),
        bad="; ".join(r.bad for r in ok if r.bad),
    )
    return out


Rounds = dict[str, list[WrkResult]]  # target name -> its result in each round


def measure(
    targets: list[Target], args: argparse.Namespace, procs: Procs
) -> tuple[list[WrkResult], Rounds]:
    """Rounds of one wrk run per target, interleaved so background noise hits all alike;
    the median of each target, and every round's result."""
    runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
    if len(runs) != len(targets):
        raise ValueError("two targets share a name; their rounds would be mixed")
    for i in range(args.rounds):
        for t in targets:
            res = run_wrk(t, args, show=i == 0)
            runs[t.name].append(res)
            procs.check_alive()
        done = ", ".join(f"{n.strip()} {r[-1].rps or 0:,.0f}" for n, r in runs.items())
        print(f"  round {i + 1}/{args.rounds} req/s: {done}; load {loadavg()}", flush=True)
    return [combine(name, rs) for name, rs in runs.items()], runs


def paired_ratio(a: list[WrkResult], b: list[WrkResult]) -> float | None:
    """Median over rounds of a's req/s over b's in the same round: on a shared machine the
    noise of one round hits both alike, so the pair's ratio is steadier than the medians'."""
    ratios = [x.rps / y.rps for x, y in zip(a, b, strict=True) if x.rps and y.rps]
    return statistics.median(ratios) if ratios else None
