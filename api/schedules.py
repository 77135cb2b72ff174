"""A server's schedule: PUT (create or replace), GET, DELETE /servers/{id}/schedule/.

The body is validated by ``ScheduleSet`` (cron fields, IANA zone, retention at least 1);
the retention's upper bound is the per-server limit, a setting, so it is checked here.
The runs themselves are started by the workers' scheduler (workers/scheduler.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api.auth import principal
from api.errors import InvalidRequest, NotFound, from_refusal
from api.inputs import path_id
from api.services import services
from api.views import JSON, schedule_view
from shared import cron
from shared.schemas import ScheduleSet
from shared.scripts import TransitionRefused


async def _answer(request: Request, server_id: int) -> Response:
    rec = await services(request).store.get_server(server_id)
    who = principal(request)
    if rec is None or (not who.is_admin and rec.account != who.account):
        raise NotFound(f"Server {server_id} not found.")
    view = schedule_view(rec)
    if view is None:
        raise NotFound(f"Server {server_id} has no schedule.")
    return JSON(view)


async def put(request: Request, body: ScheduleSet) -> Response:
    who = principal(request)
    server_id = path_id(request, "server_id")
    svc = services(request)
    limit = svc.settings.max_per_server
    if body.retention.total() > limit:
        raise InvalidRequest(
            f"retention: the counts add up to {body.retention.total()}, more than the "
            f"per-server limit of {limit} snapshots"
        )
    # The next slot by Redis's clock, which the scheduler on every host goes by: by this
    # web host's, a clock behind made a slot already past (an off-slot run at once), one
    # ahead skipped the coming slot.
    next_at = cron.next_after(body.cron, body.timezone, await svc.store.now())
    try:
        await svc.store.set_schedule(
            account=who.account_filter, server_id=server_id, body=body, next_at=next_at
        )
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    return await _answer(request, server_id)


async def get_one(request: Request) -> Response:
    return await _answer(request, path_id(request, "server_id"))


async def delete(request: Request) -> Response:
    who = principal(request)
    server_id = path_id(request, "server_id")
    try:
        await services(request).store.delete_schedule(
            account=who.account_filter, server_id=server_id
        )
    except TransitionRefused as refused:
        raise from_refusal(refused.code, refused.message) from None
    return Response(status_code=204)
