"""The HTTP metrics and the access-log line of each request (api/middleware.py's Front
calls both once the answer is sent, with its final status).

The route the router matched (``scope["route"]``, set by Starlette), the route's template
(``/api/v1/snapshots/{snapshot_id}/``), never the raw path, labels the metrics, so ids do
not make a series each.
"""

from __future__ import annotations

import logging
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
from starlette.types import Scope

from shared import logs

access = logging.getLogger("api.access")
UNMATCHED: Final = "unmatched"
CHILDREN_MAX: Final = 4096
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

        # The label children by (method, route, status), looked up once: ``labels()``
        # validates, joins and locks on every call. Bounded, as a method is the caller's.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= CHILDREN_MAX:
                self._children.clear()
            children = (self.requests.labels(method, route, str(status)),
                        self.latency.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

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


_ACCESS_MSG: Final = "%s %s %d %.1fms"


def access_line(method: str, path: str, route: str, status: int, seconds: float,
                request_id: str, account: str | None) -> None:
    """The request's access-log line, every field as a key (``LOG_FORMAT=json``).

    Handed to ``logs.hot_line`` rather than ``Logger.info``: that would walk the stack to
    find the caller (``findCaller``) and copy ``extra`` key by key, a few microseconds a
    request for a file name and line nobody reads on an access line; and with the text
    format the line is formatted without making a record, or the fields it does not show.
    """
    if not access.isEnabledFor(logging.INFO):
        return
    ms = seconds * 1000
    ids = {"request_id": request_id}
    if account is not None:
        ids["account"] = account

    def fields() -> dict[str, Any]:
        return {"method": method, "route": route, "status": status,
                "duration_ms": round(ms, 2)}

    logs.hot_line(access, logging.INFO, __file__, _ACCESS_MSG, (method, path, status, ms),
                  ids, fields)
