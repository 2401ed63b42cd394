"""Admin trends contract (`GET /api/admin/analytics/trends`): query rules and response shape.

A point is a bucket (a UTC month or ISO week, by its first instant) whose start lies in
[from, to). The range is capped per report so one call returns at most ~1,100 points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.clock import iso_ms
from shared.contracts.admin import EARLIEST, invalid, parse_time, range_start
from shared.http.responses import compact
from shared.repositories.reports import (
    Freshness,
    KeywordRow,
    ProviderRow,
    Report,
    UsageRow,
)

TOP_PER_WEEK = 20  # keywords or providers per week; the rest stay in the view


@dataclass(frozen=True, slots=True)
class Metric:
    report: Report
    default_window: timedelta
    max_window: timedelta


METRICS: Mapping[str, Metric] = {
    # 36 months by 4 tiers at most
    "usage-by-tier": Metric("report_usage_by_tier", timedelta(days=366), timedelta(days=1096)),
    # 53 weeks by TOP_PER_WEEK at most
    "keyword-trends": Metric("report_keyword_trends", timedelta(weeks=12), timedelta(days=371)),
    "provider-performance": Metric(
        "report_provider_performance", timedelta(weeks=12), timedelta(days=371)
    ),
}


@dataclass(frozen=True, slots=True)
class TrendsQuery:
    metric: str
    report: Report
    start: datetime
    end: datetime


def trends_query(
    metric: str | None, start: str | None, end: str | None, *, now: datetime
) -> TrendsQuery:
    """Validate `metric` (required), `from` and `to` (default: the metric's usual window to now)."""
    spec = METRICS.get((metric or "").strip())
    if spec is None:
        raise invalid(f"metric must be one of {', '.join(METRICS)}")
    until = parse_time(end, "to") if end is not None else now
    since = range_start(start, until, spec.default_window)
    if start is None and since >= until:
        raise invalid(f"to must be after {iso_ms(EARLIEST)}")
    if since >= until:
        raise invalid("from must be before to")
    if until - since > spec.max_window:
        raise invalid(f"the range may span at most {spec.max_window.days} days for {metric}")
    return TrendsQuery(metric.strip() if metric else "", spec.report, since, until)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _average(total: int, count: int) -> float | None:
    return round(total / count, 1) if count else None


def _point(row: UsageRow | KeywordRow | ProviderRow) -> dict[str, Any]:
    if isinstance(row, UsageRow):
        return compact(
            {
                "bucket": iso_ms(row.month),
                "tier": row.tier,
                "searches": row.searches,
                "keywords": row.keywords,
                "users": row.users,
                "cacheHitRate": _rate(row.cache_hits, row.searches),
            }
        )
    if isinstance(row, KeywordRow):
        return {
            "bucket": iso_ms(row.week),
            "keyword": row.keyword,
            "searches": row.searches,
            "users": row.users,
        }
    return compact(
        {
            "bucket": iso_ms(row.week),
            "provider": row.provider,
            "searches": row.searches,
            "avgResponseTime": _average(row.response_time_total, row.searches),
            "cacheHitRate": _rate(row.cache_hits, row.searches),
        }
    )


def trends_body(
    query: TrendsQuery,
    rows: Sequence[UsageRow | KeywordRow | ProviderRow],
    freshness: Freshness,
    *,
    now: datetime,
) -> dict[str, Any]:
    """`{metric, from, to, refreshedAt, ageSeconds, refreshFailedAt, points}`; the three
    freshness keys are absent when unknown (never refreshed) or not the case (no failure since
    the last refresh)."""
    refreshed, failed = freshness.refreshed_at, freshness.failed_at
    if failed is not None and refreshed is not None and failed <= refreshed:
        failed = None
    return compact(
        {
            "metric": query.metric,
            "from": iso_ms(query.start),
            "to": iso_ms(query.end),
            "refreshedAt": None if refreshed is None else iso_ms(refreshed),
            "ageSeconds": None if refreshed is None else int((now - refreshed).total_seconds()),
            "refreshFailedAt": None if failed is None else iso_ms(failed),
            "points": [_point(row) for row in rows],
        }
    )
