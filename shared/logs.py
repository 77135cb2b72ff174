"""Logging for every process: readable text by default, one JSON object a line with
``LOG_FORMAT=json`` (SPEC section 7).

The ids a line is about (``request_id``, ``operation_id``, ``account``, ``server_id``)
live in a context variable, set once where they become known (the request middleware, a
job's start) and added to every line logged below that point, in any module. Fields of
one line go in ``extra={...}``; the JSON format keeps them all as keys, the text format
appends the ids as ``key=value``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Final, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS: Final = ("text", "json")
CONTEXT_FIELDS: Final = ("request_id", "operation_id", "account", "server_id")

_context: ContextVar[dict[str, Any]] = ContextVar("log_context", default={})  # noqa: B039


def bind(**fields: Any) -> None:
    """Adds fields to the current context (a request's, a job thread's) until it ends."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields on every line logged inside the block (threads and tasks keep their own)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context's fields onto each record (without overriding ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``12:00:01 INFO  api.access: GET /api/v1/snapshots/ 200 3.1ms request_id=… account=acme``
    (the ids of the context after the message)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # The message already says what happened; the ids say what it is about.
        extras = [
            f"{k}={v}" for k in CONTEXT_FIELDS if (v := getattr(record, k, None)) is not None
        ]
        if not extras:
            return line
        head, sep, trace = line.partition("\n")
        return " ".join([head, *extras]) + sep + trace


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        # uvicorn's copy of each message with terminal colours is noise in a log store.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


def formatter(fmt: str) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    return json_formatter() if fmt == "json" else TextFormatter()


def configure(fmt: str, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Sets the root logger's format, keeping the handlers a runner already installed
    (Dramatiq's worker processes log into a pipe to their main process); with none, one
    handler on ``stream`` (stderr). uvicorn's own handlers are removed so its lines go
    through the root, in the same format."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(stream or sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter(fmt))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    # api.access writes one line per request, with the route and the ids: uvicorn's own
    # access line would only repeat it.
    logging.getLogger("uvicorn.access").disabled = True
