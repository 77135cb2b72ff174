"""Reading what callers send: JSON bodies (capped, typed) and path/query parameters.

Everything that can be wrong answers 400/413/415 before any state is touched.
"""

from __future__ import annotations

import re
from typing import Final, TypeVar

import anyio
import msgspec
from starlette.requests import Request

from api.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from api.services import services

MAX_BODY: Final = 64 * 1024
MAX_ID: Final = 2**53 - 1

T = TypeVar("T")

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<f>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<f>[^`]+)`$")
_NAMED = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def field_message(err: msgspec.ValidationError) -> str:
    """msgspec's message, rephrased to start with the field it is about."""
    m = _AT.match(str(err))
    msg = m["msg"] if m else str(err)
    path = (m["path"] or "").lstrip(".") if m else ""
    if missing := _MISSING.match(msg):
        return f"{_join(path, missing['f'])}: this field is required"
    if unknown := _UNKNOWN.match(msg):
        return f"{_join(path, unknown['f'])}: unknown field"
    if _NAMED.match(msg):
        return msg
    return f"{path or 'body'}: {msg}"


async def read_body(request: Request) -> bytes:
    """The body, refusing (and no longer reading) anything over 64 KiB, or anything that
    has not arrived within ``SNAPSHOTS_BODY_TIMEOUT`` seconds (408: a client trickling a
    body, or a chunked body that never ends, holds no request for longer)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidRequest("Content-Length: not a number")
        if int(length) > MAX_BODY:
            raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    timeout = services(request).settings.body_timeout
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise PayloadTooLarge()
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout:g} s (SNAPSHOTS_BODY_TIMEOUT)."
        ) from None
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json"


async def decode_body(request: Request, cls: type[T], optional: bool = False) -> T:
    """The body decoded as ``cls``; an absent body is ``cls()`` when ``optional``."""
    body = await read_body(request)
    if not body.strip():
        if optional:
            return msgspec.json.decode(b"{}", type=cls)
        raise InvalidRequest("body: a JSON object is required")
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType()
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(field_message(exc)) from None
    except msgspec.DecodeError:
        raise InvalidRequest("body: not valid JSON") from None


def positive_id(raw: str, name: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise InvalidRequest(f"{name}: must be a positive integer")
    value = int(raw)
    if not 1 <= value <= MAX_ID:
        raise InvalidRequest(f"{name}: must be a positive integer")
    return value


def path_id(request: Request, name: str) -> int:
    return positive_id(request.path_params[name], name)


def query_param(request: Request, name: str) -> str | None:
    """A query parameter's raw value; a request without a query string has none (and
    then nothing is parsed: the common list, ``GET /api/v1/snapshots/``)."""
    if not request.scope["query_string"]:
        return None
    return request.query_params.get(name)


def query_id(request: Request, name: str) -> int | None:
    raw = query_param(request, name)
    return None if raw is None or raw == "" else positive_id(raw, name)


def query_limit(request: Request, default: int = 50, maximum: int = 200) -> int:
    raw = query_param(request, "limit")
    if raw is None or raw == "":
        return default
    # The length first: int() of more than 4300 digits raises ValueError (a 500).
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16 or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit: must be an integer from 1 to {maximum}")
    return int(raw)


def query_choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = query_param(request, name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise InvalidRequest(f"{name}: must be one of {', '.join(choices)}")
    return raw
