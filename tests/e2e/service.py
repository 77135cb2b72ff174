"""The whole service as real processes: redis-server, the uvicorn web process and Dramatiq
workers, each started the way the Procfile starts them, so tests can SIGKILL any of them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port
from tests.support.redis_proc import RedisProcess

BIN = Path(sys.executable).parent
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Polls until `predicate` returns something truthy, and returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


class Service:
    def __init__(self, root: Path, **extra_env: str) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisProcess(root / "redis")
        self.port = free_port()
        self.extra_env = extra_env
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis.url,
            SNAPSHOTS_DATA_DIR=str(self.data_dir),
            SNAPSHOTS_ADMIN_TOKEN=ADMIN_TOKEN,
            PORT=str(self.port),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def repository(self) -> Path:
        return self.data_dir / "repository"

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self._logs.append(log)
        return subprocess.Popen(
            argv,
            env={**self.env, **(env or {})},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )

    def start(self, workers: int = 1) -> Service:
        self.redis.start()
        # The workers first: they boot while the web process does (a worker needs only
        # Redis), so a test's first job does not wait for a boot that began after the web
        # answered (both up in ~2 s instead of ~3-4.5 s on this 2-core machine at load 5).
        for _ in range(workers):
            self.start_worker()
        self.start_web()
        return self

    def start_web(self) -> None:
        self.web = self._spawn(
            "web",
            [
                str(BIN / "uvicorn"),
                "--factory",
                "api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
        )
        wait_until(self._web_up, timeout=20, what="the web process")

    def _web_up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(
        self, threads: int = 2, host: str | None = None, hide: tuple[Path, ...] = (),
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A worker process (of ``host``: SNAPSHOTS_HOST). With ``hide``, it runs in a
        private mount namespace where each of those directories is an empty tmpfs: another
        host's states, which this worker can then not even see (needs root: unshare -m).
        ``env``: more variables of its own (a host's own SNAPSHOTS_DATA_DIR, say)."""
        prefix: list[str] = []
        if hide:
            mounts = " && ".join(
                f"mount -t tmpfs -o size=64k,mode=000 hidden {shlex.quote(str(p))}" for p in hide
            )
            prefix = ["unshare", "-m", "--propagation", "private",
                      "sh", "-c", f'{mounts} && exec "$@"', "sh"]
        proc = self._spawn(
            f"worker{len(self.workers)}" + (f"-{host}" if host else ""),
            [
                *prefix,
                str(BIN / "dramatiq"),
                "workers.actors",
                "--processes",
                "1",
                "--threads",
                str(threads),
                "--worker-shutdown-timeout",
                "25000",
            ],
            env={**({"SNAPSHOTS_HOST": host} if host else {}), **(env or {})},
        )
        self.workers.append(proc)
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signals the process group, so the children Dramatiq forks die too."""
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self, graceful: bool = True) -> None:
        """Signals every process group first, then waits for each: the workers' shutdowns
        (each up to a few seconds) overlap instead of adding up. ``graceful`` False: SIGKILL,
        for a clean-up after the test: a Dramatiq worker's orderly stop after a job took
        ~3.9 s (its 1 s sleep loop, worker threads, consumers and log watcher each wait
        up to a second), and proves nothing there."""
        procs = [p for p in [*self.workers, *([self.web] if self.web else [])] if p.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if graceful:
            self.redis.stop()
        else:
            self.redis.kill()

    @classmethod
    @contextlib.contextmanager
    def running(cls, root: Path, workers: int = 1, **extra_env: str) -> Iterator[Service]:
        """A started service, stopped on exit; its logs are printed when the block fails."""
        svc = cls(root, **extra_env)
        try:
            svc.start(workers=workers)
            yield svc
        except BaseException:
            print(svc.logs())
            raise
        finally:
            svc.stop(graceful=False)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self._logs
        )
