"""Materialized reports: refreshed CONCURRENTLY by the rollup cron, read by the trends route.

REFRESH … CONCURRENTLY computes the view's query again, then applies only the rows that
changed, holding an EXCLUSIVE lock: readers (ACCESS SHARE) go on reading the previous contents
meanwhile. It is one statement, so it runs through PgBouncer's transaction mode as is. A
refresh that fails (lock held by another refresh or a migration, timeout) changes nothing: the
view keeps its last contents and the cron records when it failed.

Each report's last refresh is in the rollup cron's lease state (`state.reports`), so the route
can say how old the figures are without a table of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import bindparam, text
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.types import BigInteger, Text, TypeEngine

from shared.db import Conn
from shared.models import UTCDateTime
from shared.telemetry import database_operation

Report = Literal["report_usage_by_tier", "report_keyword_trends", "report_provider_performance"]
REPORTS: Final[tuple[Report, ...]] = (
    "report_usage_by_tier",
    "report_keyword_trends",
    "report_provider_performance",
)
REFRESHED_BY: Final = "rollup"  # the cron job that refreshes them; its lease row keeps the times


@database_operation("refreshReport")
def refresh(conn: Conn, report: Report, *, lock_timeout_ms: int) -> None:
    """Refresh `report` CONCURRENTLY, giving up after `lock_timeout_ms` spent waiting for one
    lock: another refresh of the view (one run by hand) or a migration holding a table makes
    this one fail soon rather than spend the cron's budget queueing. Run it in a transaction
    with the statement timeout it may take (`db.transaction(..., statement_timeout_ms=…)`)."""
    if report not in REPORTS:
        raise ValueError(f"not a report: {report}")
    conn.session.execute(
        text("SELECT set_config('lock_timeout', :lock, true)"), {"lock": str(lock_timeout_ms)}
    )
    conn.session.execute(text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {report}"))


@dataclass(frozen=True, slots=True)
class Freshness:
    """When a report was last refreshed, and when its latest attempt failed (if it did)."""

    refreshed_at: datetime | None
    failed_at: datetime | None


_STATE = text(
    """SELECT state -> 'reports' -> :report ->> 'refreshedAt',
              state -> 'reports' -> :report ->> 'failedAt'
         FROM cron_leases WHERE job = :job"""
)


def _time(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


@database_operation("reportFreshness")
def freshness(conn: Conn, report: Report) -> Freshness:
    row = conn.session.execute(_STATE, {"report": report, "job": REFRESHED_BY}).one_or_none()
    if row is None:
        return Freshness(None, None)
    return Freshness(_time(row[0]), _time(row[1]))


def _series(sql: str, **columns: TypeEngine[Any]) -> TextualSelect:
    """A read of one report over [:start, :end), its columns typed (times as aware UTC)."""
    return (
        text(sql)
        .bindparams(bindparam("start", type_=UTCDateTime()), bindparam("end", type_=UTCDateTime()))
        .columns(**columns)
    )


_USAGE = _series(
    """SELECT month, tier, searches, keywords, users, "cacheHits"
         FROM report_usage_by_tier
        WHERE month >= :start AND month < :end
        ORDER BY month, tier""",
    month=UTCDateTime(),
    tier=Text(),
    searches=BigInteger(),
    keywords=BigInteger(),
    users=BigInteger(),
    cacheHits=BigInteger(),
)

# The `:top` busiest rows of each week (ties a-z): a week's long tail stays in the view.
_KEYWORDS = _series(
    """SELECT week, keyword, searches, users FROM (
           SELECT *, row_number() OVER (PARTITION BY week ORDER BY searches DESC, keyword) AS n
             FROM report_keyword_trends
            WHERE week >= :start AND week < :end) ranked
        WHERE n <= :top
        ORDER BY week, searches DESC, keyword""",
    week=UTCDateTime(),
    keyword=Text(),
    searches=BigInteger(),
    users=BigInteger(),
)

_PROVIDERS = _series(
    """SELECT week, provider, searches, "cacheHits", "responseTimeTotal" FROM (
           SELECT *, row_number() OVER (PARTITION BY week ORDER BY searches DESC, provider) AS n
             FROM report_provider_performance
            WHERE week >= :start AND week < :end) ranked
        WHERE n <= :top
        ORDER BY week, provider""",
    week=UTCDateTime(),
    provider=Text(),
    searches=BigInteger(),
    cacheHits=BigInteger(),
    responseTimeTotal=BigInteger(),
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    month: datetime
    tier: str  # the user's tier now (no tier history is kept); ANONYMOUS without a user
    searches: int
    keywords: int
    users: int
    cache_hits: int


@dataclass(frozen=True, slots=True)
class KeywordRow:
    week: datetime
    keyword: str
    searches: int
    users: int


@dataclass(frozen=True, slots=True)
class ProviderRow:
    week: datetime
    provider: str
    searches: int
    cache_hits: int
    response_time_total: int


@database_operation("reportUsageByTier")
def usage_by_tier(conn: Conn, *, start: datetime, end: datetime) -> list[UsageRow]:
    """Months starting in [start, end), by month then tier."""
    rows = conn.session.execute(_USAGE, {"start": start, "end": end})
    return [UsageRow(*row) for row in rows]


@database_operation("reportKeywordTrends")
def keyword_trends(conn: Conn, *, start: datetime, end: datetime, top: int) -> list[KeywordRow]:
    """Weeks starting in [start, end), each week's `top` keywords by searches (ties a-z)."""
    rows = conn.session.execute(_KEYWORDS, {"start": start, "end": end, "top": top})
    return [KeywordRow(*row) for row in rows]


@database_operation("reportProviderPerformance")
def provider_performance(
    conn: Conn, *, start: datetime, end: datetime, top: int
) -> list[ProviderRow]:
    """Weeks starting in [start, end), each week's `top` providers by searches, by name."""
    rows = conn.session.execute(_PROVIDERS, {"start": start, "end": end, "top": top})
    return [ProviderRow(*row) for row in rows]
