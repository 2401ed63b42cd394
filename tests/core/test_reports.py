"""The materialized reports: what a refresh computes, that refreshing never blocks a reader,
and that a failed refresh keeps the last contents and is recorded. Both lanes, real Postgres.

The race is held mid-way by a lock, never timed: a second connection holds `search_history` in
ACCESS EXCLUSIVE mode, so the refresh takes the view's EXCLUSIVE lock and then waits for the
table; the test observes that wait in `pg_stat_activity` before it reads the view.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from shared import db
from shared.config import get_settings
from shared.cron import rollup
from shared.cron.runner import run_job
from shared.models import UserTier
from shared.repositories import reports, search_history, users
from tests.support.cron import CHECK_OK_MS, BudgetContext

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # a Friday


@pytest.fixture(autouse=True)
def empty_reports(direct_database_url: str) -> None:
    """Views are not emptied with the tables between tests: start each test from empty ones."""
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        for report in reports.REPORTS:
            conn.execute(f"REFRESH MATERIALIZED VIEW {report}")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (user, searchedAt, provider, cacheHit, responseTime, keywords)
SEARCHES: list[tuple[str | None, str, str, bool, int, list[str]]] = [
    ("u_free", "2026-10-31T23:59:59.999", "mock", False, 100, ["SEO", "seo tools"]),
    ("u_free", "2026-11-02T00:00:00", "mock", True, 20, [" seo "]),  # Monday
    ("u_pro", "2026-11-08T23:59:59.999", "dataforseo", False, 300, ["seo", "", "Rank"]),
    ("u_pro", "2026-11-09T00:00:00", "dataforseo", True, 100, ["rank"]),  # next Monday
    (None, "2026-11-10T12:00:00", "mock", False, 50, ["rank"]),
]


def seed() -> None:
    for user_id, tier in (("u_free", UserTier.FREE), ("u_pro", UserTier.PRO)):
        db.run(lambda s, u=user_id, t=tier: users.create(s, u, f"{u}@example.com", tier=t))
    for user_id, searched_at, provider, hit, took, keywords in SEARCHES:
        row = search_history.NewSearch(
            user_id=user_id, keywords=keywords, location="US", language="en",
            match_type="phrase", provider=provider, cache_hit=hit, response_time=took,
        )  # fmt: skip
        db.run(lambda s, r=row, t=searched_at: search_history.record(s, r, now=at(t)))


def view(conn: psycopg.Connection[Any], report: str, order: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT * FROM {report} ORDER BY {order}").fetchall()


def naive(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_the_cron_refreshes_every_report_to_hand_computed_figures(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed()
    summary = run_job(rollup.JOB, now=NOW)
    assert summary["complete"] is True
    assert summary["reportsRefreshed"] == list(reports.REPORTS)
    assert view(admin_conn, "report_usage_by_tier", "1, 2") == [
        # month, tier, searches, keywords, users, cacheHits
        (naive("2026-10-01"), "FREE", 1, 2, 1, 0),
        (naive("2026-11-01"), "ANONYMOUS", 1, 1, 0, 0),
        (naive("2026-11-01"), "FREE", 1, 1, 1, 1),
        (naive("2026-11-01"), "PRO", 2, 4, 1, 1),
    ]
    assert view(admin_conn, "report_keyword_trends", "1, 2") == [
        # week (Monday), keyword (folded, trimmed, blanks dropped), searches, users
        (naive("2026-10-26"), "seo", 1, 1),
        (naive("2026-10-26"), "seo tools", 1, 1),
        (naive("2026-11-02"), "rank", 1, 1),
        (naive("2026-11-02"), "seo", 2, 2),
        (naive("2026-11-09"), "rank", 2, 1),
    ]
    assert view(admin_conn, "report_provider_performance", "1, 2") == [
        # week, provider, searches, cacheHits, responseTimeTotal (from the daily rollups)
        (naive("2026-10-26"), "mock", 1, 0, 100),
        (naive("2026-11-02"), "dataforseo", 1, 0, 300),
        (naive("2026-11-02"), "mock", 1, 1, 20),
        (naive("2026-11-09"), "dataforseo", 1, 1, 100),
        (naive("2026-11-09"), "mock", 1, 0, 50),
    ]
    state = admin_conn.execute("SELECT state FROM cron_leases WHERE job = 'rollup'").fetchone()
    assert state is not None
    assert state[0]["reports"] == {
        report: {"refreshedAt": NOW.isoformat()} for report in reports.REPORTS
    }
    freshness = db.run(lambda conn: reports.freshness(conn, "report_keyword_trends"))
    assert freshness == reports.Freshness(refreshed_at=NOW, failed_at=None)


def test_a_run_out_of_time_refreshes_what_it_can(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """A refresh gets what is left of the invocation less the run's margin (CRON_TIME_MARGIN_MS and
    the database's) as its statement timeout."""
    seed()
    # One budget check per day with searches, then one per report: time for the first only.
    days = len({at(search[1]).date() for search in SEARCHES})
    timeouts: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.startswith("BEGIN; SET LOCAL statement_timeout = "):
            timeouts.append(statement.rsplit(" ", 1)[1])

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        summary = run_job(rollup.JOB, now=NOW, context=BudgetContext(checks=days + 1))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert summary["complete"] is False
    assert summary["reportsRefreshed"] == [reports.REPORTS[0]]
    default = str(get_settings().db_statement_timeout_ms)  # the runner's own transactions
    margin_ms = get_settings().cron_time_margin_ms + db.INVOCATION_MARGIN_S * 1000
    assert [t for t in timeouts if t != default] == [str(int(CHECK_OK_MS - margin_ms))]
    assert len(view(admin_conn, reports.REPORTS[0], "1, 2")) == 4
    assert view(admin_conn, reports.REPORTS[1], "1, 2") == []


