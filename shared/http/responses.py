"""Success responses in the original app's shape: JSON, `API-Version`, its Cache-Control."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from shared.contracts import compact

__all__ = ["PRIVATE_NO_STORE", "compact", "ok"]

PRIVATE_NO_STORE = "private, no-cache, no-store, must-revalidate"


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
