"""A worker's transitions wait out a Redis outage in place (shared/outage.py) and apply
once: against a real redis-server that the test kills and starts again, and against the
session's server with the answer of a script that did apply lost on the way back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.outage import Patience, is_outage
from shared.schemas import PowerNone, ServerCreate, ServerState, SnapshotCreate
from shared.settings import Settings
from shared.store import Store
from tests.conftest import make_settings
from tests.support.redis_proc import RedisProcess
from tests.support.streams import of_type

HB = "test:heartbeats"


def _create(store: Store, tmp_path: Path) -> tuple[int, int]:
    server_id = store.create_server(ServerCreate(
        name="s", account="acme", state=ServerState(kind="directory", path=str(tmp_path)),
        power=PowerNone()))
    return store.create_snapshot(account=None, body=SnapshotCreate(server_id=server_id,
                                                                   name="n"))


class LostAnswer:
    """A script whose first run applies in Redis, then its answer is lost (the connection
    drops as Redis goes down): what a retried transition must not apply twice."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.runs = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.runs += 1
        answer = self.script(**kwargs)
        if self.runs == 1:
            raise redis.ConnectionError("Connection closed by server.")
        return answer


def _lose_first_answer(store: Store, name: str) -> LostAnswer:
    lost = LostAnswer(store._scripts[name])
    store._scripts[name] = lost  # type: ignore[assignment]
    return lost


def test_a_commit_retried_after_it_applied_is_done_once(
    store: Store, redis_client: redis.Redis, tmp_path: Path
) -> None:
    snap_id, op_id = _create(store, tmp_path)
    assert store.claim_operation(op_id, "w/1", "w", HB, 3000)[0] == "ok"
    lost = _lose_first_answer(store, "complete_create")
    assert store.complete_scheduled(op_id, 1.5, [], []) == []  # done, not "not active"
    assert lost.runs == 2
    op, snap = store.get_operation(op_id), store.get_snapshot(snap_id)
    assert op is not None and op.status == "succeeded"
    assert snap is not None and snap.status == "available"
    assert len(of_type(redis_client, "snapshot.available")) == 1


def test_a_failure_retried_after_it_applied_is_recorded_once(
    store: Store, redis_client: redis.Redis, tmp_path: Path
) -> None:
    _snap, op_id = _create(store, tmp_path)
    assert store.claim_operation(op_id, "w/1", "w", HB, 3000)[0] == "ok"
    _lose_first_answer(store, "fail_operation")
    assert store.fail_operation(op_id, "storage_full", "full")
    op = store.get_operation(op_id)
    assert op is not None and op.status == "failed" and op.error is not None
    assert op.error.code == "storage_full"
    assert len(of_type(redis_client, "snapshot.failed")) == 1


def test_a_refusal_on_the_first_try_stays_a_refusal(store: Store, tmp_path: Path) -> None:
    """Only a retry that finds its own end state counts as applied: a capture whose
    operation the reaper failed meanwhile is still told no."""
    _snap, op_id = _create(store, tmp_path)
    assert store.claim_operation(op_id, "w/1", "w", HB, 3000)[0] == "ok"
    assert store.fail_operation(op_id, "deadline_exceeded", "too long")
    _lose_first_answer(store, "complete_create")
    assert store.complete_scheduled(op_id, 1.0, [], []) is None


def test_a_claim_retried_after_it_applied_counts_one_attempt(
    store: Store, tmp_path: Path
) -> None:
    _snap, op_id = _create(store, tmp_path)
    store.redis.zadd(HB, {"w": int(time.time() * 1000)})
    _lose_first_answer(store, "claim_operation")
    code, rec = store.claim_operation(op_id, "w/1", "w", HB, 3000)
    assert code == "ok" and rec is not None and rec.attempts == 1


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisProcess(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def _own_store(server: RedisProcess, tmp_path: Path, wait: float) -> Store:
    settings: Settings = make_settings(server.url, tmp_path / "data", redis_outage_wait=wait)
    return Store(redis.Redis.from_url(server.url, decode_responses=True), settings)


def test_a_commit_during_a_redis_restart_waits_and_applies_once(
    own_redis: RedisProcess, tmp_path: Path
) -> None:
    store = _own_store(own_redis, tmp_path, wait=30)
    snap_id, op_id = _create(store, tmp_path)
    assert store.claim_operation(op_id, "w/1", "w", HB, 3000)[0] == "ok"
    own_redis.kill()
    answer: list[Any] = []
    commit = threading.Thread(
        target=lambda: answer.append(store.complete_scheduled(op_id, 2.0, [], [])))
    commit.start()
    time.sleep(2)  # the outage: the commit retries meanwhile
    assert commit.is_alive() and not answer
    with pytest.raises(redis.ConnectionError):
        store.report_progress(op_id, 50)  # progress is not waited for: dropped
    with pytest.raises(redis.ConnectionError):  # nor a lease given back on a shutdown
        store.release_operation(op_id, "w/2")
    own_redis.start()  # from its append-only file: the claim survived
    commit.join(30)
    assert answer == [[]]
    snap = store.get_snapshot(snap_id)
    assert snap is not None and snap.status == "available" and snap.size_mb == 2.0
    assert len(of_type(store.redis, "snapshot.available")) == 1


def test_a_commit_gives_up_after_the_outage_wait(
    own_redis: RedisProcess, tmp_path: Path
) -> None:
    store = _own_store(own_redis, tmp_path, wait=0.5)
    _snap, op_id = _create(store, tmp_path)
    own_redis.kill()
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        store.complete_scheduled(op_id, 1.0, [], [])
    assert 0.3 < time.monotonic() - started < 5


def test_only_outages_are_waited_for() -> None:
    calls: list[float] = []
    patience = Patience(60, sleep=calls.append)

    def wrong_type() -> None:
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(redis.ResponseError):
        patience.call("x", wrong_type)
    assert calls == []  # a bug, not an outage: raised at once
    assert is_outage(redis.exceptions.BusyLoadingError("LOADING Redis is loading"))
    assert is_outage(redis.exceptions.ReadOnlyError("READONLY You can't write"))
    assert is_outage(redis.ResponseError("MASTERDOWN Link with MASTER is down"))
    assert not is_outage(redis.exceptions.NoScriptError("NOSCRIPT"))

