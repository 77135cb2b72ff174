"""A test run killed outright leaves no server of its own running (tests/support/orphans.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import sys
from tests.support.redis_proc import RedisProcess
r = RedisProcess().start()
print(r.proc.pid, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_sigkilled_test_process_takes_its_redis_server_with_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout is not None
    server = int(child.stdout.readline())
    try:
        assert _alive(server)
        child.kill()  # no finalizer runs, as when CI's timeout kills pytest
        child.wait(10)
        deadline = time.monotonic() + 5
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(server), "redis-server outlived the process that started it"
    finally:
        if _alive(server):
            os.kill(server, signal.SIGKILL)
