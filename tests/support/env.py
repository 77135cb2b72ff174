"""Environment variables for starting real web/worker processes against test settings."""

from __future__ import annotations

import os

from shared.settings import Settings


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """os.environ plus the variables that make ``Settings.from_env()`` equal ``settings``."""
    env = dict(os.environ)
    env.update({
        "SNAPSHOTS_DATA_DIR": str(settings.data_dir),
        "SNAPSHOTS_STORAGE_URL": settings.storage_url,
        "SNAPSHOTS_MAX_PER_SERVER": str(settings.max_per_server),
        "WORKER_PROCESSES": str(settings.worker_processes),
        "WORKER_THREADS": str(settings.worker_threads),
        "SNAPSHOTS_OPERATION_DEADLINE": str(settings.operation_deadline),
        "PORT": str(settings.port),
    })
    if settings.redis_url is not None:
        env["REDIS_URL"] = settings.redis_url
    if settings.admin_token is not None:
        env["SNAPSHOTS_ADMIN_TOKEN"] = settings.admin_token
    env.update(extra)
    return env
