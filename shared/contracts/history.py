"""`/api/history` and `/api/history/stats` contract: query rules, the cursor, the JSON shapes.

The cursor is opaque to clients: base64url (no padding) of the JSON `["<searchedAt .mmmZ>",
"<id>"]` keyset tuple. It carries no authority (every query is scoped to the caller), so a
forged cursor can only move the start of the caller's own page; anything that is not exactly
what `encode_cursor` produces is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from shared.clock import iso_ms
from shared.http.errors import ApiError
from shared.http.responses import compact
from shared.models.search_history import SearchHistory
from shared.repositories.search_history import Stats

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
DEFAULT_DAYS, MAX_DAYS = 30, 365
INVALID_CURSOR = "Invalid cursor"
_MAX_CURSOR_CHARS = 200
_DIGITS = re.compile(r"[0-9]{1,6}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_ROW_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def bounded_int(raw: str | None, *, name: str, default: int, minimum: int, maximum: int) -> int:
    """A query parameter that must be a whole number in [minimum, maximum]; 400 otherwise."""
    if raw is None:
        return default
    value = raw.strip()
    if not _DIGITS.fullmatch(value) or not minimum <= int(value) <= maximum:
        raise ApiError(
            400,
            f"{name} must be a whole number from {minimum} to {maximum}",
            label="Validation Error",
        )
    return int(value)


def encode_cursor(keyset: tuple[datetime, str]) -> str:
    searched_at, row_id = keyset
    raw = json.dumps([iso_ms(searched_at), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The keyset tuple, or 400 `Invalid cursor` for anything malformed or altered."""
    try:
        if len(cursor) > _MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise ValueError("not a pair")
        stamp, row_id = decoded
        if not (isinstance(stamp, str) and _TIMESTAMP.fullmatch(stamp)):
            raise ValueError("bad timestamp")
        if not (isinstance(row_id, str) and _ROW_ID.fullmatch(row_id)):
            raise ValueError("bad id")
        keyset = (datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC), row_id)
        if encode_cursor(keyset) != cursor:  # one canonical spelling per cursor
            raise ValueError("not canonical")
    except (ValueError, binascii.Error, UnicodeError):
        raise ApiError(400, INVALID_CURSOR) from None
    return keyset


def history_item(row: SearchHistory) -> dict[str, Any]:
    """One search as the caller sees it; the stored IP and user agent are never shown."""
    return {
        "id": row.id,
        "keywords": list(row.keywords or []),
        "location": row.location,
        "language": row.language,
        "matchType": row.match_type,
        "provider": row.provider,
        "cacheHit": row.cache_hit,
        "responseTime": row.response_time,
        "keywordCount": row.keyword_count,
        "avgVolume": row.avg_volume,
        "totalVolume": row.total_volume,
        "searchedAt": iso_ms(row.searched_at),
    }


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def stats_body(stats: Stats, *, since: datetime, until: datetime) -> dict[str, Any]:
    """`{since, until, searches, avgResponseTime?, cacheHitRate?, providers}`: averages in ms
    (1 decimal), hit rates as a fraction (4 decimals); absent when there was no search."""
    return compact(
        {
            "since": iso_ms(since),
            "until": iso_ms(until),
            "searches": stats.searches,
            "avgResponseTime": _rounded(stats.avg_response_time, 1),
            "cacheHitRate": _rounded(stats.cache_hit_rate, 4),
            "providers": {
                name: compact(
                    {
                        "searches": figures.searches,
                        "avgResponseTime": _rounded(figures.avg_response_time, 1),
                        "cacheHitRate": _rounded(figures.cache_hit_rate, 4),
                    }
                )
                for name, figures in sorted(stats.providers.items())
            },
        }
    )
