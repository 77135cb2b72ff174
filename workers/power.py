"""Server power drivers: how a worker stops and starts a server around a capture or restore.

A driver only answers three questions (is it running, stop it, start it) and waits until the
server's own status agrees, because a stop command that returns is not proof that the
server stopped writing to its state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import IO, Literal, Protocol

from shared.records import ServerRecord
from shared.schemas import PowerCommand, PowerSystemd
from workers.commandenv import command_environment, start_in_session

log = logging.getLogger(__name__)

PowerStatus = Literal["running", "stopped"]

# How long a stop or start may take before the operation fails with `power_failed`.
DEFAULT_TIMEOUT = 120.0
_POLL_INTERVAL = 0.2


class PowerError(Exception):
    """A stop, start or status check failed; the message is shown to the user."""

    code = "power_failed"


class PowerDriver(Protocol):
    def status(self) -> PowerStatus: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


# How a job finds the driver of a server (driver_for; tests give their own).
PowerFactory = Callable[[ServerRecord], PowerDriver]


class NoPower:
    """Nothing to stop: the state is captured live and the server always counts as running."""

    def status(self) -> PowerStatus:
        return "running"

    def stop(self) -> None:
        return None

    def start(self) -> None:
        return None


def _run(argv: list[str] | str, timeout: float, *, shell: bool) -> subprocess.CompletedProcess[str]:
    """Runs a power command until its own process exits (not until every process it started
    closes its output): a start command commonly leaves the server running in the
    background (`./server &`), and that server inherits the command's stdout and stderr.
    Read through pipes, they stayed open as long as the server ran, so every such start
    "timed out" after the full timeout and failed the operation with power_failed although
    the server was up. The output goes to unlinked files instead (as hooks' does), read
    once the command exited, and the command runs in a session of its own, so what it
    leaves running is not in the worker's process group (not signalled with it)."""
    # The errors name the command's role, never its text: the server's account reads them,
    # and the commands (the admin-only "power" of the server) may carry credentials.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = start_in_session(
                argv, shell=shell, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=command_environment(),  # not the worker's secrets: workers/commandenv.py
            )
        except OSError as exc:
            log.warning("power command could not run: %r: %s", argv, exc)
            raise PowerError(f"power command could not run: {exc.strerror or exc}") from exc
        try:
            code = proc.wait(timeout=timeout)
        except BaseException as exc:
            # Timed out, or the job's thread interrupted (Dramatiq's Shutdown or time limit):
            # the command's whole process group (its session's, led by it) ends with it,
            # not the shell alone. Left running, a hung `ssh host stop` could still stop
            # the server after the operation failed and the server was started again, and
            # an interrupted start could start it while a retry restores its state.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            log.warning("power command timed out after %g s: %r", timeout, argv)
            raise PowerError(f"power command timed out after {timeout:g} s") from exc
        return subprocess.CompletedProcess(argv, code, _read_tail(out), _read_tail(err))


