"""Power drivers against real shell commands and a fake `systemctl` script."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from workers.power import CommandPower, NoPower, PowerError, SystemdPower


def _command_power(tmp_path: Path, timeout: float = 5.0) -> tuple[CommandPower, Path]:
    flag = tmp_path / "running"
    return (
        CommandPower(
            stop=f"rm -f {flag}",
            start=f"touch {flag}",
            status=f"test -e {flag}",
            timeout=timeout,
        ),
        flag,
    )


def test_command_driver_stops_and_starts(tmp_path: Path) -> None:
    driver, flag = _command_power(tmp_path)
    flag.touch()
    assert driver.status() == "running"
    driver.stop()
    assert not flag.exists()
    assert driver.status() == "stopped"
    driver.start()
    assert flag.exists()
    assert driver.status() == "running"


def test_command_driver_waits_for_an_asynchronous_stop(tmp_path: Path) -> None:
    flag = tmp_path / "running"
    flag.touch()
    driver = CommandPower(
        stop=f"(sleep 0.5; rm -f {flag}) >/dev/null 2>&1 &",
        start=f"touch {flag}",
        status=f"test -e {flag}",
        timeout=5,
    )
    driver.stop()
    assert not flag.exists()


def test_a_start_command_that_leaves_the_server_running_in_the_background_returns(
        tmp_path: Path) -> None:
    """`./server &` without redirecting its output: the server holds the command's stdout
    and stderr as long as it runs; the start is done when the command's shell exits."""
    flag = tmp_path / "running"
    pidfile = tmp_path / "server.pid"
    driver = CommandPower(stop=f"kill $(cat {pidfile}); rm -f {flag}",
                          start=f"sleep 30 & echo $! > {pidfile}; touch {flag}",
                          status=f"test -e {flag}", timeout=3)
    try:
        started = time.monotonic()
        driver.start()  # timed out after 3 s: power_failed, the server up
        assert time.monotonic() - started < 2
        assert driver.status() == "running"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_failing_stop_command_names_the_output(tmp_path: Path) -> None:
    driver = CommandPower(stop="echo no such service >&2; exit 3", start="true", status="true")
    with pytest.raises(PowerError, match="no such service"):
        driver.stop()


def test_stop_that_never_takes_effect_times_out(tmp_path: Path) -> None:
    driver = CommandPower(stop="true", start="true", status="true", timeout=0.5)
    with pytest.raises(PowerError, match="did not reach status 'stopped'"):
        driver.stop()


def test_hanging_command_times_out() -> None:
    driver = CommandPower(stop="sleep 30", start="true", status="true", timeout=0.5)
    with pytest.raises(PowerError, match="timed out"):
        driver.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_a_timed_out_command_leaves_nothing_of_it_running(tmp_path: Path) -> None:
    """A hung stop command's own children (`ssh host stop` under the shell) are killed with
    it on the timeout: left running, a stop that timed out (the operation failed, the
    server started again) could still stop the server later."""
    pidfile = tmp_path / "child.pid"
    driver = CommandPower(stop=f"sleep 30 & echo $! > {pidfile}; wait", start="true",
                          status="true", timeout=0.5)
    with pytest.raises(PowerError, match="timed out"):
        driver.stop()
    pid = int(pidfile.read_text())
    try:
        deadline = time.monotonic() + 2
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the timed-out command's child still runs"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_command_interrupted_by_the_workers_shutdown_leaves_nothing_running(
        tmp_path: Path) -> None:
    """Dramatiq raises Shutdown (or TimeLimitExceeded) into the job's thread: the power
    command under way is ended with it. Left running, a start interrupted mid-restore
    could start the server while the retry on another worker restores its state."""
    import ctypes
    import threading

    from dramatiq.middleware import Shutdown

    pidfile = tmp_path / "child.pid"
    driver = CommandPower(stop=f"sleep 30 & echo $! > {pidfile}; wait", start="true",
                          status="true", timeout=20)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            driver.stop()
        except BaseException as e:  # what the job's thread sees
            raised.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pid = int(pidfile.read_text())
    try:
        assert t.ident is not None
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                   ctypes.py_object(Shutdown))
        t.join(5)
        assert not t.is_alive() and raised and isinstance(raised[0], Shutdown)
        deadline = time.monotonic() + 2
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the interrupted command's child still runs"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_systemd_driver_calls_systemctl(tmp_path: Path) -> None:
    state = tmp_path / "active"
    log = tmp_path / "calls"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'case "$1" in\n'
        f"  stop) rm -f {state};;\n"
        f"  start) touch {state};;\n"
        f"  is-active) test -e {state};;\n"
        "esac\n"
    )
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)
    driver = SystemdPower("game@1.service", timeout=5, systemctl=str(systemctl))
    assert driver.status() == "stopped"
    driver.start()
    assert driver.status() == "running"
    driver.stop()
    assert driver.status() == "stopped"
    calls = log.read_text().splitlines()
    assert "start -- game@1.service" in calls
    assert "stop -- game@1.service" in calls
    assert "is-active --quiet -- game@1.service" in calls


