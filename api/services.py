"""What the handlers share: settings, the state store, the broker, the token cache and
the HTTP metrics and the event hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request

from api.auth import TokenCache
from api.eventhub import EventHub
from api.observe import HttpMetrics
from shared.async_store import AsyncStore
from shared.broker import enqueue_operation
from shared.settings import Settings

if TYPE_CHECKING:  # api.views imports this module
    from api.views import RowViews


@dataclass(slots=True)
class Services:
    settings: Settings
    store: AsyncStore
    broker: Any  # dramatiq RedisBroker (untyped)
    tokens: TokenCache
    http_metrics: HttpMetrics
    events: EventHub
    # Rendered snapshots of listings, by (id, rev): api/views.py RowViews.
    snapshot_views: RowViews

    async def enqueue(self, op_type: str, operation_id: int, host: str) -> None:
        """Sends an operation's message to its host's queue (``host``: the operation's,
        as the script that made it answered; see shared.broker.enqueue_operation)."""
        # Dramatiq's broker is synchronous; a worker thread keeps the event loop free.
        # It runs after the state transition, so a crash in between leaves a queued
        # operation for the reaper, never a message without state.
        await anyio.to_thread.run_sync(
            enqueue_operation, self.broker, op_type, operation_id, host
        )


def services(request: Request) -> Services:
    s: Services = request.app.state.services
    return s
