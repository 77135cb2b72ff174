"""``--wait``: follow the event stream until an operation ends, with a progress bar.

Order matters: the stream is opened first and the operation read second, so an operation
that ended before the stream opened is seen in the read, and one that ends later is seen
in the stream (the service pins the stream's start before it answers). A dropped stream
is reopened with ``Last-Event-ID``, so nothing in between is missed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Final

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from snapctl.client import EXIT_UNREACHABLE, Api, ApiFailure, failure

TERMINAL_OPS: Final = frozenset({"succeeded", "failed", "cancelled"})
# Longer than the service's 15 s keep-alive: silence past this means the stream is dead.
READ_TIMEOUT: Final = 45.0
RECONNECTS: Final = 5


def _frames(resp: httpx.Response) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(id, event type, data) of each message; a comment (keep-alive) yields empty ones,
    so the caller gets a chance to check its deadline while nothing happens."""
    fields: dict[str, str] = {}
    for line in resp.iter_lines():
        if line.startswith(":"):
            yield "", "", {}
        elif line == "":
            if "data" in fields:
                try:
                    data = json.loads(fields["data"])
                except ValueError:
                    data = {}
                yield fields.get("id", ""), fields.get("event", ""), data
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def _concerns(data: dict[str, Any], op_id: int, snapshot_id: int | None) -> bool:
    if data.get("operation_id") == op_id:
        return True
    # Deleting a snapshot that is being created cancels its creation.
    return (data.get("type") == "snapshot.deleted" and snapshot_id is not None
            and data.get("snapshot_id") == snapshot_id)


def wait_operation(api: Api, op_id: int, snapshot_id: int | None, server_id: int | None,
                   show: bool, label: str, timeout: float | None = None) -> dict[str, Any]:
    """Follows the operation until it ends; answers the final operation record."""
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        TimeElapsedColumn(), console=console, disable=not show,
                        transient=False)
    deadline = None if timeout is None else time.monotonic() + timeout
    last_id = ""
    with progress:
        task = progress.add_task(label, total=100)
        for _attempt in range(RECONNECTS + 1):
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            params = {"server_id": server_id} if server_id is not None else {}
            try:
                with api.http.stream("GET", "/events/", headers=headers, params=params,
                                     timeout=httpx.Timeout(10.0, read=READ_TIMEOUT)) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise failure(resp)
                    op = api.get(f"/operations/{op_id}/")
                    progress.update(task, completed=op.get("progress", 0))
                    if op["status"] in TERMINAL_OPS:
                        return _finish(progress, task, op)
                    for event_id, etype, data in _frames(resp):
                        last_id = event_id or last_id
                        if not _concerns({**data, "type": etype}, op_id, snapshot_id):
                            if deadline is not None and time.monotonic() > deadline:
                                break
                            continue
                        if "progress" in data.get("data", {}):
                            progress.update(task, completed=data["data"]["progress"])
                        if etype.endswith((".available", ".failed", ".succeeded", ".deleted")):
                            # Not always the end: a restore's safety snapshot becomes
                            # available on the way. The operation says.
                            op = api.get(f"/operations/{op_id}/")
                            if op["status"] in TERMINAL_OPS:
                                return _finish(progress, task, op)
            except httpx.TransportError:
                time.sleep(1)  # the stream dropped; reopen from the last id
            if deadline is not None and time.monotonic() > deadline:
                raise ApiFailure(EXIT_UNREACHABLE,
                                 f"operation {op_id} did not end within {timeout:g} s")
    raise ApiFailure(EXIT_UNREACHABLE, f"lost the event stream while waiting for {op_id}")


def _finish(progress: Progress, task: Any, op: dict[str, Any]) -> dict[str, Any]:
    if op["status"] == "succeeded":
        progress.update(task, completed=100)
    return op
