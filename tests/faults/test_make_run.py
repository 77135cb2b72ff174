"""`make run` as a user runs it: a process that dies is started again, the rest keeps
running, and Ctrl-C stops everything in order (web and workers, then Redis), quietly.

Each test starts the real `make run` (deploy/run.py under make) with a data directory
of its own and a free port, finds the processes it supervises through /proc, and kills
them with real signals while a job runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.flow import add_server, wait_operation
from tests.e2e.service import wait_until
from tests.engine.treecmp import describe
from tests.faults.conftest import FAST_ENV
from tests.faults.faults import restore_has_data, tree_diff, wait_progress
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# Small states, slow engine: a capture takes ~3 s, so every kill lands mid-job.
STATE_MB = 24
MAKE_RUN_ENV = {**FAST_ENV, "FAULT_TEST_MBPS": "8"}


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


_AS_A_TERMINAL = (
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGQUIT):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class MakeRun:
    """`make run` in its own process group, as a terminal would run it."""

    def __init__(self, root: Path, data_dir: Path | None = None, port: int | None = None,
                 **extra_env: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or root / "data"
        self.port = port or free_port()
        self.log = root / "make-run.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("REDIS_URL", "SNAPSHOTS_ADMIN_TOKEN", "MAKEFLAGS", "MFLAGS")}
        # unthrottle() lifts FAULT_TEST_MBPS once a kill has landed (throttle/sitecustomize.py)
        self.unthrottled = root / "unthrottled"
        env.update(MAKE_RUN_ENV, SNAPSHOTS_DATA_DIR=str(self.data_dir), PORT=str(self.port),
                   FAULT_TEST_UNTHROTTLED=str(self.unthrottled), **extra_env)
        # A terminal's foreground job gets Ctrl-C; a test run started in the background
        # (`cmd &` in a script, as CI may be) has SIGINT ignored, which exec keeps and make
        # then keeps too (it ignores an interrupt it was started ignoring), so make would
        # not report the interrupt: make is exec'd with the terminal's default dispositions.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AS_A_TERMINAL, "make", "-s", "run"], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_until(self.answers, timeout=60, what="make run to answer")
        except AssertionError as e:
            self.close()
            raise AssertionError(f"{e}; make run's output:\n{self.output()[-6000:]}") from None
        self.admin = (self.data_dir / "admin_token").read_text().strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/api/v1", timeout=10,
                            headers={"Authorization": f"Bearer {self.admin}"})

    def supervisor(self) -> int:
        (pid,) = [p for p in children(self.proc.pid) if "deploy/run.py" in cmdline(p)]
        return pid

    def program(self, needle: str) -> int:
        pids = [p for p in children(self.supervisor()) if needle in cmdline(p)]
        assert len(pids) == 1, (needle, pids)
        return pids[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tracebacks(self) -> str:
        """Every traceback in the output with the lines before it (which process, which
        request), wherever it is: the fixture prints only the output's tail."""
        lines = self.output().splitlines()
        return "\n---\n".join("\n".join(lines[max(0, i - 5):i + 40])
                               for i, line in enumerate(lines) if "Traceback" in line)

    def unthrottle(self, lifted: bool = True) -> None:
        """Lifts the fault throttle of every process (or, lifted False, puts it back)."""
        if lifted:
            self.unthrottled.touch()
        else:
            self.unthrottled.unlink(missing_ok=True)

    def interrupt(self) -> None:
        """Ctrl-C at the terminal: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


    @classmethod
    @contextlib.contextmanager
    def running(cls, root: Path, **extra_env: str) -> Iterator[MakeRun]:
        """A started `make run` (extra_env: the user's environment), stopped on exit; its
        output's tail is printed when the block fails."""
        run = cls(root, None, None, **extra_env)
        try:
            yield run
        except BaseException:
            print(run.output()[-6000:])
            raise
        finally:
            run.close()


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    # The commit gate (throttle/sitecustomize.py) holds nothing until a test makes gate/hold.
    (tmp_path / "gate").mkdir()
    with MakeRun.running(tmp_path, FAULT_TEST_COMMIT_GATE=str(tmp_path / "gate")) as run:
        yield run


def _state(root: Path, name: str) -> Path:
    state = root / name
    (state / "etc").mkdir(parents=True)
    (state / "etc" / "app.conf").write_text(f"{name}\n")
    (state / "link").symlink_to("/etc/passwd")
    for i in range(4):
        (state / f"data{i}.bin").write_bytes(os.urandom(STATE_MB << 18))
    return state


def _wait_answers(client: httpx.Client, path: str, within: float) -> float:
    started = time.monotonic()

    def ok() -> bool:
        try:
            return client.get(path).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout=within, interval=0.1, what=f"GET {path} to answer again")
    return time.monotonic() - started


