"""The webhook endpoints (admin): register, list, delete, and read delivery attempts.

Deliveries are made by the workers (``workers/webhooks.py``), which read the ``events``
stream through the consumer group ``webhooks``. Registering a webhook creates that group
if it is missing, at the stream's current end, so every event from the registration on is
delivered even while no worker runs.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response

from api.errors import NotFound
from api.inputs import path_id, query_id, query_limit
from api.services import services
from api.views import JSON, next_link
from shared import events
from shared import webhooks as wh
from shared.responses import ListLinks, ListMeta
from shared.schemas import rfc3339
from shared.scripts import as_dict


def _view(fields: dict[str, str], with_secret: bool = False) -> wh.Webhook:
    view = wh.Webhook(
        id=int(fields["id"]),
        account=fields["account"],
        url=fields["url"],
        created_at=rfc3339(int(fields["created_at"])) or "",
    )
    if with_secret:
        view.secret = fields["secret"]
    return view


async def create(request: Request, body: wh.WebhookCreate) -> Response:
    r = services(request).store.redis
    try:
        await r.xgroup_create(events.STREAM, wh.GROUP, id="$", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    webhook_id = int(await r.incr("seq:webhook"))
    # Redis's clock, as the events' stream ids it is compared with (workers/webhooks.py
    # dispatch): by this web host's, one ahead dropped the account's events for as long.
    now = await services(request).store.now()
    fields: dict[str, str] = {
        "id": str(webhook_id),
        "account": body.account,
        "url": body.url,
        "secret": wh.new_secret(),
        "created_at": str(int(now)),
        # Events older than the webhook are not its business (the group may be older).
        "created_ms": str(int(now * 1000)),
    }
    async with r.pipeline(transaction=True) as pipe:
        # (redis-py's Mapping type is invariant in its keys; a dict[str, str] is fine.)
        pipe.hset(wh.webhook_key(webhook_id), mapping=cast(Any, fields))
        pipe.zadd(wh.ALL_INDEX, {str(webhook_id): webhook_id})
        pipe.zadd(wh.account_index(body.account), {str(webhook_id): webhook_id})
        await pipe.execute()
    view = _view(fields, with_secret=True)
    return JSON(view, 201,
                headers={"Location": f"/api/v1/webhooks/{webhook_id}/"})


async def _get(request: Request, webhook_id: int) -> dict[str, str]:
    fields = as_dict(await services(request).store.redis.hgetall(wh.webhook_key(webhook_id)))
    if not fields:
        raise NotFound(f"Webhook {webhook_id} not found.")
    return fields


async def list_all(request: Request) -> Response:
    limit = query_limit(request)
    cursor = query_id(request, "cursor")
    r = services(request).store.redis
    top = f"({cursor}" if cursor is not None else "+inf"
    ids: list[Any] = await r.zrevrangebyscore(wh.ALL_INDEX, top, "-inf", start=0,
                                              num=limit + 1)
    total = int(await r.zcard(wh.ALL_INDEX))
    async with r.pipeline(transaction=False) as pipe:
        for i in ids[:limit]:
            pipe.hgetall(wh.webhook_key(int(i)))
        rows: list[Any] = await pipe.execute()
    items = [_view(as_dict(f)) for f in rows if f]
    more = len(ids) > limit and items
    return JSON(wh.WebhookList(
        webhooks=items, meta=ListMeta(total=total),
        links=ListLinks(next=next_link(request, items[-1].id if more else None, limit=limit)),
    ))


async def get_one(request: Request) -> Response:
    return JSON(_view(await _get(request, path_id(request, "webhook_id"))))


async def delete(request: Request) -> Response:
    webhook_id = path_id(request, "webhook_id")
    fields = await _get(request, webhook_id)
    r = services(request).store.redis
    async with r.pipeline(transaction=True) as pipe:
        pipe.delete(wh.webhook_key(webhook_id))
        pipe.zrem(wh.ALL_INDEX, str(webhook_id))
        pipe.zrem(wh.account_index(fields["account"]), str(webhook_id))
        # Deliveries expire on their own (a week); pending ones stop at their next attempt.
        pipe.delete(wh.deliveries_index(webhook_id))
        await pipe.execute()
    return Response(status_code=204)


async def deliveries(request: Request) -> Response:
    """The webhook's deliveries, newest first, each with every attempt made so far."""
    webhook_id = path_id(request, "webhook_id")
    await _get(request, webhook_id)
    limit = query_limit(request)
    r = services(request).store.redis
    index = wh.deliveries_index(webhook_id)
    event_ids: list[Any] = await r.zrevrange(index, 0, limit - 1)
    total = int(await r.zcard(index))
    async with r.pipeline(transaction=False) as pipe:
        for eid in event_ids:
            pipe.hgetall(wh.delivery_key(webhook_id, eid))
            pipe.lrange(wh.attempts_key(webhook_id, eid), 0, -1)
        rows: list[Any] = await pipe.execute()
    items: list[wh.Delivery] = []
    for eid, fields, attempts in zip(event_ids, rows[::2], rows[1::2], strict=True):
        d = as_dict(fields)
        if not d:
            continue  # expired
        nxt = d.get("next_attempt_at", "")
        items.append(wh.Delivery(
            event_id=eid,
            event_type=d.get("event_type", ""),
            status=msgspec.convert(d.get("status", "pending"), wh.DeliveryStatus),
            attempts=wh.decode_attempts(attempts),
            created_at=rfc3339(int(d.get("created_at", "0"))) or "",
            next_attempt_at=rfc3339(int(nxt)) if nxt.isdigit() else None,
        ))
    return JSON(wh.DeliveryList(deliveries=items, meta=ListMeta(total=total),
                                links=ListLinks(next=None)))
