"""The processes bench/api.py starts, on free loopback ports: a throw-away redis-server, our
API and bench/bare_app.py under uvicorn; each stopped by its own process group."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


UVICORN_OPTS = ["--host", "127.0.0.1", "--workers", "1", "--log-level", "warning"]
# Our API runs as the Procfile runs it: its HTTP protocol (slow-client deadlines, headers
# and body in one write), no uvicorn access line (ours is written), keep-alive 5 s.
API_OPTS = ["--http", "api.httpguard:DeadlineHttp", "--no-access-log", "--timeout-keep-alive", "5"]


class Procs:
    """The processes we started; all stopped by stop_all(), each by its own pid."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path,
              cwd: Path = ROOT) -> None:
        out = log.open("wb")
        p = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
    return start_api(procs, tmp, "api", api_target(), env, aport), env


def start_api(
    procs: Procs, tmp: Path, name: str, target: list[str], env: dict[str, str], port: int = 0,
    checkout: Path = ROOT,
) -> str:
    """An API process (our app, a variant of it, or another checkout's app with that
    checkout's own .venv) under uvicorn; answers its base URL."""
    port = port or free_port()
    uvicorn = str(VENV_BIN / "uvicorn") if checkout == ROOT else str(
        checkout / ".venv" / "bin" / "uvicorn")
    procs.start(
        name, [uvicorn, *target, *UVICORN_OPTS, *API_OPTS, "--port", str(port)], env,
        tmp / f"{name}.log", cwd=checkout,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", procs)
    return base


def start_bare(
    procs: Procs, tmp: Path, body: bytes, env: dict[str, str], name: str = "bare"
) -> str:
    port = free_port()
    (tmp / f"{name}.json").write_bytes(body)
    benv = dict(env, BARE_BODY_FILE=str(tmp / f"{name}.json"))
    procs.start(
        name,
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
        tmp / f"{name}.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", procs)
    return base
