"""The environment a server's own commands run with (power commands, hooks): an allow list
of the worker's variables, never the rest.

The worker's environment holds its secrets (the Redis URL, the admin and metrics tokens,
the store's keys) and whatever else its deployment put there (a database password, a
platform's API key), and what a command prints when it fails reaches the operation's
error, which the server's account reads (a `set -x` script, an `env` while debugging). A
deny list misses every secret it does not name, so nothing is passed but these; a command
that needs more sets it itself (the commands are the admin's)."""

from __future__ import annotations

import os
from typing import Final

PASSED: Final = ("PATH", "HOME", "LANG", "TZ")
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"


def command_environment() -> dict[str, str]:
    """PASSED of the worker's environment (PATH at least)."""
    env = {k: v for k, v in os.environ.items() if k in PASSED}
    env.setdefault("PATH", DEFAULT_PATH)
    return env
