"""Service endpoints without a token: liveness and readiness."""

from __future__ import annotations

import os
import tempfile

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from api.services import services
from api.views import JSON
from shared.schemas import Health, Readiness
from shared.settings import Settings

_OK = Health(status="ok")


async def healthz(request: Request) -> Response:
    return JSON(_OK)


def storage_problem(settings: Settings) -> str | None:
    """None when the repository can be written, else why not (the 503's reason)."""
    if settings.on_s3:
        # The bucket is reached through the engine's own backend (one S3 client setup).
        from workers.storage import storage_problem as bucket_problem

        return bucket_problem(settings)
    if storage_writable(settings):
        return None
    return f"storage directory {settings.storage_path} is not writable"


def storage_writable(settings: Settings) -> bool:
    """Whether a file can really be created in the storage directory (not just mode bits)."""
    try:
        path = settings.storage_path
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".readyz-", dir=path)
        os.close(fd)
        os.unlink(name)
        return True
    except OSError:
        return False


async def readyz(request: Request) -> Response:
    svc = services(request)
    try:
        redis_ok = await svc.store.ping()
    except Exception:
        redis_ok = False
    problem = await anyio.to_thread.run_sync(storage_problem, svc.settings)
    storage_ok = problem is None
    ready = redis_ok and storage_ok
    body = Readiness(status="ok" if ready else "unavailable", redis=redis_ok, storage=storage_ok,
                     storage_error=problem)
    return JSON(body, 200 if ready else 503)
