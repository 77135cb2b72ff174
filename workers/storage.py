"""The repository as the service configures it: the engine, opened from the settings.

The engine reads no environment; this is where the settings (SNAPSHOTS_STORAGE_URL, the
AWS_* variables, the lock and reclaim timings) become its StorageOptions. The worker, the
catalog commands and the web process's readiness check all open storage through here.
"""

from __future__ import annotations

from shared.settings import Settings
from workers.engine import Engine
from workers.engine.model import StorageOptions


def storage_options(settings: Settings) -> StorageOptions:
    return StorageOptions(
        endpoint=settings.aws_endpoint_url, access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key, region=settings.aws_region,
        # this host's listing cache and per-state locks live beside its other local state
        cache_dir=str(settings.data_dir / "cache"),
        lock_settle=settings.lock_settle, lock_stale=settings.lock_stale,
        reclaim_margin=settings.reclaim_margin,
    )


def open_engine(settings: Settings, *, forking: bool = False) -> Engine:
    """Raises StorageUnavailable (naming the bucket) when an s3:// bucket cannot be used.
    forking: each capture and restore runs in a fresh child process (a worker's engine:
    workers/engine/forked.py)."""
    if forking:
        from workers.engine.forked import ForkingEngine

        return ForkingEngine(settings.storage_url, storage_options(settings))
    return Engine(settings.storage_url, storage_options(settings))


def storage_problem(settings: Settings) -> str | None:
    """Why the repository cannot be written right now, or None (the readiness check)."""
    if not settings.on_s3:
        return None  # file://: api/health.py probes the directory itself
    from workers.engine.model import EngineError
    from workers.engine.repository.s3backend import S3Backend

    backend = S3Backend.from_url(settings.storage_url, storage_options(settings))
    backend.retry_for = 5.0  # a readiness probe answers quickly
    try:
        backend.check()
    except EngineError as exc:
        return str(exc)
    finally:
        backend.close()
    return None if backend.writable() else f"bucket {backend.bucket!r} is not writable"