def refresh_waits_for_lock(conn: psycopg.Connection[Any], report: str) -> None:
    """Return once a backend refreshing `report` waits on a lock (observed, not timed)."""
    for _ in range(3000):
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND strpos(query, %s) > 0",
            (f"REFRESH MATERIALIZED VIEW CONCURRENTLY {report}",),
        ).fetchone()
        if row and row[0]:
            return
        threading.Event().wait(0.01)  # between observations of the server's lock table
    raise AssertionError(f"the refresh of {report} never waited on a lock")


def test_refreshing_never_blocks_a_reader(
    db_env: str, database_url: str, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Held mid-way (view locked EXCLUSIVE, waiting for the base table), the refresh lets a
    reader in the same lane read the previous contents; once let go it publishes the new ones."""
    seed()
    run_job(rollup.JOB, now=NOW)
    before = view(admin_conn, "report_keyword_trends", "1, 2")
    row = search_history.NewSearch("u_pro", ["new keyword"], "US", "en", "exact", "mock", False, 5)
    db.run(lambda conn: search_history.record(conn, row, now=at("2026-11-10T13:00:00")))

    with (
        psycopg.connect(direct_database_url) as holder,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        holder.execute("LOCK TABLE search_history IN ACCESS EXCLUSIVE MODE")
        refreshing = pool.submit(
            db.transaction,
            partial(reports.refresh, report="report_keyword_trends", lock_timeout_ms=60_000),
            statement_timeout_ms=60_000,
        )
        try:
            refresh_waits_for_lock(admin_conn, "report_keyword_trends")
            held = admin_conn.execute(
                """SELECT l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                    WHERE c.relname = 'report_keyword_trends' AND l.granted
                      AND l.mode = 'ExclusiveLock'"""
            ).fetchall()
            assert held == [("ExclusiveLock",)]  # the refresh is mid-way, holding the view
            # A reader in this lane (through PgBouncer in the pooled one). lock_timeout turns a
            # blocked read into an error instead of a hang.
            lane = database_url.replace("?pgbouncer=true", "")  # our flag, not libpq's
            with psycopg.connect(lane, autocommit=True, prepare_threshold=None) as reader:
                reader.execute("SET lock_timeout = '10s'")
                assert view(reader, "report_keyword_trends", "1, 2") == before
            assert not refreshing.done()
        finally:
            holder.rollback()
        refreshing.result(timeout=60)
    after = view(admin_conn, "report_keyword_trends", "1, 2")
    assert (naive("2026-11-09"), "new keyword", 1, 1) in after and len(after) == len(before) + 1


def test_a_failed_refresh_keeps_the_last_contents_and_is_recorded(
    db_env: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another session holds the view (a refresh run by hand, not committed yet): the cron's
    refresh gives up after its lock timeout, the view keeps its contents, the state says when
    it failed, and the run completes."""
    monkeypatch.setattr(rollup, "REFRESH_LOCK_TIMEOUT_MS", 1)
    seed()
    run_job(rollup.JOB, now=NOW)
    before = view(admin_conn, "report_usage_by_tier", "1, 2")
    row = search_history.NewSearch("u_pro", ["x"], "US", "en", "exact", "mock", False, 5)
    db.run(lambda conn: search_history.record(conn, row, now=at("2026-11-20T10:00:00")))
    later = NOW.replace(hour=16)
    with psycopg.connect(direct_database_url) as holder:
        holder.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY report_usage_by_tier")
        summary = run_job(rollup.JOB, now=later)
        holder.rollback()
    assert summary["complete"] is True
    assert summary["reportsFailed"] == ["report_usage_by_tier"]
    assert summary["reportsRefreshed"] == list(reports.REPORTS[1:])
    assert view(admin_conn, "report_usage_by_tier", "1, 2") == before
    state = admin_conn.execute("SELECT state FROM cron_leases WHERE job = 'rollup'").fetchone()
    assert state is not None
    assert state[0]["reports"]["report_usage_by_tier"] == {
        "refreshedAt": NOW.isoformat(),
        "failedAt": later.isoformat(),
        "error": "LockNotAvailable",
    }
    assert state[0]["reports"]["report_keyword_trends"] == {"refreshedAt": later.isoformat()}
    # The next run, unhindered, catches up and forgets the failure.
    run_job(rollup.JOB, now=later.replace(hour=17))
    assert view(admin_conn, "report_usage_by_tier", "1, 2") != before
    fresh = db.run(lambda conn: reports.freshness(conn, "report_usage_by_tier"))
    assert fresh == reports.Freshness(refreshed_at=later.replace(hour=17), failed_at=None)


def test_refresh_refuses_a_name_that_is_not_a_report(db_env: str) -> None:
    with pytest.raises(ValueError, match="not a report"):
        db.transaction(partial(reports.refresh, report="users", lock_timeout_ms=9))  # type: ignore[arg-type]