def _read_tail(f: IO[bytes]) -> str:
    """The end of what a command wrote to f (enough for _tail's last lines); f is then
    emptied, so a process the command left running does not keep the worker's disk."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4 * TAIL_CHARS))
    text = f.read().decode(errors="replace")
    f.truncate(0)
    return text


# How much of a failed power command's output the operation's error keeps: its last
# lines, where a command (systemctl, a start script) says why.
TAIL_LINES = 8
TAIL_CHARS = 800


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    """The exit code and the last lines of what the command printed (stdout, then stderr)."""
    lines = [ln.rstrip() for ln in f"{proc.stdout or ''}\n{proc.stderr or ''}".splitlines()]
    lines = [ln for ln in lines if ln.strip()][-TAIL_LINES:]
    text = "\n".join(lines)[-TAIL_CHARS:]
    return f"exit code {proc.returncode}" + (f"; its output ends:\n{text}" if text else "")


class _WaitingDriver:
    """Shared wait-until-status logic for drivers whose stop/start are asynchronous."""

    timeout: float

    def status(self) -> PowerStatus:
        raise NotImplementedError

    def _wait_for(self, wanted: PowerStatus, deadline: float) -> None:
        while True:
            if self.status() == wanted:
                return
            if time.monotonic() >= deadline:
                raise PowerError(
                    f"server did not reach status {wanted!r} within {self.timeout:g} s"
                )
            time.sleep(_POLL_INTERVAL)


class CommandPower(_WaitingDriver):
    """Shell commands for stop, start and status (status exit code 0 means running)."""

    def __init__(self, stop: str, start: str, status: str, timeout: float = DEFAULT_TIMEOUT):
        self._stop, self._start, self._status = stop, start, status
        self.timeout = timeout

    def status(self) -> PowerStatus:
        proc = _run(self._status, self.timeout, shell=True)
        return "running" if proc.returncode == 0 else "stopped"

    def stop(self) -> None:
        deadline = time.monotonic() + self.timeout
        proc = _run(self._stop, self.timeout, shell=True)
        if proc.returncode != 0:
            raise PowerError(f"stop command failed: {_tail(proc)}")
        self._wait_for("stopped", deadline)

    def start(self) -> None:
        deadline = time.monotonic() + self.timeout
        proc = _run(self._start, self.timeout, shell=True)
        if proc.returncode != 0:
            raise PowerError(f"start command failed: {_tail(proc)}")
        self._wait_for("running", deadline)


class SystemdPower(_WaitingDriver):
    """A systemd unit, driven with `systemctl stop|start|is-active`. The unit always comes
    after `--`: unit names may begin with a dash (the root mount `-.mount`, the root slice
    `-.slice`), and without it systemctl read one as its options ("invalid option -- '.'"),
    or, for a unit `--help`, printed its help and exited 0: every stop "succeeded"."""

    def __init__(self, unit: str, timeout: float = DEFAULT_TIMEOUT, systemctl: str = "systemctl"):
        self._unit = unit
        self._systemctl = systemctl
        self.timeout = timeout

    def status(self) -> PowerStatus:
        proc = _run(
            [self._systemctl, "is-active", "--quiet", "--", self._unit], self.timeout,
            shell=False
        )
        return "running" if proc.returncode == 0 else "stopped"

    def _call(self, verb: str) -> None:
        proc = _run([self._systemctl, verb, "--", self._unit], self.timeout, shell=False)
        if proc.returncode != 0:
            # systemctl's own message says little ("see systemctl status"): the unit's
            # status and its last journal lines say why.
            status = _run([self._systemctl, "status", "--no-pager", "--full", "--lines=5",
                           "--", self._unit], self.timeout, shell=False)
            raise PowerError(
                f"systemctl {verb} {self._unit} failed: {_tail(proc)}\n"
                f"systemctl status {self._unit}: {_tail(status)}"
            )

    def stop(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._call("stop")
        self._wait_for("stopped", deadline)

    def start(self) -> None:
        deadline = time.monotonic() + self.timeout
        self._call("start")
        self._wait_for("running", deadline)


def settle(driver: PowerDriver, run: bool) -> tuple[PowerStatus, str | None]:
    """Brings the server to the wanted power state: what it really is then, and why the
    start failed (the driver's error), if it did."""
    try:
        if run and driver.status() != "running":
            driver.start()
        return driver.status(), None
    except PowerError as exc:
        log.warning("could not settle the server's power state: %s", exc)
        try:
            return driver.status(), str(exc)
        except PowerError:
            return "stopped", str(exc)


def driver_for(server: ServerRecord) -> PowerDriver:
    """The driver for a server's power settings."""
    power = server.power
    if isinstance(power, PowerCommand):
        return CommandPower(power.stop, power.start, power.status)
    if isinstance(power, PowerSystemd):
        return SystemdPower(power.unit)
    return NoPower()
