"""Success responses in the original app's shape: JSON, `API-Version`, its Cache-Control."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

PRIVATE_NO_STORE = "private, no-cache, no-store, must-revalidate"


def compact(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Drop keys whose value is None: the original omits absent keys rather than sending null."""
    return {key: value for key, value in fields.items() if value is not None}


def ok(
    body: Any,
    *,
    status: int = 200,
    cache_control: str = PRIVATE_NO_STORE,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    response = JSONResponse(body, status_code=status, headers=dict(headers or {}))
    response.headers["Cache-Control"] = cache_control
    return response