def test_systemd_driver_drives_a_unit_whose_name_begins_with_a_dash(tmp_path: Path) -> None:
    """`-.mount`, `-.slice`: systemctl parses its options as getopt does (as this fake
    does), so the unit must follow `--` (before: "invalid option -- '.'", power_failed)."""
    state, systemctl = tmp_path / "active", tmp_path / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        "verb=; unit=; opts=1\n"
        'for a in "$@"; do\n'
        '  if [ $opts = 1 ]; then\n'
        '    case "$a" in\n'
        "      --) opts=0; continue;;\n"
        "      --quiet|--no-pager|--full|--lines=*) continue;;\n"
        "      -*) echo \"systemctl: invalid option -- '${a#-}'\" >&2; exit 1;;\n"
        "    esac\n"
        "  fi\n"
        '  if [ -z "$verb" ]; then verb=$a; else unit=$a; fi\n'
        "done\n"
        '[ "$unit" = "-.mount" ] || { echo "Unit $unit not found." >&2; exit 5; }\n'
        'case "$verb" in\n'
        f"  stop) rm -f {state};;\n"
        f"  start) touch {state};;\n"
        f"  is-active) test -e {state};;\n"
        "esac\n"
    )
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)
    driver = SystemdPower("-.mount", timeout=3, systemctl=str(systemctl))
    driver.start()
    assert state.exists() and driver.status() == "running"
    driver.stop()
    assert not state.exists() and driver.status() == "stopped"


def test_no_power_is_always_running() -> None:
    driver = NoPower()
    driver.stop()
    assert driver.status() == "running"


def test_failing_start_keeps_the_last_lines_of_the_output() -> None:
    steps = "; ".join(f"echo step {i}" for i in range(20))
    script = f"{steps}; echo 'bind: port 80 in use' >&2; exit 7"
    driver = CommandPower(stop="true", start=script, status="false")
    with pytest.raises(PowerError) as err:
        driver.start()
    message = str(err.value)
    assert "exit code 7" in message and "bind: port 80 in use" in message
    assert "step 19" in message and "step 2\n" not in message  # the last lines only


def test_failing_systemd_start_says_why_from_the_units_status(tmp_path: Path) -> None:
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  start) echo 'Job for game@1.service failed because the control process exited"
        " with error code.' >&2; echo \"See 'systemctl status game@1.service'\" >&2; exit 1;;\n"
        "  status) echo '* game@1.service - Game server 1'; "
        "echo '   Active: failed (Result: exit-code)'; "
        "echo 'game[812]: config error: world.dat is corrupt'; exit 3;;\n"
        "  is-active) exit 3;;\n"
        "esac\n"
    )
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)
    driver = SystemdPower("game@1.service", timeout=5, systemctl=str(systemctl))
    with pytest.raises(PowerError) as err:
        driver.start()
    message = str(err.value)
    assert "control process exited with error code" in message
    assert "world.dat is corrupt" in message and "Result: exit-code" in message


def test_power_commands_never_get_the_workers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They ran with the worker's whole environment: the Redis URL, the admin token and the
    # store's keys, one `env` in a failing script away from the account's operation error.
    secrets = {"REDIS_URL": "redis://:hunter2@db:6379/0", "SNAPSHOTS_ADMIN_TOKEN": "adm-s3cr3t",
               "SNAPSHOTS_METRICS_TOKEN": "met-s3cr3t", "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t",
               "AWS_SESSION_TOKEN": "sess-s3cr3t"}
    # A deny list of those missed every other secret of the worker's deployment.
    secrets["MY_DB_PASSWORD"] = "db-s3cr3t"
    secrets["STRIPE_API_KEY"] = "sk_live_s3cr3t"
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TZ", "Europe/Berlin")
    seen = tmp_path / "env"
    driver = CommandPower(stop=f"env > {seen}; env; exit 1", start="true", status="true")
    with pytest.raises(PowerError) as err:
        driver.stop()
    for value in secrets.values():
        assert value not in seen.read_text() and value not in str(err.value)
    passed = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert passed["TZ"] == "Europe/Berlin" and passed["PATH"] == os.environ["PATH"]


def test_a_power_error_never_shows_the_command(tmp_path: Path) -> None:
    # The server's power is admin-only in its view; the account reads the operation's error.
    secret = "ipmitool -P pa55w0rd chassis power off"
    driver = CommandPower(stop=f"sleep 30 # {secret}", start="true", status="true",
                          timeout=0.3)
    with pytest.raises(PowerError, match="timed out") as err:
        driver.stop()
    assert "pa55w0rd" not in str(err.value)
    systemd = SystemdPower("game@1.service", systemctl=str(tmp_path / "no-such-systemctl"))
    with pytest.raises(PowerError, match="could not run") as err:
        systemd.status()
    assert "no-such-systemctl" not in str(err.value)