def _listening(port: int) -> list[str]:
    """The IPv4 addresses a TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            out.append(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def _wait_restarted(run: MakeRun, victim: int, within: float) -> float:
    """When the supervisor has a replacement running for every program (a worker with
    its child process again), the killed pid among them no more."""

    def replaced() -> bool:
        try:
            pids = [run.program(n) for n in ("dramatiq", "uvicorn", "redis-server")]
        except (AssertionError, ValueError):
            return False
        return victim not in pids and bool(children(pids[0])) and victim not in children(pids[0])

    wait_until(replaced, timeout=within, interval=0.05, what="the supervisor to restart it")
    return time.monotonic()


VICTIMS: dict[str, Callable[[MakeRun], int]] = {
    "worker child": lambda run: children(run.program("dramatiq"))[0],
    "worker main": lambda run: run.program("dramatiq"),
    "web": lambda run: run.program("uvicorn"),
    "redis": lambda run: run.program("redis-server"),
}


def test_make_run_restarts_each_killed_process_and_loses_nothing(
    make_run: MakeRun, tmp_path: Path
) -> None:
    client = make_run.client()
    # HOST defaults to loopback under make run (the banner says 127.0.0.1, and it is so).
    assert _listening(make_run.port) == ["127.0.0.1"]
    results: dict[str, Any] = {}
    gate = tmp_path / "gate"
    for name, find in VICTIMS.items():
        state = _state(tmp_path / "servers", name.replace(" ", "-"))
        server = add_server(client, str(state), name=name.replace(" ", "-"))
        expected = describe(state)
        # Redis dies exactly as the capture commits (its data stored, its final transition
        # next), whatever the machine's speed: the worker must wait for the restart in
        # place. The others die mid-capture, after its first progress.
        at_commit = name == "redis"
        make_run.unthrottle(False)  # slow again, so this kill too lands mid-capture
        if at_commit:
            (gate / "hold").touch()
        resp = client.post("/snapshots/", json={"server_id": server["id"], "name": name})
        assert resp.status_code == 201, resp.text
        snap_id, op_id = resp.json()["id"], resp.json()["operation_id"]
        if at_commit:
            reached = gate / f"reached-{op_id}"
            wait_until(reached.exists, timeout=60, interval=0.01,
                       what="the capture to reach its commit")
            (gate / "hold").unlink()
        else:
            wait_progress(client, snap_id)
        victim = find(make_run)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        if at_commit:
            (gate / f"go-{op_id}").touch()  # the commit meets the dead Redis
        make_run.unthrottle()  # the kill landed: the rest of the capture may run at full speed
        took = _wait_answers(client, f"/snapshots/{snap_id}/", within=10)
        back = _wait_restarted(make_run, victim, within=15)
        print(f"{name}: API answers {took:.2f} s, the process is replaced "
              f"{back - killed_at:.2f} s after the SIGKILL")
        op = wait_operation(client, op_id, timeout=120)
        assert op["status"] == "succeeded", (name, op)
        assert client.get(f"/snapshots/{snap_id}/").json()["status"] == "available"
        assert victim not in children(make_run.supervisor())
        results[name] = (server["id"], snap_id, state, expected, took)

    # Every process is back, each once, under the same supervisor.
    for needle in ("dramatiq", "uvicorn", "redis-server"):
        make_run.program(needle)
    out = make_run.output()
    assert out.count("restarting in") >= 3, out  # the worker child takes its main along
    for name, (server_id, snap_id, state, expected, took) in results.items():
        assert took < 10, (name, took)
        for f in state.glob("data*.bin"):
            f.write_bytes(b"overwritten")
        resp = client.post(f"/snapshots/{snap_id}/restore/")
        assert resp.status_code == 200, resp.text
        op = wait_operation(client, resp.json()["operation_id"], timeout=120)
        assert op["status"] == "succeeded", (name, op)
        assert not tree_diff(expected, describe(state)), name
        assert client.get(f"/servers/{server_id}/").json()["status"] == "running"
    assert not make_run.tracebacks(), make_run.tracebacks()
    # The commit that met the dead Redis waited for it in place (not a redelivery).
    assert "retrying complete_create" in out and "Redis is back after" in out, out


def test_ctrl_c_during_a_restore_stops_in_order_and_quietly(
    make_run: MakeRun, tmp_path: Path
) -> None:
    client = make_run.client()
    state = _state(tmp_path / "servers", "web")
    flag = tmp_path / "running"
    flag.touch()
    power = {"kind": "command", "stop": f"rm -f {flag}", "start": f"touch {flag}",
             "status": f"test -e {flag}"}
    server = add_server(client, str(state), power=power)
    expected = describe(state)
    resp = client.post("/snapshots/", json={"server_id": server["id"], "name": "before"})
    snap_id = resp.json()["id"]
    assert wait_operation(client, resp.json()["operation_id"])["status"] == "succeeded"
    for f in state.glob("data*.bin"):
        f.unlink()
    resp = client.post(f"/snapshots/{snap_id}/restore/")
    assert resp.status_code == 200, resp.text
    op_id = resp.json()["operation_id"]
    wait_until(lambda: restore_has_data(state), timeout=60, interval=0.01,
               what="the restore to write")
    redis_pid = make_run.program("redis-server")
    before = len(make_run.output().splitlines())

    make_run.interrupt()
    # The embedded Redis is not in the terminal's process group: Ctrl-C does not reach it.
    time.sleep(0.5)
    assert redis_pid in children(make_run.supervisor())
    assert make_run.proc.wait(timeout=45) != 0  # make reports the interrupt
    lines = make_run.output().splitlines()[before:]
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    assert len(lines) < 40, text
    order = [next(i for i, line in enumerate(lines) if needle in line)
             for needle in ("stopping web", "worker stopped", "stopping redis", "redis stopped")]
    assert order == sorted(order), text
    assert "did not stop in time" not in text, text

    # Nothing was lost: the next `make run` finishes the interrupted restore (at full speed).
    rerun = MakeRun(tmp_path / "rerun", data_dir=make_run.data_dir, port=make_run.port)
    rerun.unthrottle()
    try:
        op = wait_operation(rerun.client(), op_id, timeout=120)
        assert op["status"] == "succeeded", op
        assert not tree_diff(expected, describe(state))
        assert flag.exists()
    finally:
        print(rerun.output()[-4000:])
        rerun.close()


def test_json_logs_under_make_run_are_one_object_a_line(tmp_path: Path) -> None:
    """LOG_FORMAT=json: the banner, the supervisor, uvicorn, our lines and Dramatiq's main
    process (wrapped by the supervisor) all come out as one JSON object a line."""
    run = MakeRun(tmp_path, LOG_FORMAT="json")
    try:
        client = run.client()
        assert client.get("/snapshots/", headers={"X-Request-Id": "json-check"}).status_code \
            == 200
        wait_until(lambda: "json-check" in run.output(), timeout=10, what="the access line")
        run.interrupt()
        run.proc.wait(timeout=45)
    finally:
        run.close()
    records = [json.loads(line) for line in run.output().splitlines() if line.strip()]
    assert records[0]["admin_token"] == run.admin and records[0]["logger"] == "supervisor"
    assert any(r.get("request_id") == "json-check" and r.get("route") == "/api/v1/snapshots/"
               for r in records)
    assert any(r["logger"] == "worker" and "Dramatiq" in r["message"] for r in records)
    assert records[-1]["message"] == "stopped"
