"""GET /metrics: Prometheus text format (SPEC section 7).

Two sources, one answer:
- this process's HTTP metrics (prometheus_client; with ``PROMETHEUS_MULTIPROC_DIR`` set,
  the files of every web process on the host, prometheus_client's multi-process mode);
- the fleet's job metrics, read from Redis at scrape time (shared/metrics.py): operations
  by type and status with their durations, bytes read, stored and deduplicated, queue
  depth per queue, live workers per host and the repository's size. Every web process
  reports the same values for these; aggregate them with ``max``, not ``sum``.

With ``SNAPSHOTS_METRICS_TOKEN`` set, a scrape needs ``Authorization: Bearer <it>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from api.errors import Unauthorized
from api.services import services
from shared import metrics as fleet
from shared.settings import Settings

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def fleet_families(data: dict[str, Any]) -> Iterator[Metric]:
    """The Redis-side numbers (``shared.metrics.snapshot``) as Prometheus metric families."""
    fields: dict[str, str] = data["fields"]
    ops = CounterMetricFamily(
        "snapshots_operations", "Operations that ended, by type and status.",
        labels=["type", "status"],
    )
    durations: dict[str, dict[str, float]] = {}
    for key, value in sorted(fields.items()):
        part = key.split(":")
        if part[0] == "ops" and len(part) == 3:
            ops.add_metric([part[1], part[2]], float(value))
        elif part[0] == "dur" and len(part) == 3:
            durations.setdefault(part[1], {})[part[2]] = float(value)
    yield ops
    hist = HistogramMetricFamily(
        "snapshots_operation_duration_seconds",
        "Seconds from an operation's start to its end, by type.", labels=["type"],
    )
    for op_type, values in sorted(durations.items()):
        count = values.get("count", 0.0)
        buckets = [(f"{le:g}", values.get(f"{le:g}", 0.0)) for le in fleet.DURATION_BUCKETS]
        hist.add_metric([op_type], [*buckets, ("+Inf", count)], values.get("sum", 0.0))
    yield hist
    helps = {
        "read": "Bytes captures read from servers' states.",
        "stored": "Bytes captures newly wrote to the repository (compressed).",
        "captured": "Bytes of state captured (apparent size).",
        "deduplicated": "Bytes captured that were not stored again (dedup and compression).",
    }
    for kind in fleet.BYTE_KINDS:
        yield CounterMetricFamily(
            f"snapshots_{kind}_bytes", helps[kind], value=float(fields.get(f"bytes:{kind}", 0))
        )
    yield GaugeMetricFamily(
        "snapshots_repository_bytes", "Size of the repository's objects.",
        value=float(fields.get("repository_bytes", 0)),
    )
    depth = GaugeMetricFamily(
        "snapshots_queue_depth", "Messages waiting in each queue (.DQ: retries waiting).",
        labels=["queue"],
    )
    for queue, n in data["queues"].items():
        depth.add_metric([queue], float(n))
    yield depth
    workers = GaugeMetricFamily(
        "snapshots_live_workers", "Worker processes with a fresh heartbeat, by host.",
        labels=["host"],
    )
    for host, n in sorted(data["live_workers"].items()):
        workers.add_metric([host], float(n))
    yield workers


def check_token(request: Request, settings: Settings) -> None:
    if settings.metrics_token is None:
        return
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.metrics_token.encode()
    ):
        raise Unauthorized("GET /metrics needs 'Bearer <SNAPSHOTS_METRICS_TOKEN>'.")


async def endpoint(request: Request) -> Response:
    svc = services(request)
    check_token(request, svc.settings)
    data = await fleet.snapshot_async(svc.store.redis, svc.settings.heartbeat_timeout)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(fleet_families(data)))
    body = svc.http_metrics.render() + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE)
