"""A bare Starlette app: the baseline of bench/api.py.

It answers every GET with one fixed JSON body (by default the exact bytes our API answered
for GET /api/v1/snapshots/{id}/, passed in the file named by BARE_BODY_FILE), on the same
uvicorn settings as our API.

    BARE_BODY_FILE=body.json .venv/bin/uvicorn --app-dir bench bare_app:app --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_DEFAULT = (
    b'{"id":802,"server":{"id":12345,"name":"web-server-01"},"name":"before-update-snapshot",'
    b'"description":"Snapshot before system update","status":"in_progress","size_mb":null,'
    b'"progress":0,"created_at":"2025-01-16T16:15:00Z","completed_at":null,"message":"Snapshot '
    b'is being created. This may take 3-10 minutes depending on server size.","error":null,'
    b'"operation_id":8}'
)


def _body() -> bytes:
    path = os.environ.get("BARE_BODY_FILE")
    return Path(path).read_bytes() if path else _DEFAULT


BODY = _body()


async def fixed(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", fixed, methods=["GET"])])
