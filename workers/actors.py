"""The Dramatiq actors: thin shells that validate their message and hand it to `Jobs`.

Run with `dramatiq workers.actors`. The broker is configured in `shared.broker`, the one
place both the API and the workers import, before any actor is declared.
"""

from __future__ import annotations

import logging
import threading
from functools import cache
from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq.middleware import Shutdown

from shared import logs
from shared.broker import HEARTBEATS_KEY, enqueue_operation, make_broker
from shared.hosts import DEFAULT_HOST, queue_name
from shared.messages import OperationMessage
from shared.settings import Settings
from shared.store import Store
from workers.engine import Engine
from workers.engine.engine import WORKER_MODULES
from workers.engine.workerproc import zygote
from workers.jobs import Jobs, Lease
from workers.periodic import ReaperThread, SchedulerThread
from workers.power import driver_for
from workers.reaper import Reaper
from workers.scheduler import Scheduler
from workers.storage import open_engine

log = logging.getLogger(__name__)

settings = Settings.from_env()
if settings.on_s3:
    # now, in the main thread, before any S3 request: the engine's reader and writer
    # processes are forks of it (workers/engine/workerproc/zygote.py)
    zygote.start(WORKER_MODULES)
# Dramatiq's worker process logs into a pipe to its main process: keep that handler, in
# our format (LOG_FORMAT), so jobs' lines carry their operation's ids.
logs.configure(settings.log_format)
broker = make_broker(settings, worker=True)
dramatiq.set_broker(broker)

# A capture of a large server may take hours: Dramatiq's 10-minute default would kill it.
TIME_LIMIT_MS = 24 * 3600 * 1000
# Attempts count every delivery, SIGKILLed ones included; Dramatiq's retries only count
# raised exceptions, so both stop at the same number.
MAX_ATTEMPTS = 5
_OPTIONS: dict[str, Any] = {
    # The queue of this worker's host: a worker consumes only the queues declared in its
    # process, so it never even sees another host's operations.
    "queue_name": queue_name(settings.worker_host),
    "time_limit": TIME_LIMIT_MS,
    "max_retries": MAX_ATTEMPTS - 1,
    "min_backoff": int(settings.retry_backoff * 1000),
    "max_backoff": 120_000,
    # SIGTERM interrupts the job so the worker exits within the platform's 30 s; the
    # message is retried elsewhere and the capture resumes from what it already stored.
    "notify_shutdown": True,
}


# One Store and one Engine per process, built under a lock: the reaper thread and the
# first jobs ask at the same moment, and two LocalBackends in one process name their temp
# files alike (see tests/faults/test_engine_bugs.py).
_build = threading.RLock()


def store() -> Store:
    with _build:
        return _store()


def engine() -> Engine:
    with _build:
        return _engine()


@cache
def _store() -> Store:
    return Store(redis.Redis.from_url(settings.effective_redis_url), settings)


@cache
def _engine() -> Engine:
    # Each capture and restore in a fresh process: the worker keeps no operation's heap.
    return open_engine(settings, forking=True)


def jobs() -> Jobs:
    with _build:
        return _jobs()


@cache
def _jobs() -> Jobs:
    # The lease names this process by its broker id: the id whose heartbeat the broker
    # watches, so "this worker is dead" means the same thing to both.
    lease = Lease(
        broker.broker_id,
        HEARTBEATS_KEY,
        int(settings.heartbeat_timeout * 1000),
        settings.worker_host,
    )
    return Jobs(store(), engine(), driver_for, MAX_ATTEMPTS, lease, enqueue)


def enqueue(op_type: str, operation_id: int) -> None:
    """The workers' one way to send an operation's message (scheduled runs, retention
    deletes, a stray message handed on): to the queue of the operation's own host, which
    its record names (its server's host; see shared.broker.enqueue_operation)."""
    op = store().get_operation(operation_id)
    if op is not None:
        enqueue_operation(broker, op_type, operation_id, op.host)


def reaper() -> Reaper:
    return Reaper(store(), engine(), broker, driver_for, settings, jobs())


