"""`/api/history` and `/api/history/stats` contract: query rules and the JSON shapes (the page
size and cursor rules are `shared.contracts.paging`'s)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.clock import iso_ms
from shared.http.responses import compact
from shared.models.search_history import SearchHistory
from shared.repositories.search_history import Stats

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
DEFAULT_DAYS, MAX_DAYS = 30, 365


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
