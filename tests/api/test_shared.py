"""shared/: settings from the environment, the queue message, the Store with a bytes client."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from pathlib import Path

import dramatiq
import msgspec
import pytest
import redis

from shared.broker import make_broker, operation_message
from shared.messages import OperationMessage
from shared.schemas import ServerCreate, ServerState, SnapshotCreate
from shared.settings import Settings, SettingsError
from shared.store import Store


def test_settings_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.port == 8000 and s.redis_url is None and s.admin_token is None
    assert s.data_dir == tmp_path / "data" and s.data_dir.is_absolute()
    assert s.storage_url == f"file://{tmp_path / 'data' / 'repository'}"
    assert s.max_per_server == 5 and s.worker_processes == 1 and s.worker_threads == 2
    assert s.effective_redis_url == f"unix://{tmp_path / 'data' / 'redis.sock'}"
    assert s.worker_host == "default"
    assert Settings.from_env({"SNAPSHOTS_HOST": " hv-01.fra1 "}).worker_host == "hv-01.fra1"


def test_settings_from_env(tmp_path: Path) -> None:
    s = Settings.from_env({
        "PORT": "9000", "REDIS_URL": "redis://h:1/2", "SNAPSHOTS_DATA_DIR": str(tmp_path),
        "SNAPSHOTS_STORAGE_URL": "file:///srv/repo", "SNAPSHOTS_ADMIN_TOKEN": "t0ken-admin",
        "SNAPSHOTS_MAX_PER_SERVER": "7", "WORKER_PROCESSES": "3", "WORKER_THREADS": "4",
        "SNAPSHOTS_OPERATION_DEADLINE": "60", "SNAPSHOTS_WEBHOOK_ATTEMPTS": "3",
        "SNAPSHOTS_WEBHOOK_BACKOFF": "0.5", "SNAPSHOTS_EVENTS_KEEPALIVE": "2",
        "SNAPSHOTS_RETRY_BACKOFF": "0.25", "SNAPSHOTS_REDIS_OUTAGE_WAIT": "5",
    })
    assert (s.port, s.redis_url, s.admin_token, s.max_per_server) == (
        9000, "redis://h:1/2", "t0ken-admin", 7)
    assert s.storage_path == Path("/srv/repo")
    assert (s.worker_processes, s.worker_threads, s.operation_deadline) == (3, 4, 60.0)
    assert (s.webhook_attempts, s.webhook_backoff, s.events_keepalive) == (3, 0.5, 2.0)
    assert s.retry_backoff == 0.25 and Settings.from_env({}).retry_backoff == 2.0
    assert s.redis_outage_wait == 5.0 and Settings.from_env({}).redis_outage_wait == 60.0


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "http"), ("SNAPSHOTS_MAX_PER_SERVER", "0"), ("WORKER_THREADS", "-1"),
    ("REDIS_URL", "localhost:6379"), ("SNAPSHOTS_STORAGE_URL", "ftp://bucket"),
    ("SNAPSHOTS_STORAGE_URL", "s3://Bad_Bucket/x"), ("SNAPSHOTS_LOCK_STALE", "0"),
    ("SNAPSHOTS_OPERATION_DEADLINE", "soon"), ("SNAPSHOTS_WEBHOOK_ATTEMPTS", "0"),
    ("SNAPSHOTS_WEBHOOK_BACKOFF", "-1"), ("SNAPSHOTS_EVENTS_KEEPALIVE", "often"),
    ("SNAPSHOTS_RETRY_BACKOFF", "0"), ("SNAPSHOTS_REDIS_OUTAGE_WAIT", "a minute"),
    ("SNAPSHOTS_HOST", "HV-01"), ("SNAPSHOTS_HOST", "hv 01"), ("SNAPSHOTS_HOST", "-hv"),
])
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_only_settings_reads_the_environment() -> None:
    """One place reads settings: no other module of api/, shared/ or workers/ looks up a
    variable (handing the whole environment on to a child process is not a read)."""
    root = Path(__file__).resolve().parents[2]
    lookup = re.compile(r"os\.getenv\(|os\.environ\.get\(|os\.environ\[|environ\.get\(")
    readers = [
        str(p.relative_to(root))
        for d in ("api", "shared", "workers")
        for p in sorted((root / d).rglob("*.py"))
        if lookup.search(p.read_text())
    ]
    assert readers == [], readers


def test_admin_token_generated_once_and_persisted(tmp_path: Path) -> None:
    s = Settings.from_env({"SNAPSHOTS_DATA_DIR": str(tmp_path)})
    first, generated = s.with_admin_token()
    assert generated and first.admin_token and first.admin_token.startswith("snp_")
    assert (tmp_path / "admin_token").stat().st_mode & 0o777 == 0o600
    again, generated = s.with_admin_token()
    assert not generated and again.admin_token == first.admin_token


def test_operation_message_matches_the_actor_contract(settings: Settings) -> None:
    msg = operation_message("snapshot.restore", 42, "hv-01")
    assert msg.actor_name == "snapshot_restore" and msg.queue_name == "host.hv-01"
    assert msg.kwargs == {"operation_id": 42} and msg.args == ()
    decoded = dramatiq.Message.decode(msg.encode())
    assert msgspec.convert(decoded.kwargs, OperationMessage).operation_id == 42
    with pytest.raises(ValueError):
        operation_message("snapshot.explode", 1, "hv-01")
    with pytest.raises(ValueError, match="host"):
        operation_message("snapshot.create", 1, "HV 01")
    broker = make_broker(settings)
    assert broker.heartbeat_timeout == int(settings.heartbeat_timeout * 1000) == 30_000
    assert broker.get_declared_queues() == set()  # the API consumes nothing
    worker = make_broker(replace(settings, worker_host="hv-02"), worker=True)
    assert worker.get_declared_queues() == {"host.hv-02"}  # its host's queue, no other


def test_store_works_with_a_bytes_client(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.effective_redis_url)  # no decode_responses
    store = Store(client, settings)
    sid = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="image", path="/d"))
    )
    snap, op = store.create_snapshot(
        account=None, body=SnapshotCreate(server_id=sid, name="n", description="é")
    )
    rec = store.begin_operation(op)
    assert rec is not None and rec.status == "running" and rec.attempts == 1
    assert store.begin_operation(op) is not None  # redelivery: still running, attempts 2
    assert store.get_operation(op).attempts == 2  # type: ignore[union-attr]
    assert not store.is_cancelled(op)
    store.report_progress(op, 30)
    assert store.get_snapshot(snap).progress == 30  # type: ignore[union-attr]
    assert store.complete_create(op, 2.0, ["xattr skipped"])
    assert not store.complete_create(op, 2.0, [])  # second time: already done
    assert store.begin_operation(op) is None
    page = store.list_snapshots(account="acme")
    assert page.total == 1 and page.items[0].description == "é"
    assert store.get_server(sid).active_op is None  # type: ignore[union-attr]
    assert store.ping()
    client.close()


def test_fail_operation_with_truthful_server_status(settings: Settings, store: Store) -> None:
    sid = store.create_server(
        ServerCreate(name="s", account="acme", state=ServerState(kind="image", path="/d"))
    )
    snap, op = store.create_snapshot(account=None, body=SnapshotCreate(server_id=sid, name="n"))
    store.begin_operation(op)
    store.complete_create(op, 1.0, [])
    rop = store.start_restore(account=None, snapshot_id=snap, start_after=False)
    store.begin_operation(rop)
    store.report_progress(rop, 50)
    assert store.fail_operation(rop, "start_failed", "could not start", server_status="stopped")
    assert store.get_server(sid).status == "stopped"  # type: ignore[union-attr]
    assert not store.fail_operation(rop, "again", "no")  # terminal
    assert store.get_snapshot(snap).in_use_by is None  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        store.set_server_power(sid, "restoring")


def test_busy_worker_heartbeat_is_kept_fresh(settings: Settings) -> None:
    import time

    from shared.broker import NAMESPACE, BrokerHeartbeat
    from shared.hosts import live_workers

    broker = make_broker(settings)
    beat = BrokerHeartbeat("hv-01", interval=0.05)
    beat.after_worker_boot(broker, None)
    try:
        key = f"{NAMESPACE}:__heartbeats__"
        deadline = time.monotonic() + 5
        while broker.client.zscore(key, broker.broker_id) is None:
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.02)
        first = broker.client.zscore(key, broker.broker_id)
        time.sleep(0.2)
        assert (broker.client.zscore(key, broker.broker_id) or 0) > (first or 0)
        # The same beat says which host the process belongs to.
        assert live_workers(broker.client, settings.heartbeat_timeout) == {"hv-01": 1}
    finally:
        beat.before_worker_shutdown(broker, None)
    # A clean shutdown leaves at once, rather than after the heartbeat timeout.
    assert live_workers(broker.client, settings.heartbeat_timeout) == {}


def test_env_for_round_trips_settings(settings: Settings) -> None:
    from tests.support.env import env_for

    assert Settings.from_env(env_for(settings)) == settings


def test_both_stores_take_the_same_arguments() -> None:
    """Store (workers, tools) and AsyncStore (the API) run the same scripts; a method both
    have takes the same parameters, by the same names, in the same way (no swapped ids)."""
    from shared.async_store import AsyncStore

    # dir, not vars: Store's reads are StoreReads' (shared/storereads.py)
    common = {n for n in dir(Store) if not n.startswith("_")} & set(dir(AsyncStore))
    assert {"create_snapshot", "start_restore", "delete_snapshot", "list_snapshots"} <= common
    for name in sorted(common - {"from_settings"}):
        sync, aio = inspect.signature(getattr(Store, name)), inspect.signature(
            getattr(AsyncStore, name))
        assert list(sync.parameters.values()) == list(aio.parameters.values()), name


def test_broker_liveness_goes_by_redis_clock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq's maintenance requeues the unacked messages of every worker whose heartbeat
    is older than the timeout, and took "now" and the heartbeats from each caller's clock:
    a web process or reaper a minute ahead (every enqueue may run it) put a live worker's
    running job back on its queue (a duplicate, refused busy, and the job's own message then
    gone), and a worker a minute behind had its running jobs requeued by everyone else."""
    import time

    from dramatiq.common import current_millis

    from shared.broker import HEARTBEATS_KEY, BrokerHeartbeat

    tuned = replace(settings, heartbeat_timeout=30.0, maintenance_chance=1_000_000)
    queue = "hv-skew"
    live = make_broker(tuned)
    live.declare_queue(queue)
    live.enqueue(dramatiq.Message(queue_name=queue, actor_name="a", args=(), kwargs={},
                                  options={}))
    assert len(live.do_fetch(queue, 1)) == 1  # running on the live worker, unacked
    ahead = make_broker(tuned)
    monkeypatch.setattr("dramatiq.brokers.redis.current_millis",
                        lambda: current_millis() + 120_000)  # this caller's clock ahead
    assert ahead.do_fetch(queue, 1) == []  # its maintenance ran; the job stays where it is
    # A worker dead by Redis's clock still has its message put back.
    seconds, _ = live.client.time()
    live.client.zadd(HEARTBEATS_KEY, {live.broker_id: seconds * 1000 - 60_000})
    assert len(ahead.do_fetch(queue, 1)) == 1
    # The busy worker's own beat (BrokerHeartbeat) is on Redis's clock too.
    skewed = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: skewed)
    beat = BrokerHeartbeat("hv-skew", interval=60)
    beat.after_worker_boot(live, None)
    try:
        deadline = time.monotonic() + 5
        while (score := live.client.zscore(HEARTBEATS_KEY, live.broker_id)) is None or (
                score < seconds * 1000 - 30_000):
            assert time.monotonic() < deadline, "no heartbeat written"
            time.sleep(0.02)
        seconds, _ = live.client.time()
        assert abs(score - seconds * 1000) < 5_000, (score, seconds)
    finally:
        beat.before_worker_shutdown(live, None)
