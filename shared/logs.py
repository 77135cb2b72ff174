"""Logging for every process: readable text by default, one JSON object a line with
``LOG_FORMAT=json`` (SPEC section 7).

The ids a line is about (``request_id``, ``operation_id``, ``account``, ``server_id``)
live in a context variable, set once where they become known (the request middleware, a
job's start) and added to every line logged below that point, in any module. Fields of
one line go in ``extra={...}``; the JSON format keeps them all as keys, the text format
appends the ids as ``key=value``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any, Final, TextIO, cast

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS: Final = ("text", "json")
CONTEXT_FIELDS: Final = ("request_id", "operation_id", "account", "server_id")

_context: ContextVar[dict[str, Any]] = ContextVar("log_context", default={})  # noqa: B039


def _with(fields: dict[str, Any]) -> dict[str, Any]:
    # A loop, not a comprehension: this runs twice a request, and a comprehension is a
    # function call of its own on Python 3.11.
    context = {**_context.get()}
    for key, value in fields.items():
        if value is not None:
            context[key] = value
    return context


def bind(**fields: Any) -> None:
    """Adds fields to the current context (a request's, a job thread's) until it ends."""
    _context.set(_with(fields))


def enter(**fields: Any) -> Token[dict[str, Any]]:
    """``log_context`` without the context manager, for the request path: the caller
    passes the answer to ``leave`` in a ``finally``."""
    return _context.set(_with(fields))


def leave(token: Token[dict[str, Any]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields on every line logged inside the block (threads and tasks keep their own)."""
    token = enter(**fields)
    try:
        yield
    finally:
        leave(token)


# The fields of a hot record that are the same on every record of this process, taken
# from a real LogRecord (so every attribute a formatter may use is there), per logger name.
_TEMPLATES: dict[tuple[str, int, str], dict[str, Any]] = {}
_VARYING: Final = ("msg", "args", "created", "msecs", "relativeCreated", "thread", "threadName",
                   "taskName")
os.register_at_fork(after_in_child=_TEMPLATES.clear)  # process id, process name
# Python 3.12 added the asyncio task's name to LogRecord (``taskName``): it is the
# caller's, like the thread, never a template's.
_TASK_NAMES: Final = sys.version_info >= (3, 12)


def _task_name() -> str | None:
    """What LogRecord.__init__ sets as ``taskName`` on Python 3.12+."""
    if not getattr(logging, "logAsyncioTasks", True):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None
    return None if task is None else task.get_name()


def hot_record(name: str, level: int, pathname: str, msg: str,
               args: tuple[Any, ...]) -> logging.LogRecord:
    """``logging.LogRecord(name, level, pathname, 0, msg, args, None)`` at a quarter of
    the cost, for a line logged on every request: the constant fields (the level's name,
    file and module names from the path, the process id, which is a system call) are
    copied from a template made once; the time, thread and asyncio task are the caller's."""
    key = (name, level, pathname)
    template = _TEMPLATES.get(key)
    if template is None:
        template = dict(logging.LogRecord(name, level, pathname, 0, "", (), None).__dict__)
        for field in _VARYING:
            template.pop(field, None)
        _TEMPLATES[key] = template
    record = logging.LogRecord.__new__(logging.LogRecord)
    fields = record.__dict__
    fields.update(template)
    now = time.time()
    fields["msg"] = msg
    fields["args"] = args
    fields["created"] = now
    fields["msecs"] = int((now - int(now)) * 1000) + 0.0
    fields["relativeCreated"] = (now - _START) * 1000
    fields["thread"] = threading.get_ident()
    fields["threadName"] = threading.current_thread().name
    if _TASK_NAMES:
        fields["taskName"] = _task_name()
    return record


# When logging was imported, as LogRecord's relativeCreated counts from it.
_START: Final[float] = logging._startTime  # type: ignore[attr-defined]


