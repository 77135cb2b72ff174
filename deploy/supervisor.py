"""A small process supervisor for `make run`: keeps the Procfile's processes alive.

Why not honcho, supervisor or circus: honcho stops every process when one exits (one
OOM-killed Dramatiq worker took the web process down with it). supervisord and circus
restart, but each wants its own description of the processes (an ini file, a circus
config) beside the Procfile, a daemon with a control socket, and (circus) ZeroMQ and
tornado; the Procfile must stay the one description. What `make run` needs is small:
start each Procfile command, restart one that dies with a back-off, and stop them in
order. Parsing the Procfile is left to honcho's parser; the rest is this module, tested
by tests/e2e/test_make_run.py, which SIGKILLs each process under a real `make run`.

Each process gets a session (and so a process group) of its own: a Ctrl-C typed at the
terminal reaches `make` and this supervisor only, never a worker's power command or the
embedded Redis, so the stop below is the only stop. A process whose main pid dies has its
group (a Dramatiq worker's children) stopped before it is started again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

log = logging.getLogger("supervisor")

# Back-off before a restart: doubles from FIRST to MAX; a process that ran RESET seconds
# counts as healthy again.
BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 30.0
BACKOFF_RESET: Final = 30.0
POLL: Final = 0.2
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class Program:
    """One process to keep running: a name, a shell command, and how it stops."""

    name: str
    command: str
    # Seconds between the stop signal and SIGKILL: the program's own graceful shutdown
    # (the Procfile's 25 s) plus a margin.
    stop_timeout: float = 30.0
    # Programs stop tier by tier, highest first (web and workers before Redis).
    tier: int = 1
    # Called before each start (the embedded Redis removes its stale socket).
    before_start: Callable[[], None] | None = None
    # Called after each start; returns once the program is ready (or raises).
    wait_ready: Callable[[subprocess.Popen[bytes]], None] | None = None


@dataclass
class Child:
    program: Program
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    restarts: int = 0
    relay: threading.Thread | None = field(default=None, repr=False)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies (even by SIGKILL), so nothing is
    left running unsupervised; Linux only, a no-op elsewhere."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(
        self,
        programs: Sequence[Program],
        env: dict[str, str],
        cwd: str,
        output: Callable[[str, str], None],
    ) -> None:
        self.children = [Child(p) for p in programs]
        self.env = env
        self.cwd = cwd
        self.output = output  # (program name, line) -> None
        self.stopping = False
        self.interrupts = 0

    # --- starting -------------------------------------------------------------------

    def start(self, child: Child) -> None:
        program = child.program
        if program.before_start is not None:
            program.before_start()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {program.command}"],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        child.proc, child.started_at, child.restart_at = proc, time.monotonic(), None
        child.relay = threading.Thread(
            target=self._relay, args=(program.name, proc.stdout), daemon=True
        )
        child.relay.start()
        if program.wait_ready is not None:
            program.wait_ready(proc)

    def _relay(self, name: str, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for raw in stream:
            self.output(name, raw.decode("utf-8", "replace").rstrip("\n"))

    # --- watching -------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Notices exits and restarts what is due; one pass of the main loop."""
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                self._exited(child, proc, now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                log.info("starting %s again (restart %d)", child.program.name, child.restarts)
                try:
                    self.start(child)
                except Exception as exc:
                    log.error("%s did not start: %s", child.program.name, exc)
                    self._schedule(child, time.monotonic())

    def _exited(self, child: Child, proc: subprocess.Popen[bytes], now: float) -> None:
        child.proc = None
        code = proc.returncode
        # Its own children (a Dramatiq worker's) would run on unsupervised: stop them.
        self._stop_group(proc.pid, timeout=10.0)
        if child.relay is not None:
            child.relay.join(timeout=1)
        if now - child.started_at >= BACKOFF_RESET:
            child.backoff = BACKOFF_FIRST
        log.warning(
            "%s (pid %d) %s; restarting in %.1f s",
            child.program.name, proc.pid, describe_exit(code), child.backoff,
        )
        self._schedule(child, now)

    def _schedule(self, child: Child, now: float) -> None:
        child.restart_at = now + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    # --- stopping -------------------------------------------------------------------

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover
            return True
        return True

    def _stop_group(self, pgid: int, timeout: float) -> None:
        """SIGTERM what is left of a process group, SIGKILL it after ``timeout``."""
        if not self._group_alive(pgid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Tier by tier, highest first: SIGTERM each main process (it passes the signal
        on to its own children, as Dramatiq's does), wait for its graceful shutdown, and
        SIGKILL its group when that runs out, or at once after a second Ctrl-C."""
        self.stopping = True
        for tier in sorted({c.program.tier for c in self.children}, reverse=True):
            running = [c for c in self.children if c.program.tier == tier and c.proc]
            for child in running:
                assert child.proc is not None
                log.info("stopping %s (pid %d)", child.program.name, child.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            for child in running:
                assert child.proc is not None
                deadline = time.monotonic() + child.program.stop_timeout
                while child.proc.poll() is None:
                    if time.monotonic() > deadline or self.interrupts > 1:
                        log.warning("%s did not stop in time: killing it", child.program.name)
                        break
                    time.sleep(0.05)
                self._stop_group(child.proc.pid, timeout=0.0)
                child.proc.wait()
                if child.relay is not None:
                    child.relay.join(timeout=1)
                code = child.proc.returncode
                if code in (0, -signal.SIGTERM):  # uvicorn re-raises the SIGTERM it handled
                    log.info("%s stopped", child.program.name)
                else:
                    log.info("%s stopped: it %s", child.program.name, describe_exit(code))
                child.proc = None

    # --- the main loop --------------------------------------------------------------

    def run(self) -> int:
        """Starts everything, keeps it running until SIGINT or SIGTERM, stops it all."""
        received: list[str] = []

        def on_signal(signum: int, frame: object) -> None:
            self.interrupts += 1
            received.append(signal.Signals(signum).name)
            if self.interrupts > 1:
                log.warning("second %s: killing what is left", received[-1])

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            for child in self.children:
                self.start(child)
                if received:
                    break
            while not received:
                self.check(time.monotonic())
                time.sleep(POLL)
        except Exception as exc:
            log.error("stopping everything: %s", exc)
            received.append("error")
        log.info("%s received: stopping", received[0])
        self.stop_all()
        return 0 if received[0] != "error" else 1

