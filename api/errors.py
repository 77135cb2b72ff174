"""One exception per SPEC error code, and the one JSON error shape they all answer with."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from shared.responses import ErrorBody, ErrorEnvelope


class ApiError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "The server hit an unexpected error."

    def __init__(
        self, message: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> bytes:
        return msgspec.json.encode(ErrorEnvelope(ErrorBody(code=self.code, message=self.message)))


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"
    default_message = "The request is invalid."


class SnapshotLimitReached(ApiError):
    status, code = 400, "snapshot_limit_reached"
    default_message = "The server already has the maximum number of snapshots."


class ServerInvalidState(ApiError):
    status, code = 400, "server_invalid_state"
    default_message = "The server is restoring or has another operation in progress."


class SnapshotNotAvailable(ApiError):
    status, code = 400, "snapshot_not_available"
    default_message = "Only available snapshots can be restored."


class SnapshotInUse(ApiError):
    status, code = 400, "snapshot_in_use"
    default_message = "The snapshot is being restored from."


class SnapshotProtected(ApiError):
    status, code = 400, "snapshot_protected"
    default_message = "The snapshot is protected; unprotect it before deleting it."


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"
    default_message = "A valid bearer token is required."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, {"WWW-Authenticate": 'Bearer realm="snapshots"'})


class Forbidden(ApiError):
    status, code = 403, "forbidden"
    default_message = "This token's scope does not allow this call."


class NotFound(ApiError):
    status, code = 404, "not_found"
    default_message = "The resource was not found."


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"
    default_message = "This method is not allowed on this resource."


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"
    default_message = "The request body is larger than 64 KiB."


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"
    default_message = "The request body must be application/json."


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"
    default_message = "The request body did not arrive in time."

    def __init__(self, message: str | None = None) -> None:
        # The rest of the body may still be on its way: this connection is done.
        super().__init__(message, {"Connection": "close"})


class RateLimited(ApiError):
    status, code = 429, "rate_limited"
    default_message = "Too many requests; come back after Retry-After seconds."

    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(max(1, retry_after))})


class RequestInProgress(ApiError):
    """Also a start script's refusal: another request's claim holds its Idempotency-Key."""

    status, code = 409, "request_in_progress"
    default_message = "A request with this Idempotency-Key is still being processed; retry."


class InternalError(ApiError):
    pass


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"
    default_message = "The service is temporarily unavailable; try again shortly."


# The codes the state store's scripts refuse with, mapped to their HTTP errors.
BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        SnapshotLimitReached,
        ServerInvalidState,
        SnapshotNotAvailable,
        SnapshotInUse,
        SnapshotProtected,
        NotFound,
        RequestInProgress,
    )
}


def from_refusal(code: str, message: str) -> ApiError:
    return BY_CODE.get(code, InternalError)(message)
