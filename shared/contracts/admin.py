"""Admin metrics and analytics contract: query rules and response shapes.

Averages are in ms with one decimal, rates are fractions with four, times are `.mmmZ`; absent
figures (no data) are omitted, as everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from shared.clock import iso_ms
from shared.contracts.validation import unstorable
from shared.http.errors import ApiError
from shared.http.responses import compact
from shared.repositories.search_history import KeywordCount, Stats
from shared.repositories.system_metrics import Bucket, Point
from shared.repositories.users import SubscriptionMetrics

BUCKETS: dict[str, Bucket] = {name: name for name in get_args(Bucket)}
DEFAULT_BUCKET: Bucket = "hour"
DEFAULT_WINDOW = timedelta(hours=24)
# The widest window per bucket: at most 10,080 minute, 8,784 hour or 1,096 day points. A point
# is at most ~150 bytes of JSON, so a series stays under 1.6 MB: either platform answers it.
MAX_WINDOW: Mapping[str, timedelta] = {
    "minute": timedelta(days=7),
    "hour": timedelta(days=366),
    "day": timedelta(days=1096),
}
MAX_METRIC_NAME = 200
DEFAULT_DAYS, MAX_DAYS = 7, 90
MAX_PROVIDERS = 20  # the providers with the most searches in the window; the rest are left out
_DIGITS = re.compile(r"[0-9]{1,6}")
MAX_ORGANIZATION_ID = 200
_ORGANIZATION_ID = re.compile(rf"org_[A-Za-z0-9_-]{{1,{MAX_ORGANIZATION_ID}}}")


def invalid(message: str) -> ApiError:
    return ApiError(400, message, label="Validation Error")


def parse_time(raw: str, name: str) -> datetime:
    """An ISO 8601 timestamp (`Z` or an offset; without one it is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise invalid(
            f"{name} must be an ISO 8601 timestamp, e.g. 2026-11-01T00:00:00.000Z"
        ) from None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise invalid(f"{name} must fall within the years 1 to 9999 in UTC") from None


EARLIEST = datetime.min.replace(tzinfo=UTC)


def range_start(start: str | None, until: datetime, default: timedelta) -> datetime:
    """`from` as given, else `default` before `to`: from the first moment a timestamp holds
    when `to` is that close to it (the caller sent no `from` to be told about)."""
    if start is not None:
        return parse_time(start, "from")
    try:
        return until - default
    except OverflowError:
        return EARLIEST


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    metric: str
    start: datetime
    end: datetime
    bucket: Bucket


def series_query(
    metric: str | None, start: str | None, end: str | None, bucket: str | None, *, now: datetime
) -> SeriesQuery:
    """Validate `metric`, `from`, `to` (default: the last 24 h) and `bucket` (default hour)."""
    name = (metric or "").strip()
    if not name:
        raise invalid("metric is required")
    if len(name) > MAX_METRIC_NAME:
        raise invalid(f"metric must be at most {MAX_METRIC_NAME} characters")
    if problem := unstorable("metric", name):  # PostgreSQL text cannot hold it: a 500
        raise invalid(problem.message())
    size = BUCKETS.get((bucket or DEFAULT_BUCKET).strip())
    if size is None:
        raise invalid(f"bucket must be one of {', '.join(BUCKETS)}")
    until = parse_time(end, "to") if end is not None else now
    since = range_start(start, until, DEFAULT_WINDOW)
    if start is None and since >= until:
        raise invalid(f"to must be after {iso_ms(EARLIEST)}")
    if since >= until:
        raise invalid("from must be before to")
    limit = MAX_WINDOW[size]
    if until - since > limit:
        raise invalid(f"the range may span at most {limit.days} days for {size} buckets")
    return SeriesQuery(name, since, until, size)


def series_body(query: SeriesQuery, points: list[Point]) -> dict[str, Any]:
    """`{metric, bucket, from, to, points: [{bucket, avg, min, max, count, nonFinite?}]}`, oldest
    first; `nonFinite` only for a bucket holding NaN or ±Infinity, which JSON cannot carry."""
    return {
        "metric": query.metric,
        "bucket": query.bucket,
        "from": iso_ms(query.start),
        "to": iso_ms(query.end),
        "points": [_point(point) for point in points],
    }


def _point(point: Point) -> dict[str, Any]:
    body: dict[str, Any] = {
        "bucket": iso_ms(point.bucket),
        "avg": point.avg,
        "min": point.min,
        "max": point.max,
        "count": point.count,
    }
    if point.non_finite:
        body["nonFinite"] = point.non_finite
    return body


def days_param(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_DAYS
    value = raw.strip()
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_DAYS:
        raise invalid(f"days must be a whole number from 1 to {MAX_DAYS}")
    return int(value)


def organization_param(raw: str | None) -> str | None:
    """The analytics' optional organization: a Clerk organization id (`org_…`)."""
    if raw is None:
        return None
    if not _ORGANIZATION_ID.fullmatch(raw):
        raise invalid(
            f"organizationId must be an organization id (org_ and up to {MAX_ORGANIZATION_ID} "
            "letters, digits, _ or -)"
        )
    return raw


def window_start(now: datetime, days: int) -> datetime:
    """UTC midnight `days - 1` days before today: the window holds `days` calendar days."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days - 1)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class Analytics:
    days: int
    organization_id: str | None  # the searches of one organization only; None: everyone's
    since: datetime
    until: datetime
    per_day: Mapping[datetime, int]
    window: Stats
    last_day: Stats
    top_keywords: list[KeywordCount]
    subscriptions: SubscriptionMetrics


def _busiest(providers: Mapping[str, Any]) -> dict[str, Any]:
    """The MAX_PROVIDERS providers with the most searches (ties: by name)."""
    ranked = sorted(providers.items(), key=lambda item: (-item[1].searches, item[0]))
    return dict(ranked[:MAX_PROVIDERS])


def analytics_body(figures: Analytics) -> dict[str, Any]:
    """The admin dashboard's figures; see docs/flags-and-admin.md."""
    days = [figures.since + timedelta(days=offset) for offset in range(figures.days)]
    window, last_day, subs = figures.window, figures.last_day, figures.subscriptions
    return {
        "days": figures.days,
        **({} if figures.organization_id is None else {"organizationId": figures.organization_id}),
        "from": iso_ms(figures.since),
        "to": iso_ms(figures.until),
        "searches": compact(
            {
                "total": window.searches,
                "perDay": [
                    {"date": day.date().isoformat(), "searches": figures.per_day.get(day, 0)}
                    for day in days
                ],
                "cacheHitRate": _rounded(window.cache_hit_rate, 4),
                "providers": {
                    name: compact(
                        {
                            "searches": stats.searches,
                            "avgResponseTime": _rounded(stats.avg_response_time, 1),
                            "cacheHitRate": _rounded(stats.cache_hit_rate, 4),
                        }
                    )
                    for name, stats in sorted(_busiest(window.providers).items())
                },
            }
        ),
        "last24h": compact(
            {
                "searches": last_day.searches,
                "avgResponseTime": _rounded(last_day.avg_response_time, 1),
            }
        ),
        "topKeywords": [
            {"keyword": k.keyword, "searches": k.searches} for k in figures.top_keywords
        ],
        "subscriptions": {
            "totalUsers": subs.total_users,
            "freeUsers": subs.free_users,
            "proUsers": subs.pro_users,
            "enterpriseUsers": subs.enterprise_users,
            "activeSubscriptions": subs.active_subscriptions,
        },
    }
