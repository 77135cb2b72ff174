"""The HTTP side of snapctl: one httpx client, and API errors as exit codes.

Exit codes (also in the README): each class of failure has its own, so scripts can tell a
typo from a refusal from an outage without parsing messages.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from snapctl.config import Config

EXIT_OK: Final = 0
EXIT_OPERATION_FAILED: Final = 1  # --wait: the operation ended failed or cancelled
EXIT_USAGE: Final = 2  # bad command line (argparse)
EXIT_CONFIG: Final = 3  # no URL or token
EXIT_UNREACHABLE: Final = 4  # connection refused, DNS, timeout
EXIT_INVALID: Final = 5  # 400 invalid_request, 405, 413, 415
EXIT_REFUSED: Final = 6  # 400 refusals (limit, server busy, not available, in use), 409
EXIT_UNAUTHORIZED: Final = 7  # 401
EXIT_FORBIDDEN: Final = 8  # 403
EXIT_NOT_FOUND: Final = 9  # 404
EXIT_SERVER: Final = 10  # 5xx or an answer that is not the API's


class ApiFailure(Exception):
    def __init__(self, exit_code: int, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message
        self.status = status
        self.code = code

    def as_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def exit_code_for(status: int, code: str) -> int:
    if status == 400:
        return EXIT_INVALID if code == "invalid_request" else EXIT_REFUSED
    return {401: EXIT_UNAUTHORIZED, 403: EXIT_FORBIDDEN, 404: EXIT_NOT_FOUND,
            405: EXIT_INVALID, 409: EXIT_REFUSED, 413: EXIT_INVALID,
            415: EXIT_INVALID}.get(status, EXIT_SERVER)


def failure(resp: httpx.Response) -> ApiFailure:
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "", f"HTTP {resp.status_code} from the service"
    return ApiFailure(exit_code_for(resp.status_code, code), message, resp.status_code, code)


class Api:
    def __init__(self, config: Config, timeout: float = 30.0) -> None:
        self.config = config
        self.http = httpx.Client(
            base_url=config.api_base,
            headers={"Authorization": f"Bearer {config.token}",
                     "User-Agent": "snapctl/0.1"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Any:
        """The decoded JSON answer (None for 204); raises ApiFailure otherwise."""
        try:
            resp = self.http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ApiFailure(EXIT_UNREACHABLE,
                             f"cannot reach {self.config.api_base}: {exc}") from None
        if resp.status_code >= 300:
            raise failure(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiFailure(EXIT_SERVER, "the service answered something that is not JSON",
                             resp.status_code) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items()
                                                 if v is not None})
