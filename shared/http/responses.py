"""Success responses in the original app's shape: JSON, `API-Version`, its Cache-Control."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from shared.contracts import compact
from shared.storable_text import without_lone_surrogates

__all__ = ["PRIVATE_NO_STORE", "Utf8JSONResponse", "compact", "ok", "render_json"]

PRIVATE_NO_STORE = "private, no-cache, no-store, must-revalidate"


class Utf8JSONResponse(JSONResponse):
    """Starlette's JSON body (compact, non-ASCII kept), with each unpaired UTF-16 surrogate
    sent as U+FFFD: text read from Redis may hold one (half an emoji, as JavaScript stores
    it, in a saved search or a cached brief the TypeScript app wrote), and UTF-8 cannot carry
    it, so the response would otherwise fail with a 500. Only such a body pays for the
    replacement."""

    def render(self, content: Any) -> bytes:
        return render_json(content)


def render_json(content: Any) -> bytes:
    """`content` as a response body carries it: what a size bound on a response must count."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return without_lone_surrogates(text).encode()


def ok(
    body: Any,
    *,
    status: int = 200,
    cache_control: str = PRIVATE_NO_STORE,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    response = Utf8JSONResponse(body, status_code=status, headers=dict(headers or {}))
    response.headers["Cache-Control"] = cache_control
    return response
