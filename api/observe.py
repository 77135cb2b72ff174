"""Pure ASGI middleware, outermost: one access-log line and the HTTP metrics per request.

It wraps RequestContext, so it sees the final status of every answer, errors included,
and the route the router matched (``scope["route"]``, set by Starlette): the route's
template (``/api/v1/snapshots/{snapshot_id}/``), never the raw path, labels the metrics,
so ids do not make a series each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access = logging.getLogger("api.access")
UNMATCHED: Final = "unmatched"
HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# No *_created series: they double the output and multi-process mode has none.
disable_created_metrics()  # type: ignore[no-untyped-call]


class HttpMetrics:
    """The web process's own request metrics (one set per app)."""

    def __init__(self, multiproc_dir: Path | None) -> None:
        self.multiproc_dir = multiproc_dir
        # Single-process: our own registry (several apps in one test process do not
        # collide in the global one). Multi-process: values go to the shared files and
        # a scrape collects them all from there.
        self.registry = CollectorRegistry(auto_describe=True)
        own = None if multiproc_dir else self.registry
        self.requests = Counter(
            "snapshots_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=own,
        )
        self.latency = Histogram(
            "snapshots_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template (event streams: their length).",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=own,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiproc_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def route_of(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route the router matched; for a request refused before the
    router (401, 413), the route it would have matched."""
    route: Any = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] != Match.NONE), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Observe:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if nothing was sent at all

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - started
            method: str = scope["method"]
            route = route_of(scope, self.routes)
            self.metrics.observe(method, route, status, seconds)
            principal = scope.get("principal")
            access.info(
                "%s %s %d %.1fms", method, scope["path"], status, seconds * 1000,
                extra={k: v for k, v in {
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "request_id": scope.get("state", {}).get("request_id"),
                    "account": getattr(principal, "account", None),
                }.items() if v is not None},
            )
