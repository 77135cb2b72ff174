"""Servers the tests start die with the test process, even when it is SIGKILLed.

A pytest run killed outright (a CI timeout, `timeout -s KILL`) runs no fixture finalizer,
and its weed and redis-server processes lived on (two orphaned `weed mini` were found an
hour after such a run on this machine, holding their ports). util-linux's `setpriv
--pdeathsig KILL` sets PR_SET_PDEATHSIG and execs the server, which keeps it. The signal
follows the *thread* that forked the child, so it is asked for only from the main thread:
a server started from a short-lived thread (a restart in a fault test) would otherwise die
with that thread.
"""

from __future__ import annotations

import shutil
import threading


def dies_with_us(args: list[str]) -> list[str]:
    """args, prefixed so the process gets SIGKILL when this (main) thread's process dies."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return args
    return [setpriv, "--pdeathsig", "KILL", "--", *args]
