"""Daily search aggregates: `search_history` per UTC day and provider, in `search_daily_rollups`.

A day is recomputed from its history rows in ONE statement (aggregate, upsert, delete providers
that no longer have rows), so a day's rollup is always exactly its rows at some instant. The
upsert only rewrites a row whose numbers changed: recomputing an unchanged day writes nothing.
A day the prune may have deleted rows of is only completed: only providers without a total get
one, and an existing total is never lowered. The same statement reads how far the prune got
(`PruneRecord`), which the prune commits before deleting anything: any snapshot that sees one
of its deletions also sees its record, so a day is never recomputed from partly deleted rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import bindparam, func, select, text

from shared.db import Conn
from shared.models import UTCDateTime
from shared.models.search_history import SearchHistory
from shared.models.search_rollups import SearchDailyRollup
from shared.telemetry import database_operation

# The last day the prune may have deleted history of, as it recorded it (`PruneRecord`).
_PRUNED_THROUGH = """(SELECT (state -> :record_key ->> 'search_history')::date
                       FROM cron_leases WHERE job = :record_job)"""
_PARAMS = (
    bindparam("start", type_=UTCDateTime()),
    bindparam("end", type_=UTCDateTime()),
    bindparam("now", type_=UTCDateTime()),
)

_ROLLUP_DAY = text(
    f"""
    WITH fill_only AS (
        SELECT coalesce(:day <= {_PRUNED_THROUGH}, :day < :unrecorded_floor) AS yes
    ), agg AS (
        SELECT provider,
               count(*)::int AS searches,
               coalesce(sum("keywordCount"), 0)::bigint AS keywords,
               (count(*) FILTER (WHERE "cacheHit"))::int AS cache_hits,
               coalesce(sum("responseTime"), 0)::bigint AS response_total
          FROM search_history
         WHERE "searchedAt" >= :start AND "searchedAt" < :end
         GROUP BY provider
    ), upserted AS (
        INSERT INTO search_daily_rollups AS r
               (day, provider, searches, keywords, "cacheHits", "responseTimeTotal",
                "avgResponseTime", "updatedAt")
        SELECT :day, provider, searches, keywords, cache_hits, response_total,
               response_total::float8 / searches, :now
          FROM agg
        ON CONFLICT (day, provider) DO UPDATE
           SET searches = EXCLUDED.searches,
               keywords = EXCLUDED.keywords,
               "cacheHits" = EXCLUDED."cacheHits",
               "responseTimeTotal" = EXCLUDED."responseTimeTotal",
               "avgResponseTime" = EXCLUDED."avgResponseTime",
               "updatedAt" = EXCLUDED."updatedAt"
         WHERE NOT (SELECT yes FROM fill_only)
           AND (r.searches, r.keywords, r."cacheHits", r."responseTimeTotal")
               IS DISTINCT FROM (EXCLUDED.searches, EXCLUDED.keywords, EXCLUDED."cacheHits",
                                 EXCLUDED."responseTimeTotal")
        RETURNING 1
    ), removed AS (
        DELETE FROM search_daily_rollups r
         WHERE r.day = :day
           AND NOT (SELECT yes FROM fill_only)
           AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.provider = r.provider)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM upserted),
           (SELECT count(*) FROM removed),
           (SELECT coalesce(sum(searches), 0) FROM agg)
    """
).bindparams(*_PARAMS)

_SELECT_PRUNED_THROUGH = text(f"SELECT {_PRUNED_THROUGH}")


@dataclass(frozen=True, slots=True)
class PruneRecord:
    """Where the prune records, in its lease's state, the last day whose history it may have
    deleted: `state[key]["search_history"]` of job `job`'s lease row (`shared.cron.prune`)."""

    job: str
    key: str


@dataclass(frozen=True, slots=True)
class DayResult:
    changed: int  # rollup rows inserted or updated
    removed: int  # rollup rows of providers without searches that day any more
    searches: int  # history rows the day has


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[midnight, next midnight) of a UTC day, as aware datetimes."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


@database_operation("rollupSearchDay")
def rollup_day(
    conn: Conn, day: date, *, now: datetime, record: PruneRecord, unrecorded_floor: date
) -> DayResult:
    """Recompute `day`'s rows of `search_daily_rollups` from `search_history`; or, if `record`
    says the prune may have deleted rows of `day` (it is at or before the recorded day), only
    add the totals of providers that have none yet, keeping the others as they are. Without a
    record, days before `unrecorded_floor` are taken as pruned (a release whose prune did not
    record its cutoff)."""
    start, end = day_bounds(day)
    params = {"day": day, "start": start, "end": end, "now": now,
              "unrecorded_floor": unrecorded_floor}  # fmt: skip
    row = conn.session.execute(
        _ROLLUP_DAY, {**params, "record_job": record.job, "record_key": record.key}
    ).one()
    return DayResult(changed=int(row[0]), removed=int(row[1]), searches=int(row[2]))


@database_operation("prunedThrough")
def pruned_through(conn: Conn, record: PruneRecord) -> date | None:
    """The last day whose history the prune may have deleted, as it recorded it; None before
    its first run with a retention."""
    params = {"record_job": record.job, "record_key": record.key}
    day: date | None = conn.session.execute(_SELECT_PRUNED_THROUGH, params).scalar_one_or_none()
    return day


@database_operation("firstSearchDay")
def first_day(conn: Conn, since: date = date.min, before: date | None = None) -> date | None:
    """The UTC day of the oldest history row from the day `since` (by default, of all), before
    the day `before` if given; one index probe (the `searchedAt` index).

    Rows dated before year 1 (BC, `-infinity`) have no day a `date` holds, so none is rolled
    up; those after today are not reached."""
    statement = select(func.min(SearchHistory.searched_at)).where(
        SearchHistory.searched_at >= day_bounds(since)[0]
    )
    if before is not None:
        statement = statement.where(SearchHistory.searched_at < day_bounds(before)[0])
    oldest = conn.session.execute(statement).scalar_one_or_none()
    return None if oldest is None else oldest.date()


@database_operation("firstSearchOrRollupDay")
def first_day_with_rows(conn: Conn, since: date) -> date | None:
    """The first day from `since` that has history rows or rollup rows (a recomputed day may
    lose the latter); two index probes in one statement."""
    history = select(func.min(SearchHistory.searched_at)).where(
        SearchHistory.searched_at >= day_bounds(since)[0]
    )
    rollups = select(func.min(SearchDailyRollup.day)).where(SearchDailyRollup.day >= since)
    oldest, first_rollup = conn.session.execute(
        select(history.scalar_subquery(), rollups.scalar_subquery())
    ).one()
    days = [first_rollup] if oldest is None else [oldest.date(), first_rollup]
    return min((day for day in days if day is not None), default=None)


@database_operation("listSearchRollups")
def between(conn: Conn, first: date, last: date) -> list[SearchDailyRollup]:
    """Rollup rows for days in [first, last], by day then provider."""
    statement = (
        select(SearchDailyRollup)
        .where(SearchDailyRollup.day >= first, SearchDailyRollup.day <= last)
        .order_by(SearchDailyRollup.day, SearchDailyRollup.provider)
    )
    return list(conn.session.scalars(statement))
