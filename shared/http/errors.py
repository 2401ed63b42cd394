"""The original API's error envelope `{error, message, statusCode, timestamp}` and its mapping.

Fixes over the original (docs/original-app.md#d15): the label comes from the status or is set
explicitly, never sniffed from message text, so provider errors cannot surface as 429 with upstream
text; 5xx messages are always generic, details go to the log under the request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from starlette.responses import JSONResponse

from shared.envelope import BEARER_CHALLENGE, envelope
from shared.http.responses import Utf8JSONResponse

T = TypeVar("T")
ERROR_CACHE_CONTROL = "no-store, no-cache, must-revalidate"
# Every route that takes an org answers this 404 alike: here, so a route needs no org layer for it.
ORG_NOT_FOUND = "Organization not found"
AUTH_REQUIRED = "Authentication required"


class ApiError(Exception):
    """An expected failure with a status the client should see.

    `label` overrides the envelope's `error` field (e.g. "Validation Error"); by default it
    follows the status. `extra` adds keys to the body (e.g. `supportedMethods` for 405).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        label: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.label = label
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_response(
    status: int,
    message: str,
    *,
    label: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> JSONResponse:
    """Render the envelope; 5xx messages are replaced by the generic text. A 503 carries
    `Retry-After` and a 401 a Bearer challenge unless `headers` sets its own."""
    if status == 503:
        headers = {"Retry-After": "60", **(headers or {})}
    if status == 401:
        headers = {"WWW-Authenticate": BEARER_CHALLENGE, **(headers or {})}
    body = {**envelope(status, message, label=label), **(extra or {})}
    response = Utf8JSONResponse(body, status_code=status, headers=dict(headers or {}))
    response.headers["Cache-Control"] = ERROR_CACHE_CONTROL
    return response


def valid_or_400(value: T | None, message: str) -> T:
    """A validated path value, or the 400 envelope with `message` (None means invalid)."""
    if value is None:
        raise ApiError(400, message)
    return value


def api_error_response(error: ApiError) -> JSONResponse:
    return error_response(
        error.status, error.message, label=error.label, headers=error.headers, extra=error.extra
    )
