"""The s3:// backend's retry policy, in one place: which failures are worth another try,
how long to keep trying, and the errors that name the bucket when it is not.

Transient failures (timeouts, connection errors, 5xx, 408 and 429 throttling) are retried
with exponential back-off (0.2 s doubling to 10 s) for up to `retry_for` seconds; the
backend's writes are idempotent (content-addressed, or whole-object replaces), so a PUT is
retried too. Refused credentials fail at once, naming the bucket and the variables to check.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)

from ..model import StorageUnavailable

T = TypeVar("T")
_STATUS = re.compile(r"status code: (\d{3})")
_NETWORK = re.compile(r"error sending request|timed? ?out|connect|reset|broken pipe|closed|"
                      r"incomplete|end of file|retries", re.I)


def transient(err: BaseException) -> bool:
    """Is another try of the request that raised err worth making?"""
    if isinstance(err, (NotFoundError, AlreadyExistsError, PreconditionError,
                        PermissionDeniedError, UnauthenticatedError)):
        return False
    if isinstance(err, (TimeoutError, ConnectionError)):
        return True
    if not isinstance(err, BaseError):
        return False
    m = _STATUS.search(str(err))
    if m is None:  # connection refused/reset, timeouts: no HTTP status at all
        return _NETWORK.search(str(err)) is not None
    status = int(m.group(1))
    return status >= 500 or status in (408, 429)


def _denied(bucket: str, what: str, e: BaseException) -> StorageUnavailable:
    return StorageUnavailable(
        f"bucket {bucket!r} refuses {what}: access denied; check "
        f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({short(e)})")


def call(bucket: str, retry_for: float, what: str, fn: Callable[[], T]) -> T:
    """fn(), retried while it fails transiently and retry_for seconds have not passed;
    then StorageUnavailable naming the bucket. Other failures are raised as they are."""
    delay, deadline = 0.2, time.monotonic() + retry_for
    while True:
        try:
            return fn()
        except (PermissionDeniedError, UnauthenticatedError) as e:
            raise _denied(bucket, what, e) from e
        except Exception as e:
            if not transient(e):
                status = _STATUS.search(str(e))
                if status is not None and status.group(1) in ("401", "403"):
                    raise _denied(bucket, what, e) from e
                raise
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable(
                    f"bucket {bucket!r} did not answer {what} for "
                    f"{retry_for:.0f} s: {short(e)}") from e
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def short(err: BaseException) -> str:
    """An obstore error in one line: the S3 error code, and the message without its
    debug dump."""
    text = " ".join(str(err).split())
    m = re.search(r"<Code>([^<]+)</Code>", text)
    head = text.split(" Debug source:", 1)[0]
    return (m.group(1) + ": " if m else "") + head[:200]
