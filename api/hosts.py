"""GET /api/v1/hosts/ (admin): the fleet's hosts, from the workers' heartbeats.

An operation queued for a host nobody consumes (a typo in a server's ``host`` or in a
worker's ``SNAPSHOTS_HOST``) would otherwise wait unseen: here that host shows with
``workers: 0`` and its ``queued`` count, and a worker's misspelt host shows with no servers.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.services import services
from api.views import JSON
from shared.responses import Host, HostList
from shared.schemas import rfc3339


async def list_all(request: Request) -> Response:
    hosts = await services(request).store.hosts()
    return JSON(HostList(hosts=[
        Host(name=h.name, workers=h.workers, last_seen=rfc3339(h.last_seen), servers=h.servers,
             queued=h.queued)
        for h in hosts
    ]))
