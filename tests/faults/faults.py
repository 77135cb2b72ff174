"""Helpers of the fault tests: observe the repository and the state store from outside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import redis

from shared.settings import Settings
from shared.store import Store
from tests.e2e.service import Service, wait_until
from tests.support.streams import entries
from workers.engine import Engine


def objects(repo: Path) -> dict[str, tuple[int, int]]:
    """Every stored data object of the repository (chunks, packs; not manifests, locks or
    top-level metadata): relative path → (inode, size)."""
    out: dict[str, tuple[int, int]] = {}
    if not repo.exists():
        return out
    for top in repo.iterdir():
        if not top.is_dir() or top.name in ("snapshots", "locks", "tmp"):
            continue
        for entry in top.rglob("*"):
            if entry.is_file() and not entry.name.startswith("."):
                st = entry.stat()
                out[str(entry.relative_to(repo))] = (st.st_ino, st.st_size)
    return out


def stored_bytes(svc: Service, snapshot_id: int) -> int:
    """What the capture that committed this snapshot newly wrote (its manifest says)."""
    return Engine(f"file://{svc.repository}").repo.get_header(snapshot_id).stored_bytes


def unthrottle(svc: Service) -> None:
    """Lifts the fault throttle (FAULT_TEST_MBPS) of the service's processes: called once
    the kill has landed, when the rest of the test (the resumed job, the restore that
    checks it) needs no slow job any more (tests/faults/throttle/sitecustomize.py)."""
    Path(svc.env["FAULT_TEST_UNTHROTTLED"]).touch()


def store_for(svc: Service) -> Store:
    settings = Settings.from_env(svc.env)
    return Store(redis.Redis.from_url(svc.redis.url, decode_responses=True), settings)


def wait_progress(client: httpx.Client, snapshot_id: int, timeout: float = 60) -> int:
    def moved() -> int:
        snap: dict[str, Any] = client.get(f"/snapshots/{snapshot_id}/").json()
        assert snap["status"] == "in_progress", snap
        return int(snap["progress"])

    return int(wait_until(moved, timeout=timeout, interval=0.05, what="capture progress"))


def restore_has_data(state: Path) -> bool:
    """A restore of `state` is writing big files beside it: into its staging tree (a
    rebuild) or into the work directory of a patch (see workers/engine/restore/patch.py)."""
    for name in os.listdir(state.parent):
        if name.startswith(f".{state.name}.restore-") and "journal" not in name:
            try:
                return any(p.is_file() and p.stat().st_size > (1 << 20)
                           for p in (state.parent / name).rglob("*"))
            except OSError:
                return False
    return False


def enqueue_again(svc: Service, op_type: str, op_id: int, times: int = 1) -> None:
    """Sends the operation's message again, as a redelivery or a duplicate would."""
    from shared.broker import enqueue_operation, make_broker

    broker = make_broker(Settings.from_env(svc.env))
    op = store_for(svc).get_operation(op_id)
    assert op is not None
    try:
        for _ in range(times):
            enqueue_operation(broker, op_type, op_id, op.host)
    finally:
        broker.close()


def events(svc: Service, event_type: str, snapshot_id: int) -> int:
    """How many events of a type the store emitted for a snapshot."""
    client = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    try:
        return len([
            1 for _id, fields in entries(client)
            if fields.get("type") == event_type and fields.get("snapshot_id") == str(snapshot_id)
        ])
    finally:
        client.close()


def tree_diff(
    expected: dict[bytes, dict[str, Any]], actual: dict[bytes, dict[str, Any]]
) -> list[str]:
    """What differs between two `treecmp.describe` results, field by field."""
    problems: list[str] = []
    for path in sorted(set(expected) | set(actual)):
        a, b = expected.get(path), actual.get(path)
        if a is None or b is None:
            problems.append(f"{path!r}: {'missing' if b is None else 'unexpected'}")
            continue
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                problems.append(f"{path!r}: {k} {a.get(k)!r} != {b.get(k)!r}")
    return problems
