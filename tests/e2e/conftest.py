from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import honcho.environ
import httpx
import pytest

from tests.e2e.service import ADMIN_TOKEN, Service, wait_until
from tests.support.ports import free_port
from tests.support.redis_proc import RedisProcess

ROOT = Path(__file__).resolve().parents[2]
# The slow-client deadlines the Procfile's web process runs with in these tests.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service.running(tmp_path_factory.mktemp("service")) as svc:
        yield svc


@pytest.fixture
def states(tmp_path: Path) -> Path:
    """Where this test's servers keep their state."""
    path = tmp_path / "servers"
    path.mkdir()
    return path


@dataclass
class ProcfileWeb:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def procfile_web(tmp_path: Path) -> Iterator[ProcfileWeb]:
    """The Procfile's web command (with its flags), run through a shell as honcho and
    Heroku run it, against a redis-server of its own; no worker."""
    redis = RedisProcess(tmp_path / "redis").start()
    command = honcho.environ.parse_procfile((ROOT / "Procfile").read_text()).processes["web"]
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis.url, SNAPSHOTS_DATA_DIR=str(tmp_path / "data"),
               SNAPSHOTS_ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(port), HOST="127.0.0.1",
               SNAPSHOTS_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
               SNAPSHOTS_BODY_TIMEOUT=str(BODY_TIMEOUT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None and pytest.fail((tmp_path / "web.log").read_text())

    try:
        wait_until(up, timeout=20, what="the web process")
        yield ProcfileWeb(url, proc, tmp_path / "web.log")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        redis.close()
