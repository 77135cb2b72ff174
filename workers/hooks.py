"""A server's snapshot hooks: its own commands run on its host around every capture.

``pre_snapshot`` runs before the capture (inside a ``stop_server`` stop), ``post_snapshot``
after it, whatever happened: also when the pre hook or the capture failed, and, when the
worker was killed in between, at the start of the next attempt (the operation carries a
``hook_pending`` mark from before the pre hook until after the post hook). A pre hook that
exits non-zero or outlives ``timeout`` fails the snapshot with ``hook_failed``; a failing
post hook is a warning on the snapshot. Each run's exit code and the last 4 KiB of its
output (stdout and stderr together) are kept on the operation.

Hooks get a small environment of their own, not the worker's (which holds the Redis URL
and the admin token): PATH, HOME, LANG, TZ (workers/commandenv.py, as power commands), and
``SNAPSHOTS_SERVER_ID``, ``SNAPSHOTS_SERVER_NAME``, ``SNAPSHOTS_SNAPSHOT_ID``,
``SNAPSHOTS_STATE_PATH``, ``SNAPSHOTS_HOOK`` and, for the post hook, ``SNAPSHOTS_CAPTURE``
(``succeeded``, ``failed`` or ``interrupted``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Literal

from shared.records import ServerRecord
from shared.responses import HookRun
from shared.store import Store
from workers.commandenv import command_environment, start_in_session
from workers.engine import Cancelled

log = logging.getLogger(__name__)

OUTPUT_TAIL = 4096
HookName = Literal["pre_snapshot", "post_snapshot"]
Outcome = Literal["succeeded", "failed", "interrupted"]


class HookFailed(Exception):
    """The pre_snapshot hook failed or timed out; the snapshot fails with this code."""

    code = "hook_failed"


def _environment(server: ServerRecord, snapshot_id: int, hook: HookName) -> dict[str, str]:
    env = command_environment()
    env.update(
        SNAPSHOTS_SERVER_ID=str(server.id),
        SNAPSHOTS_SERVER_NAME=server.name,
        SNAPSHOTS_SNAPSHOT_ID=str(snapshot_id),
        SNAPSHOTS_STATE_PATH=server.state.path,
        SNAPSHOTS_HOOK=hook,
    )
    return env


def run_command(command: str, env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """(exit code or None when it timed out and was killed, the output's last 4 KiB)."""
    with tempfile.TemporaryFile() as out:
        # A session of its own, so a timeout kills the whole tree the command started.
        proc = start_in_session(command, shell=True, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except BaseException as exc:
            # timed out, or the job's thread interrupted (Dramatiq's Shutdown or time
            # limit): the hook's whole tree ends with it, never left running on its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            code = None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_TAIL))
        return code, out.read().decode(errors="replace")


class HookRunner:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _run(self, op_id: int, server: ServerRecord, snapshot_id: int, hook: HookName,
             outcome: Outcome | None = None) -> HookRun | None:
        """Runs one hook (None when the server has none) and keeps its record."""
        hooks = server.hooks
        command = None if hooks is None else getattr(hooks, hook)
        if hooks is None or command is None:
            return None
        env = _environment(server, snapshot_id, hook)
        if outcome is not None:
            env["SNAPSHOTS_CAPTURE"] = outcome
        started = time.monotonic()
        code, output = run_command(command, env, float(hooks.timeout))
        run = HookRun(
            hook=hook, exit_code=code, timed_out=code is None,
            seconds=round(time.monotonic() - started, 3), output=output,
        )
        self.store.add_hook_run(op_id, run)
        log.info("operation %s: %s hook of server %s exited %s", op_id, hook, server.id, code)
        return run

    def owed(self, op_id: int, server: ServerRecord, snapshot_id: int) -> None:
        """Runs the post hook an earlier, killed attempt owes the server (if any)."""
        if self.store.hook_pending(op_id):
            self._run(op_id, server, snapshot_id, "post_snapshot", "interrupted")
            self.store.set_hook_pending(op_id, False)

    @contextlib.contextmanager
    def around(self, op_id: int, server: ServerRecord, snapshot_id: int,
               warnings: list[str]) -> Iterator[None]:
        """pre hook, the block, post hook; raises HookFailed when the pre hook fails."""
        self.owed(op_id, server, snapshot_id)
        if server.hooks is None or (server.hooks.pre_snapshot is None
                                    and server.hooks.post_snapshot is None):
            yield
            return
        # Marked before the pre hook starts: from here on the server is owed a post hook,
        # and an operation ended from here on holds its server until the post hook ran
        # (hold_for_owed_work in shared/lua/_lib.lua). Ended before the mark, it held
        # nothing: its pre hook must not run (the server may be another operation's).
        self.store.set_hook_pending(op_id, True)
        op = self.store.get_operation(op_id)
        if op is None or op.status not in ("queued", "running"):
            self.store.set_hook_pending(op_id, False)
            raise Cancelled("the operation ended before its pre_snapshot hook")
        outcome: Outcome = "failed"
        try:
            pre = self._run(op_id, server, snapshot_id, "pre_snapshot")
            if pre is not None and pre.timed_out:
                raise HookFailed(f"The pre_snapshot hook did not finish within its timeout of "
                                 f"{server.hooks.timeout} s and was killed; nothing was captured.")
            if pre is not None and pre.exit_code != 0:
                raise HookFailed(f"The pre_snapshot hook failed with exit code {pre.exit_code} "
                                 "(its output is on the operation); nothing was captured.")
            yield
            outcome = "succeeded"
        finally:
            post = self._run(op_id, server, snapshot_id, "post_snapshot", outcome)
            if post is not None and post.exit_code != 0:
                warnings.append("The post_snapshot hook failed; its output is on the operation.")
            self.store.set_hook_pending(op_id, False)
