"""Load benchmark of the HTTP API against a bare Starlette app (wrk).

    .venv/bin/python bench/api.py [--duration 10] [--connections 32] [--threads 2]

Starts, on free loopback ports, a throw-away redis-server, our API (uvicorn, 1 worker) and
bench/bare_app.py (same uvicorn settings); seeds servers, a token and snapshots through the
real API; then runs wrk against GET one snapshot, GET the list and the bare app, one after
the other. Every process it started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import benchlib
import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
SERVERS = 10
UVICORN_OPTS = ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning"]


# --------------------------------------------------------------------------- processes


class Procs:
    """The processes we started; all stopped by stop_all(), each by its own pid."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        out = log.open("wb")
        p = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, p))

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def pid(self, name: str) -> int:
        return next(p.pid for n, p in self.procs if n == name)

    def check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with code {p.returncode}")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    local = VENV_BIN / "redis-server"
    found = str(local) if local.exists() else shutil.which("redis-server")
    if not found:
        raise SystemExit("no redis-server (neither .venv/bin/redis-server nor on PATH)")
    return found


def wait_redis(port: int, procs: Procs, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"redis on port {port} did not answer PING")


def wait_http(url: str, procs: Procs, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def api_target() -> list[str]:
    """The uvicorn app argument of our API, from api/app.py."""
    src = (ROOT / "api" / "app.py").read_text()
    if re.search(r"^def create_app\(", src, re.M):
        return ["--factory", "api.app:create_app"]
    return ["api.app:app"]


# --------------------------------------------------------------------------- seeding


@dataclass
class Seeded:
    token: str
    snapshot_id: int
    snapshots: int
    body: bytes


def _post(client: httpx.Client, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 201:
        raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
    data: dict[str, Any] = r.json()
    return data


def seed(base: str, tmp: Path) -> Seeded:
    """SERVERS servers of one account, a write token, one snapshot per server."""
    with httpx.Client(base_url=base, timeout=10) as c:
        tok = _post(c, "/api/v1/tokens/", {"account": "bench", "scope": "write"}, ADMIN_TOKEN)
        token = str(tok["token"])
        snap_ids = []
        for i in range(SERVERS):
            state = tmp / f"server-{i}"
            state.mkdir()
            srv = _post(
                c,
                "/api/v1/servers/",
                {
                    "name": f"bench-server-{i:02d}",
                    "account": "bench",
                    "state": {"kind": "directory", "path": str(state)},
                    "power": {"kind": "none"},
                },
                ADMIN_TOKEN,
            )
            snap = _post(
                c,
                "/api/v1/snapshots/",
                {
                    "server_id": srv["id"],
                    "name": f"before-update-{i:02d}",
                    "description": "Snapshot before system update",
                    "stop_server": False,
                },
                token,
            )
            snap_ids.append(int(snap["id"]))
        one = c.get(
            f"/api/v1/snapshots/{snap_ids[0]}/", headers={"Authorization": f"Bearer {token}"}
        )
        if one.status_code != 200:
            raise RuntimeError(f"GET one snapshot answered {one.status_code}: {one.text[:300]}")
        check_list(c, token, len(snap_ids))
        return Seeded(token, snap_ids[0], len(snap_ids), one.content)


def check_list(c: httpx.Client, token: str, expected: int) -> None:
    """The list we load-test answers what we seeded (so we do not time an error page)."""
    r = c.get("/api/v1/snapshots/", headers={"Authorization": f"Bearer {token}"})
    body = r.json() if r.status_code == 200 else {}
    got = len(body.get("snapshots", []))
    total = body.get("meta", {}).get("total")
    if r.status_code != 200 or got != expected or total != expected:
        raise RuntimeError(f"GET the list answered {r.status_code} with {got} items, total {total}")


# --------------------------------------------------------------------------- wrk


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


# --------------------------------------------------------------------------- report


def _row(r: WrkResult, bare: WrkResult) -> list[str]:
    if r.error or r.rps is None:
        return [r.name, "ERR", "", "", "", "", (r.error or "")[:60]]
    ratio = f"{r.rps / bare.rps:.2f}" if bare.rps else "n/a"
    cpu = f"{1e6 * r.cpu_s / r.requests:.0f}" if r.requests else "n/a"
    if r.redis_cpu_s and r.requests:
        cpu += f" ({1e6 * r.redis_cpu_s / r.requests:.0f} redis)"
    return [r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", ratio, cpu, r.bad]


def print_table(results: list[WrkResult], bare: WrkResult, rounds: int) -> None:
    rows = [_row(r, bare) for r in results]
    cols = ["endpoint", "req/s", "p50 ms", "p99 ms", "x bare", "server CPU us/req", "errors"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(cols))
        for row in rows:
            print(" | ".join(row))
        return
    table = Table(
        title=f"API vs a bare Starlette app (wrk; median of {rounds} interleaved rounds)",
        caption="server CPU = uvicorn (+ redis-server for our API) user+sys time / requests",
    )
    for i, c in enumerate(cols):
        table.add_column(c, justify="left" if i in (0, 6) else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)


def header(args: argparse.Namespace) -> None:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    version = (wrk.stdout or wrk.stderr).splitlines()[:1]
    print("command :", " ".join([".venv/bin/python", "bench/api.py", *sys.argv[1:]]))
    print(f"machine : {benchlib.machine()}")
    print(
        f"load    : {version[0] if version else 'wrk'}; -t{args.threads} -c{args.connections}"
        f" -d{args.duration}s (+2 s warm-up) x {args.rounds} interleaved rounds on loopback;"
        " client and servers share the CPUs"
    )
    print(
        f"servers : uvicorn {' '.join(UVICORN_OPTS)} (httptools/uvloop when installed), "
        "API and bare app alike"
    )


# --------------------------------------------------------------------------- main


def start_all(procs: Procs, tmp: Path) -> tuple[str, dict[str, str]]:
    env = dict(os.environ)
    rport, aport = free_port(), free_port()
    (tmp / "redis").mkdir()
    procs.start(
        "redis-server",
        [
            redis_binary(),
            "--port",
            str(rport),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp / "redis"),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        env,
        tmp / "redis.log",
    )
    wait_redis(rport, procs)
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{rport}/0",
        SNAPSHOTS_DATA_DIR=str(tmp / "data"),
        SNAPSHOTS_ADMIN_TOKEN=ADMIN_TOKEN,
        SNAPSHOTS_MAX_PER_SERVER="5",
        PORT=str(aport),
    )
    uvicorn = str(VENV_BIN / "uvicorn")
    procs.start(
        "api", [uvicorn, *api_target(), *UVICORN_OPTS, "--port", str(aport)], env, tmp / "api.log"
    )
    base = f"http://127.0.0.1:{aport}"
    wait_http(f"{base}/healthz", procs)
    return base, env


def start_bare(procs: Procs, tmp: Path, body: bytes, env: dict[str, str]) -> str:
    port = free_port()
    (tmp / "body.json").write_bytes(body)
    benv = dict(env, BARE_BODY_FILE=str(tmp / "body.json"))
    procs.start(
        "bare",
        [
            str(VENV_BIN / "uvicorn"),
            "--app-dir",
            str(BENCH),
            "bare_app:app",
            *UVICORN_OPTS,
            "--port",
            str(port),
        ],
        benv,
        tmp / "bare.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", procs)
    return base


def measure(targets: list[Target], args: argparse.Namespace, procs: Procs) -> list[WrkResult]:
    """Rounds of one wrk run per target, interleaved so background noise hits all alike."""
    runs: dict[str, list[WrkResult]] = {t.name: [] for t in targets}
    for i in range(args.rounds):
        for t in targets:
            res = run_wrk(t, args, show=i == 0)
            runs[t.name].append(res)
            procs.check_alive()
        done = ", ".join(f"{n} {r[-1].rps or 0:,.0f}" for n, r in runs.items())
        print(f"  round {i + 1}/{args.rounds} req/s: {done}", flush=True)
    return [combine(name, rs) for name, rs in runs.items()]


def bench(args: argparse.Namespace, procs: Procs, tmp: Path) -> int:
    header(args)
    base, env = start_all(procs, tmp)
    seeded = seed(base, tmp)
    print(
        f"seeded  : {SERVERS} servers, {seeded.snapshots} snapshots (in_progress, no worker);"
        f" GET one body {len(seeded.body)} bytes; bare app answers the same bytes"
    )
    bare_base = start_bare(procs, tmp, seeded.body, env)
    api_pids, rpid = [procs.pid("api")], procs.pid("redis-server")
    targets = [
        Target("GET /api/v1/snapshots/{id}/", f"{base}/api/v1/snapshots/{seeded.snapshot_id}/",
               seeded.token, api_pids, rpid),
        Target(f"GET /api/v1/snapshots/ ({seeded.snapshots} items)", f"{base}/api/v1/snapshots/",
               seeded.token, api_pids, rpid),
        Target("bare Starlette, same body", f"{bare_base}/api/v1/snapshots/1/", None,
               [procs.pid("bare")]),
    ]  # fmt: skip
    print("quiet   :", benchlib.wait_quiet(args.max_wait), flush=True)
    results = measure(targets, args, procs)
    print()
    print_table(results, results[2], args.rounds)
    one_r, bare = results[0], results[2]
    if one_r.rps and bare.rps:
        ratio = one_r.rps / bare.rps
        verdict = "PASS" if ratio >= 0.5 else "FAIL"
        print(
            f"\ntarget: {verdict}  GET one >= 0.5 x bare: {ratio:.2f} x "
            f"({one_r.rps:,.0f} vs {bare.rps:,.0f} req/s)"
        )
        return 0
    print("\ntarget: N/A  GET one >= 0.5 x bare: a run failed")
    return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--max-wait", type=float, default=180, help="s to wait for a quiet machine")
    args = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        with benchlib.exclusive():
            return bench(args, procs, tmp)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything we started")
        return 130
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"\nERROR: {e}")
        for log in sorted(tmp.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
