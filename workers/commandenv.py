"""How a server's own commands (power commands, hooks) are started: in a session of their
own (start_in_session), with an allow list of the worker's variables, never the rest.

The worker's environment holds its secrets (the Redis URL, the admin and metrics tokens,
the store's keys) and whatever else its deployment put there (a database password, a
platform's API key), and what a command prints when it fails reaches the operation's
error, which the server's account reads (a `set -x` script, an `env` while debugging). A
deny list misses every secret it does not name, so nothing is passed but these; a command
that needs more sets it itself (the commands are the admin's)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any, Final

PASSED: Final = ("PATH", "HOME", "LANG", "TZ")
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"


def command_environment() -> dict[str, str]:
    """PASSED of the worker's environment (PATH at least)."""
    env = {k: v for k, v in os.environ.items() if k in PASSED}
    env.setdefault("PATH", DEFAULT_PATH)
    return env



def start_in_session(command: str | list[str], *, shell: bool,
                     **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen(command, start_new_session=True, ...), whose child's session is
    killed when this thread is interrupted before Popen returns (Dramatiq's Shutdown or
    time limit, raised into the job's thread): after its fork Popen still reads whether
    the exec worked, and the command may run by then; interrupted there, Popen never
    handed it back, and the command's tree was left running on its own (a pre-capture
    hook stopping a database, a power command starting the server during a retry).
    Made, then initialised, so its pid (set right after the fork) is known either way."""
    proc: subprocess.Popen[bytes] = subprocess.Popen.__new__(subprocess.Popen)
    try:
        proc.__init__(command, shell=shell, start_new_session=True, **kwargs)  # type: ignore[misc]
    except BaseException:
        pid = getattr(proc, "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise
    return proc