def _lone_text_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The handler that alone would see a record of ``logger`` at ``level``, when that is a
    LineHandler formatting text whose filters only add the context (ContextFilter), and
    the logger has no filter of its own: Logger.handle's and callHandlers' own walk."""
    if logger.filters:
        return None
    found: LineHandler | None = None
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if level < handler.level:
                continue
            if (found is not None or type(handler) is not LineHandler
                    or type(handler.formatter) is not TextFormatter):
                return None
            for f in handler.filters:  # a loop, not any(): no generator made per line
                if type(f) is not ContextFilter:
                    return None
            found = handler
        node = node.parent if node.propagate else None
    return found


def hot_line(logger: logging.Logger, level: int, pathname: str, msg: str,
             args: tuple[Any, ...], ids: dict[str, Any],
             fields: Callable[[], dict[str, Any]]) -> None:
    """``logger.handle`` of a record of ``msg % args`` carrying ``ids`` (its fields among
    CONTEXT_FIELDS) and ``fields()`` (the others), as ``extra`` would, for a line logged
    on every request; the caller checked the level. When the one handler it would reach
    is a LineHandler formatting text (the default set-up, see ``configure``), the line is
    formatted directly: the same text as the record would give (which shows the ids, not
    the other fields), at a fraction of the cost: no LogRecord, no handler chain, and
    ``fields`` never called. Any other set-up (JSON, a test capturing records, another
    handler) gets the record."""
    handler = _lone_text_handler(logger, level)
    if handler is None:
        record = hot_record(logger.name, level, pathname, msg, args)
        record.__dict__.update(fields())
        record.__dict__.update(ids)
        logger.handle(record)
        return
    formatter = cast(TextFormatter, handler.formatter)
    if handler.filters:
        # ContextFilter: the context's fields, below the record's own.
        ids = {**_context.get(), **ids}
    text = formatter.format_fields(time.time(), logging.getLevelName(level), logger.name,
                                   msg % args, ids)
    with handler.lock:  # type: ignore[union-attr]
        handler.queue(text + handler.terminator, level)


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
        self._stamp = (-1, "")  # (second, its text): one strftime a second, not a line

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._asctime(record.created, datefmt)

    def _asctime(self, created: float, datefmt: str | None) -> str:
        second = int(created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = (second, time.strftime(datefmt or "%H:%M:%S", self.converter(second)))
            self._stamp = stamp
        return stamp[1]

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format for this one format string, spelled out: its generic
        # path (usesTime, the style object, %-formatting the whole record's dict) is most
        # of the cost of an access line, one per request.
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = f"{record.asctime} {record.levelname:<5} {record.name}: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = line + ("" if line[-1:] == "\n" else "\n") + record.exc_text
        if record.stack_info:
            line = line + ("" if line[-1:] == "\n" else "\n") + self.formatStack(
                record.stack_info)
        return _with_ids(line, [(k, getattr(record, k, None)) for k in CONTEXT_FIELDS])

    def format_fields(self, created: float, levelname: str, name: str, message: str,
                      ids: dict[str, Any]) -> str:
        """What ``format`` makes of a record without exception or stack, made at
        ``created``, whose attributes (its fields and the context's) are ``ids``: the same
        text, without a LogRecord to make first (``hot_line``)."""
        line = f"{self._asctime(created, self.datefmt)} {levelname:<5} {name}: {message}"
        if "\n" in line:
            return _with_ids(line, [(k, ids.get(k)) for k in CONTEXT_FIELDS])
        for k in CONTEXT_FIELDS:
            v = ids.get(k)
            if v is not None:
                line += f" {k}={v}"
        return line


def _with_ids(line: str, ids: list[tuple[str, Any]]) -> str:
    # The message already says what happened; the ids say what it is about.
    extras = [f"{k}={v}" for k, v in ids if v is not None]
    if not extras:
        return line
    head, sep, trace = line.partition("\n")
    return " ".join([head, *extras]) + sep + trace


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, in a thread running an event loop (the web process), writes
    the lines of one loop iteration together: one write per iteration for every request
    answered in it, not one per line. A warning or worse, and any line of a thread without
    a loop (a worker's, a helper thread's), goes out at once. A process killed outright
    loses at most the lines of its last iteration; an exit flushes them (logging.shutdown).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except RecursionError:  # pragma: no cover - as logging.StreamHandler
            raise
        except Exception:
            self.handleError(record)
            return
        self.queue(text, record.levelno)

    def queue(self, text: str, levelno: int) -> None:
        """Writes a formatted line (with its terminator), at once or with the rest of this
        loop iteration's lines; the caller holds the handler's lock, as ``emit``'s does."""
        self._lines.append(text)
        if levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                if len(self._lines) == 1:
                    loop.call_soon(self.flush)
                return
        self._write()

    def _write(self) -> None:
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self.stream.write(text)
        self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()


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
        root.addHandler(LineHandler(stream or sys.stderr))
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
