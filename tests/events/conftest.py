"""A live uvicorn server in a thread around ``create_app(settings)``: SSE needs a real
HTTP server (httpx's ASGI transport buffers whole responses), but not the worker."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.httpguard import DeadlineHttp
from shared.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.support.ports import free_port


@dataclass
class Live:
    url: str
    admin: dict[str, str]

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )


def _serve(settings: Settings, **config: Any) -> Iterator[Live]:
    # Short keep-alives so the test sees several without waiting 15 s.
    # A tiny per-stream queue, so that a burst of events overflows it.
    fast = dataclasses.replace(settings, events_keepalive=0.3, events_queue=5)
    port = free_port()
    uv_config = uvicorn.Config(
        create_app(fast), host="127.0.0.1", port=port, log_level="warning",
        timeout_graceful_shutdown=1, lifespan="on", **config,
    )
    server = uvicorn.Server(uv_config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Live(url=f"http://127.0.0.1:{port}", admin={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    """uvicorn's own HTTP protocol: every frame goes through a stream's pump (ASGI send)."""
    yield from _serve(settings)


@pytest.fixture
def guarded(settings: Settings) -> Iterator[Live]:
    """The Procfile's protocol (api/httpguard.py DeadlineHttp): idle streams get their
    frames written by the hub at once (BodyWriter)."""
    yield from _serve(settings, http=DeadlineHttp)
