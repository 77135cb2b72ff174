"""Reading a Redis stream in tests, typed (redis-py types XRANGE's answer loosely)."""

from __future__ import annotations

import json
from typing import Any

import redis

from shared.scripts import as_dict, text


def entries(r: redis.Redis, stream: str = "events") -> list[tuple[str, dict[str, str]]]:
    """The stream's entries, oldest first, as (id, fields) text whatever the client decodes."""
    raw: Any = r.xrange(stream)
    return [(text(entry_id), as_dict(fields)) for entry_id, fields in raw]


def of_type(r: redis.Redis, etype: str) -> list[dict[str, Any]]:
    """The events of one type, oldest first: their fields, ``id`` and ``data`` decoded."""
    return [{**fields, "id": entry_id, "data": json.loads(fields.get("data") or "{}")}
            for entry_id, fields in entries(r) if fields.get("type") == etype]
