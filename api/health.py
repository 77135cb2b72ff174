"""Service endpoints without a token: liveness and readiness."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Final

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from api.services import services
from api.views import JSON
from shared.responses import Health, Readiness
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


# How long a storage verdict answers /readyz. The probe is work (on s3:// a client made,
# two GETs, a PUT and a DELETE; a thread of the pool that enqueues operations held for up
# to its 5 s of retries), and /readyz needs no token: without this, every request made
# one, so a flood of them billed object-store writes and starved the enqueues.
STORAGE_VERDICT_TTL: Final = 5.0


class StorageVerdict:
    """The storage's readiness, probed at most once per STORAGE_VERDICT_TTL by one caller
    at a time; the others wait for that probe's answer."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._lock = asyncio.Lock()
        self._until = -math.inf
        self._problem: str | None = None
        self.probes = 0

    async def problem(self) -> str | None:
        async with self._lock:
            if self.clock() >= self._until:
                self._problem = await anyio.to_thread.run_sync(storage_problem, self.settings)
                self.probes += 1
                self._until = self.clock() + STORAGE_VERDICT_TTL
            return self._problem


def storage_verdict(request: Request) -> StorageVerdict:
    """The app's StorageVerdict (made at its first /readyz)."""
    state = request.app.state
    verdict: StorageVerdict | None = getattr(state, "storage_verdict", None)
    if verdict is None:
        verdict = state.storage_verdict = StorageVerdict(services(request).settings)
    return verdict


async def readyz(request: Request) -> Response:
    svc = services(request)
    try:
        redis_ok = await svc.store.ping()
    except Exception:
        redis_ok = False
    problem = await storage_verdict(request).problem()
    storage_ok = problem is None
    ready = redis_ok and storage_ok
    body = Readiness(status="ok" if ready else "unavailable", redis=redis_ok, storage=storage_ok,
                     storage_error=problem)
    return JSON(body, 200 if ready else 503)