def scheduler() -> Scheduler:
    return Scheduler(store(), enqueue, settings)


class Announce(dramatiq.Middleware):
    """Says at each worker process's start what it runs, so a host's journal shows its
    host, its queues and its repository: a misspelt SNAPSHOTS_HOST or a fleet host left on
    file:// is seen at once, not when operations stay queued."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        queues = sorted(q for q in broker.get_declared_queues()
                        if not q.endswith((".DQ", ".XQ")))
        log.info("worker of host %r consumes %s; repository %s",
                 settings.worker_host, ", ".join(queues), settings.storage_url)
        if not settings.on_s3 and settings.worker_host != DEFAULT_HOST:
            log.warning(
                "SNAPSHOTS_HOST=%s with a file:// repository: this host's snapshots are "
                "on this host's disk only (not shared or deduplicated with other hosts, "
                "deleted and cloned only here); a fleet shares one s3:// bucket",
                settings.worker_host)


class WarmUp(dramatiq.Middleware):
    """Opens the store and the engine, and loads the jobs' scripts into Redis, as the
    worker process boots, in a thread of its own: else the first job did it between the
    consumer's fetch and the claim (a file:// worker's engine imports every module its
    operations' children use, ~0.1 s of CPU, more on a cold page cache; the claim script
    compiles in 5-12 ms), so the first pick-up after a start took 47-85 ms against 5-9 for
    the next ones (bench/pickup.py); the reaper opens the engine only at its first pass,
    15 s after the boot. An engine that cannot be opened now (an s3:// bucket away) is
    opened by the first job, which reports the error as before."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        threading.Thread(target=self._open, name="warm-up", daemon=True).start()

    @staticmethod
    def _open() -> None:
        try:
            # the scripts of a job's claim and end (Redis caches them until it restarts)
            store().preload(*_JOB_SCRIPTS)
        except redis.RedisError as exc:  # loaded at their first call, as before
            log.info("scripts not preloaded at start: %s", exc)
        try:
            jobs()
        except Exception as exc:  # the first job opens it again and fails with it
            log.warning("engine not opened at start (the first operation tries again): %s", exc)


_JOB_SCRIPTS = ("claim_operation", "report_progress", "complete_create", "complete_restore",
                "complete_delete", "fail_operation")


# Every worker process runs a reaper and a scheduler thread (workers/reaper.py, scheduler.py).
broker.add_middleware(ReaperThread("reaper", reaper, settings.reaper_interval))
broker.add_middleware(SchedulerThread("scheduler", scheduler, settings.scheduler_interval))
broker.add_middleware(Announce())
broker.add_middleware(WarmUp())


def _operation_id(**kwargs: object) -> int | None:
    try:
        return msgspec.convert(kwargs, OperationMessage).operation_id
    except msgspec.ValidationError as exc:
        log.error("dropping a malformed message %r: %s", kwargs, exc)
        return None


def _run(**kwargs: object) -> None:
    if (op_id := _operation_id(**kwargs)) is None:
        return
    try:
        with logs.log_context(operation_id=op_id):
            jobs().run(op_id)
    except Shutdown:
        # The worker is stopping (SIGTERM, Ctrl-C under make run) and the job gave its
        # lease back: a Retry sends the message again, without the error and traceback
        # Dramatiq logs for an unexpected exception.
        log.info("operation %s interrupted by the worker's shutdown; it will resume", op_id)
        raise dramatiq.Retry() from None


@dramatiq.actor(actor_name="snapshot_create", **_OPTIONS)
def snapshot_create(**kwargs: object) -> None:
    _run(**kwargs)


@dramatiq.actor(actor_name="snapshot_restore", **_OPTIONS)
def snapshot_restore(**kwargs: object) -> None:
    _run(**kwargs)


@dramatiq.actor(actor_name="snapshot_delete", **_OPTIONS)
def snapshot_delete(**kwargs: object) -> None:
    _run(**kwargs)

from workers import webhooks  # noqa: E402, F401  (registers the webhook actor; needs broker)
