"""Stored records → response bodies, and the JSON response class that encodes them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.services import services
from shared.hosts import ANY_HOST
from shared.records import OperationRecord, ServerRecord, SnapshotRecord, decode_record
from shared.responses import (
    ErrorInfo,
    LastRun,
    ListLinks,
    ListMeta,
    Operation,
    Schedule,
    Server,
    ServerRef,
    Snapshot,
)
from shared.schemas import CREATE_MESSAGE, SnapshotStatus, rfc3339
from shared.scripts import PageIndex, row_fields

_encode = msgspec.json.Encoder().encode

# Keyed by the status Literal, so a status the schema does not have is a type error.
SNAPSHOT_MESSAGES: dict[SnapshotStatus, str] = {
    "in_progress": CREATE_MESSAGE,
    "available": "Snapshot is available and can be restored.",
    "failed": "Snapshot creation failed; see error for the reason.",
}


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


_JSON_TYPE: Final = (b"content-type", b"application/json")
RawHeaders = list[tuple[bytes, bytes]]


def json_headers(body: bytes) -> RawHeaders:
    """The headers Response(body, media_type="application/json") makes, in its order."""
    return [(b"content-length", b"%d" % len(body)), _JSON_TYPE]


class RawJSON(Response):
    """A 200 with a JSON body already encoded: a Response without its generic header
    making (GET one's and a kept page's answer, on every request). ``raw_headers``, when
    given, are ``json_headers(body)`` made before (a kept page keeps them with its body);
    nothing changes them (uvicorn and Front copy a response's headers, never modify)."""

    media_type = "application/json"

    def __init__(self, body: bytes, raw_headers: RawHeaders | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = json_headers(body) if raw_headers is None else raw_headers


def snapshot_view(rec: SnapshotRecord) -> Snapshot:
    return Snapshot(
        id=rec.id,
        server=ServerRef(id=rec.server_id, name=rec.server_name),
        name=rec.name,
        description=rec.description,
        status=rec.status,
        size_mb=rec.size_mb if rec.status == "available" else None,
        progress=rec.progress,
        created_at=rfc3339(rec.created_at) or "",
        completed_at=rfc3339(rec.completed_at),
        message=SNAPSHOT_MESSAGES[rec.status],
        error=ErrorInfo(rec.error.code, rec.error.message) if rec.error else None,
        operation_id=rec.operation_id,
        protected=rec.protected,
        origin=rec.origin,
    )


# Rendered snapshots kept per web process: about 400 bytes each.
ROW_VIEWS: Final = 20_000
# Whole pages kept per web process (a page of 50 is about 20 KB), and for how long. Every
# change the service's scripts make bumps the listing version at once, so a page is never
# answered after a change they made; the time bounds how long a change made otherwise (a
# process of a version before listing versions, during a rolling upgrade) can go unseen.
PAGE_VIEWS: Final = 256
PAGE_TTL: Final = 1.0

Fetch = Callable[[list[str]], Awaitable[list[list[str]]]]
PageKey = tuple[object, ...]


class KeptPage(msgspec.Struct):
    version: str
    generation: int
    expires: float
    items: msgspec.Raw
    total: int
    next_cursor: int | None
    # The whole body and its headers, as last answered with ``link`` (the next link
    # depends on the request's path too): a kept page answers these, allocating nothing.
    link: str | None = None
    body: bytes = b""
    headers: RawHeaders = []

    def answer(self, link: str | None) -> Response:
        if not self.body or link != self.link:
            self.body, self.link = snapshot_list(self.items, self.total, link), link
            self.headers = json_headers(self.body)
        return RawJSON(self.body, self.headers)


class RowViews:
    """The JSON of each listed record, rendered once per version of it.

    The list script answers each record's id and ``rev``, the counter every write to a
    snapshot's hash bumps (shared/lua/_lib.lua snap_hset); the view is a function of the
    hash alone, so (id, rev) names its bytes. A snapshot unchanged since it was last listed
    costs a dict lookup here and one HGET in the script, instead of an HGETALL, a decode,
    a view and an encode; only the others are read, in one pipelined round trip. A hash
    read at a newer rev than the script saw is kept under its own rev; one without a rev
    (written before revs existed) is rendered every time. Per app and emptied whenever
    the hot-read connection to Redis is made again (a Redis restarted, perhaps from an
    older copy of its data, may give an old rev to other contents). The oldest entries
    go first when it is full.

    Whole pages too: the list script also answers the listing's version (a counter every
    change to what the account's listings show bumps, shared/lua/_lib.lua
    snap_listing_changed) and, asked with the version a page was kept under, answers only
    that nothing changed: the page's JSON is then answered as kept, for one small read in
    Redis and no per-record work here. A page is kept for PAGE_TTL seconds at most.
    """

    def __init__(self, render: Callable[[list[str]], bytes], size: int = ROW_VIEWS,
                 pages: int = PAGE_VIEWS, clock: Callable[[], float] = time.monotonic) -> None:
        self.render = render
        self.size = size
        self.pages = pages
        self.clock = clock
        self._views: dict[tuple[str, str], bytes] = {}
        self._pages: dict[PageKey, KeptPage] = {}
        self._generation = -1

    def _same_connection(self, generation: int) -> None:
        if generation != self._generation:
            self._views.clear()
            self._pages.clear()
            self._generation = generation

    def snapshot_json(self, fields: dict[str, str], generation: int) -> bytes:
        """What GET one answers for a snapshot's hash as HGETALL gave it: the same bytes a
        list shows for it, rendered once per (id, rev) and shared with the lists; b"" for
        a snapshot that does not exist or is deleted (the render's own verdict, kept with
        its bytes)."""
        self._same_connection(generation)
        key = (fields.get("id", ""), fields.get("rev", ""))
        views = self._views
        if key[1]:
            kept = views.get(key)
            if kept is not None:
                return kept
        body = self.render([x for kv in fields.items() for x in kv]) if fields else b""
        if key[0] and key[1]:
            if len(views) >= self.size:
                del views[next(iter(views))]
            views[key] = body
        return body

    def kept_page(self, key: PageKey, generation: int) -> KeptPage | None:
        """The page kept for this query (filters, cursor, limit), if still fresh; its
        version is what the list script is asked about."""
        self._same_connection(generation)
        page = self._pages.get(key)
        if page is None:
            return None
        if page.expires <= self.clock():
            del self._pages[key]
            return None
        return page

    def keep_page(self, key: PageKey, index: PageIndex, items: msgspec.Raw,
                  generation: int) -> None:
        """Keeps a page read at ``index.version``; not one with a record without a rev
        (written before revs: perhaps by a process that bumps no version either)."""
        if not index.version or generation != self._generation or not all(index.revs):
            return
        pages = self._pages
        pages.pop(key, None)
        if len(pages) >= self.pages:
            del pages[next(iter(pages))]
        pages[key] = KeptPage(index.version, generation, self.clock() + PAGE_TTL, items,
                              index.total, index.next_cursor)

    async def json_array(self, index: PageIndex, fetch: Fetch, generation: int) -> msgspec.Raw:
        """The page's views as one JSON array (a record gone in between is left out)."""
        self._same_connection(generation)
        views = self._views
        keys = list(zip(index.members, index.revs, strict=True))
        cached = [views.get(k) if k[1] else None for k in keys]
        missing = [k[0] for k, body in zip(keys, cached, strict=True) if body is None]
        fetched = iter(await fetch(missing)) if missing else iter(())
        out = []
        for body in cached:
            if body is None:
                row = next(fetched)
                body = self.render(row) if row else b""
                rev = _field(row, "rev")
                if rev:
                    if len(views) >= self.size:
                        del views[next(iter(views))]
                    views[(_field(row, "id"), rev)] = body
            if body:
                out.append(body)
        return msgspec.Raw(b"[" + b",".join(out) + b"]")


def _field(row: list[str], name: str) -> str:
    for i in range(0, len(row), 2):
        if row[i] == name:
            return row[i + 1]
    return ""


def _render_snapshot(row: list[str]) -> bytes:
    rec = decode_record(row_fields(row), SnapshotRecord)
    if rec is None or rec.deleted:
        # Deleted between the script's read and this one (not atomic): not listed.
        return b""
    return _encode(snapshot_view(rec))


def snapshot_views() -> RowViews:
    return RowViews(_render_snapshot)


def snapshot_list(items: msgspec.Raw, total: int, next_link: str | None) -> bytes:
    """The body of a SnapshotList whose items are already JSON: the same bytes as
    encoding ``SnapshotList`` (its fields, in its order)."""
    return _encode({
        "snapshots": items,
        "meta": ListMeta(total=total),
        "links": ListLinks(next=next_link),
    })


def operation_view(rec: OperationRecord) -> Operation:
    return Operation(
        id=rec.id,
        type=rec.type,
        status=rec.status,
        progress=rec.progress,
        snapshot_id=rec.snapshot_id,
        server_id=rec.server_id,
        created_at=rfc3339(rec.created_at) or "",
        started_at=rfc3339(rec.started_at),
        finished_at=rfc3339(rec.finished_at),
        error=rec.error,
        source_server_id=rec.source_server_id,
        safety_snapshot_id=rec.safety_snapshot_id,
        hooks=rec.hooks,
        host=None if rec.host == ANY_HOST else rec.host,
    )


def schedule_view(rec: ServerRecord) -> Schedule | None:
    sched = rec.schedule
    if sched is None:
        return None
    last = rec.last_run
    return Schedule(
        server_id=rec.id,
        cron=sched.cron,
        timezone=sched.timezone,
        retention=sched.retention,
        stop_server=sched.stop_server,
        next_run_at=rfc3339(rec.schedule_next),
        last_run=None if last is None else LastRun(
            at=rfc3339(last.at) or "", status=last.status, snapshot_id=last.snapshot_id,
            error=last.error,
        ),
        created_at=rfc3339(sched.created_at) or "",
        updated_at=rfc3339(sched.updated_at) or "",
    )


def server_view(rec: ServerRecord, admin: bool) -> Server:
    view = Server(
        id=rec.id, name=rec.name, status=rec.status, created_at=rfc3339(rec.created_at) or "",
        schedule=schedule_view(rec),
    )
    if admin:
        view.account = rec.account
        view.state = rec.state
        view.power = rec.power
        view.host = rec.host
        view.hooks = rec.hooks
    return view


def next_link(request: Request, cursor: int | None, **filters: object) -> str | None:
    """The next page, keeping the caller's filters and limit: a path such as
    ``/api/v1/snapshots/?limit=50&cursor=7``, or an absolute URL under
    ``SNAPSHOTS_PUBLIC_URL`` when that is set. Never built from the request's ``Host``
    header, which the caller controls (a link to ``http://evil.example/...`` handed to a
    script or a console would carry its token to whoever answers there)."""
    if cursor is None:
        return None
    query = {k: v for k, v in filters.items() if v is not None}
    query["cursor"] = cursor
    # The matched route's own path (Front gave it its trailing slash), with the root path
    # it is served under: a server following ASGI's current rule (uvicorn) has it in
    # ``path`` already, an older one only in ``root_path``.
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    if root and not path.startswith(root):
        path = root + path
    base = services(request).settings.public_url or ""
    return f"{base}{path}?{urlencode(query)}"
