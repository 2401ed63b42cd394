"""The time-partitioned logs (revision 0010, `shared.repositories.partitions`, the prune cron).

Each test gets its own freshly migrated database, so the partitions one test creates or drops
are no other test's business; the cron runs in both lanes (direct, and through PgBouncer in
transaction mode). The migration itself runs on the direct URL only, as migrations must.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict

from devkit.migrate import upgrade_head
from shared import accounts, db
from shared.clock import utcnow
from shared.cron import prune, rollup
from shared.cron.runner import LEASE_HELD, run_job
from shared.repositories import database_stats, partitions
from tests.support.cron import configure, count, overlapping_runs

ScratchDatabase = Callable[[], str]
LOGS = {"api_usage": "timestamp", "search_history": "searchedAt", "system_metrics": "timestamp"}
DAY = timedelta(days=1)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def today() -> datetime:
    """Midnight UTC of today, naive: the migration's partitions are laid out from the server's
    clock, so the tests place their times relative to it."""
    return naive(utcnow()).replace(hour=0, minute=0, second=0, microsecond=0)


def insert(
    conn: psycopg.Connection[Any], table: str, row_id: str, at: datetime, **extra: Any
) -> None:
    """One row as the original app writes it (its own id and time)."""
    user = extra.get("user")
    if table == "api_usage":
        conn.execute(
            'INSERT INTO api_usage (id, "userId", endpoint, method, "statusCode", duration, '
            "timestamp) VALUES (%s, %s, '/api/x', 'GET', 200, 5, %s)",
            (row_id, user, at),
        )
    elif table == "search_history":
        conn.execute(
            'INSERT INTO search_history (id, "userId", keywords, location, language, '
            '"matchType", provider, "responseTime", "searchedAt", "ipAddress") '
            "VALUES (%s, %s, ARRAY['kw'], 'US', 'en', 'broad', 'mock', 10, %s, '10.0.0.0')",
            (row_id, user, at),
        )
    else:
        conn.execute(
            "INSERT INTO system_metrics (id, metric, value, timestamp) VALUES (%s, 'm', 1, %s)",
            (row_id, at),
        )


def holder(conn: psycopg.Connection[Any], table: str, row_id: str) -> str:
    """The partition a row is stored in."""
    row = conn.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE id = %s", (row_id,))
    return str(row.fetchone()[0])  # type: ignore[index]


def ids(conn: psycopg.Connection[Any], table: str) -> set[tuple[str, datetime]]:
    column = LOGS[table]
    return {(r[0], r[1]) for r in conn.execute(f'SELECT id, "{column}" FROM {table}')}


def layout(conn: psycopg.Connection[Any], table: str) -> set[tuple[str, str]]:
    """Each partition's name and bound, as PostgreSQL prints it."""
    return {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            (table,),
        )
    }


def names(conn: psycopg.Connection[Any], table: str) -> set[str]:
    return {name for name, _ in layout(conn, table)}


def test_periods_and_names() -> None:
    day, month = partitions.LAYOUTS["api_usage"], partitions.LAYOUTS["system_metrics"]
    moment = datetime(2026, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert day.start(moment) == datetime(2026, 12, 31)
    assert day.after(day.start(moment)) == datetime(2027, 1, 1)
    assert month.start(moment) == datetime(2026, 12, 1)
    assert month.after(datetime(2026, 12, 1)) == datetime(2027, 1, 1)
    assert month.after(datetime(2027, 1, 1)) == datetime(2027, 2, 1)
    assert (day.name(datetime(2027, 1, 1)), month.name(datetime(2027, 1, 1))) == (
        "api_usage_p20270101",
        "system_metrics_p202701",
    )


def test_quarters_across_the_year() -> None:
    quarter = partitions.LAYOUTS["search_history"]
    assert quarter.unit == "quarter"
    starts = {
        datetime(2026, 12, 31, 23, 59, 59, 999000, tzinfo=UTC): datetime(2026, 10, 1),
        # 00:30 on New Year's Day in Paris is still the last quarter of the year in UTC.
        datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))): datetime(2026, 10, 1),
        datetime(2027, 1, 1): datetime(2027, 1, 1),
        datetime(2027, 3, 31, 23, 59, 59): datetime(2027, 1, 1),
        datetime(2027, 4, 1): datetime(2027, 4, 1),
        datetime(2027, 9, 30, 12): datetime(2027, 7, 1),
    }
    assert {moment: quarter.start(moment) for moment in starts} == starts
    assert quarter.after(datetime(2026, 10, 1)) == datetime(2027, 1, 1)
    assert quarter.after(datetime(2027, 1, 1)) == datetime(2027, 4, 1)
    assert quarter.after(datetime(2027, 7, 1)) == datetime(2027, 10, 1)
    assert [quarter.name(datetime(2026, 10, 1)), quarter.name(datetime(2027, 4, 1))] == [
        "search_history_p2026q4",
        "search_history_p2027q2",
    ]
    # A whole quarter keeps its name; one clipped by months already made is named by its day.
    assert quarter.name(datetime(2027, 1, 1), datetime(2027, 4, 1)) == "search_history_p2027q1"
    assert quarter.name(datetime(2027, 3, 1), datetime(2027, 4, 1)) == "search_history_p20270301"
    # Names sort in time order through the change from months to quarters.
    transition = ["p202701", "p202702", "p20270301", "p2027q2", "p2027q3", "p2027q4", "p2028q1"]
    assert sorted(transition) == transition


def test_a_piece_not_starting_at_midnight_is_named_by_its_time_too() -> None:
    day, month = partitions.LAYOUTS["api_usage"], partitions.LAYOUTS["system_metrics"]
    dec5, dec6 = datetime(2030, 12, 5), datetime(2030, 12, 6)
    assert day.name(dec5, dec5.replace(hour=6)) == "api_usage_p20301205"  # today's names stay
    assert day.name(dec5.replace(hour=18), dec6) == "api_usage_p20301205_180000"
    at = datetime(2030, 12, 5, 18, 0, 0, 250000)
    assert month.name(at, datetime(2031, 1, 1)) == "system_metrics_p20301205_180000_250000"
    pieces = ["p20301205", "p20301205_060000", "p20301205_180000", "p20301206"]
    assert sorted(pieces) == pieces  # still in time order


def test_a_new_range_is_clipped_to_what_no_partition_holds() -> None:
    def month(year: int, number: int) -> partitions.Partition:
        start = datetime(year, number, 1)
        return partitions.Partition(
            f"m{number}", start, partitions.LAYOUTS["system_metrics"].after(start)
        )

    legacy = partitions.Partition("legacy", None, datetime(2027, 1, 1))
    default = partitions.Partition("default", None, None, default=True)
    q4, q1, q2 = datetime(2026, 10, 1), datetime(2027, 1, 1), datetime(2027, 4, 1)
    jul = datetime(2027, 7, 1)
    migrated = [legacy, month(2027, 1), month(2027, 2), default]
    assert partitions.gaps(migrated, q4, q1) == []  # the legacy partition holds it all
    assert partitions.gaps(migrated, q1, q2) == [(datetime(2027, 3, 1), q2)]
    assert partitions.gaps(migrated, q2, jul) == [(q2, jul)]
    assert partitions.gaps([month(2027, 2), default], q1, q2) == [
        (q1, datetime(2027, 2, 1)),
        (datetime(2027, 3, 1), q2),
    ]
    assert partitions.gaps([month(2027, 3), month(2027, 1)], q1, q2) == [
        (datetime(2027, 2, 1), datetime(2027, 3, 1))
    ]
    assert partitions.gaps([partitions.Partition("q1", q1, q2)], q1, q2) == []


# --------------------------------------------------------------------------- the migration


def alembic_config(url: str) -> Config:
    config = Config("alembic.ini")
    config.attributes["url"] = url
    return config


def test_the_migration_keeps_every_row_both_ways(scratch_database: ScratchDatabase) -> None:
    url = scratch_database()
    config = alembic_config(url)
    command.upgrade(config, "0009")
    base = today()
    moments = [base - 1000 * DAY, base - 100 * DAY, base, base + 3 * DAY, base + 400 * DAY]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, \"updatedAt\") VALUES ('u1', 'a@x.io', now())")
        for table in LOGS:
            for n, at in enumerate(moments):
                for k in range(3):
                    insert(conn, table, f"{table}-{n}-{k}", at + k * timedelta(hours=1), user="u1")
        before = {table: ids(conn, table) for table in LOGS}

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]
            assert_cut_over_near_now(conn, table, before[table], base)
            kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (table,))
            assert kind.fetchone() == ("p",)
        # A row past the cutover and every range lands in the default partition.
        insert(conn, "api_usage", "after", base + 500 * DAY)
        assert holder(conn, "api_usage", "after") == "partitions.api_usage_default"
        conn.execute("DELETE FROM api_usage WHERE id = 'after'")

    command.downgrade(config, "0009")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]
            key = conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                (f"{table}_pkey",),
            )
            assert key.fetchone() == ("PRIMARY KEY (id)",)
        assert conn.execute("SELECT to_regnamespace('partitions')").fetchone() == (None,)

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]


def assert_cut_over_near_now(
    conn: psycopg.Connection[Any], table: str, rows: set[tuple[str, datetime]], base: datetime
) -> datetime:
    """The old table is the legacy partition up to the cutover, the start of the period after
    now: its rows stay where they were, and those dated later moved to the partitions their
    times say (a range, or the default one past the ranges). Returns the cutover."""
    cutover = legacy_upper(conn, table)
    assert base < cutover <= base + 32 * DAY
    legacy = f"partitions.{table}_legacy"
    assert {holder(conn, table, i) for i, at in rows if at < cutover} == {legacy}
    assert legacy not in {holder(conn, table, i) for i, at in rows if at >= cutover}
    return cutover


def legacy_upper(conn: psycopg.Connection[Any], table: str) -> datetime:
    """The legacy partition's upper bound: the migration's cutover."""
    row = conn.execute(
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = %s::regclass",
        (f"partitions.{table}_legacy",),
    ).fetchone()
    assert row is not None
    match = re.search(r"TO \('([^']*)'\)", row[0])
    assert match is not None, row[0]
    return datetime.fromisoformat(match.group(1))


def test_far_future_legacy_rows_leave_the_cutover_near_now(
    scratch_database: ScratchDatabase,
) -> None:
    """Rows a bad writer dated centuries ahead (up to 9999-12-31) must not carry the cutover
    with them: the legacy partition would then take every new row, and retention could never
    drop a partition again. They move to the DEFAULT partition; no row is lost either way."""
    url = scratch_database()
    config = alembic_config(url)
    command.upgrade(config, "0009")
    base = today()
    old = {"year-1": datetime(1, 1, 1), "last-year": base - 365 * DAY, "today": base}
    future = {
        "y2999": datetime(2999, 6, 1, 12),
        "y9999": datetime(9999, 12, 31, 23, 59, 59, 999000),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            for name, at in {**old, **future}.items():
                insert(conn, table, f"{table}-{name}", at)
        before = {table: ids(conn, table) for table in LOGS}

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]
            assert count(conn, f"SELECT count(*) FROM {table}") == len(old) + len(future)
            cutover = legacy_upper(conn, table)
            assert base < cutover <= base + 32 * DAY
            where = {name: holder(conn, table, f"{table}-{name}") for name in {**old, **future}}
            assert where == {
                **{name: f"partitions.{table}_legacy" for name in old},
                **{name: f"partitions.{table}_default" for name in future},
            }
            # A new row past the cutover lands in its range, which retention can drop.
            insert(conn, table, f"{table}-new", cutover)
            suffix = "%Y%m%d" if table == "api_usage" else "%Y%m"
            assert holder(conn, table, f"{table}-new") == f"partitions.{table}_p{cutover:{suffix}}"
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (f"{table}-new",))

    command.downgrade(config, "0009")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]
            assert count(conn, f"SELECT count(*) FROM {table}") == len(old) + len(future)

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert ids(conn, table) == before[table]
            assert legacy_upper(conn, table) <= base + 32 * DAY


# The periods revision 0010 lays out (search_history's quarters are the cron's, later).
MIGRATION_UNITS = {"api_usage": "day", "search_history": "month", "system_metrics": "month"}


def lay_out_as_the_old_0010(conn: psycopg.Connection[Any], table: str) -> datetime:
    """Turn what revision 0010 made into what it made before its cutover stopped following the
    newest row: the legacy partition holds every row, up to the period after the newest, and
    no range exists (they began there, past the horizon). Returns that bound."""
    legacy, unit = f"partitions.{table}_legacy", MIGRATION_UNITS[table]
    conn.execute(f"ALTER TABLE {table} DETACH PARTITION {legacy}")
    conn.execute(
        f"WITH moved AS (DELETE FROM {table} RETURNING *) INSERT INTO {legacy} SELECT * FROM moved"
    )
    for name in names(conn, table) - {f"{table}_default"}:
        conn.execute(f"DROP TABLE partitions.{name}")
    row = conn.execute(
        f"SELECT date_trunc('{unit}', max(\"{LOGS[table]}\")) + interval '1 {unit}' FROM {legacy}"
    ).fetchone()
    assert row is not None and isinstance(row[0], datetime)
    bound: datetime = row[0]
    conn.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {legacy} "
        f"FOR VALUES FROM (MINVALUE) TO ('{bound.isoformat(sep=' ')}')"
    )
    return bound


def test_revision_0014_repairs_a_legacy_partition_bounded_far_ahead(
    scratch_database: ScratchDatabase, lane: Lane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that applied revision 0010 before its cutover stopped following the newest
    row, with a row dated 2999: its legacy partition takes every new row, and retention can
    never drop it. Revision 0014 bounds it at the period after now, as 0010 does today, and
    moves the rows dated later out through the parent; no row is lost or doubled."""
    url = scratch_database()
    config = alembic_config(url)
    command.upgrade(config, "0009")
    base = today()
    old = {"year-1": datetime(1, 1, 1), "last-year": base - 365 * DAY, "today": base}
    written_after = {"now": base + timedelta(hours=1), "in-3-days": base + 3 * DAY}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            for name, at in {**old, "y2999": datetime(2999, 6, 1, 12)}.items():
                insert(conn, table, f"{table}-{name}", at)
    command.upgrade(config, "0010")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            assert lay_out_as_the_old_0010(conn, table).year == 2999
    command.upgrade(config, "0013")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            for name, at in written_after.items():
                insert(conn, table, f"{table}-{name}", at)
                assert holder(conn, table, f"{table}-{name}") == f"partitions.{table}_legacy"
        before = {table: ids(conn, table) for table in LOGS}

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        repaired = {table: layout(conn, table) for table in LOGS}
        for table in LOGS:
            assert ids(conn, table) == before[table]
            assert count(conn, f"SELECT count(*) FROM {table}") == len(before[table])
            cutover = assert_cut_over_near_now(conn, table, before[table], base)
            assert holder(conn, table, f"{table}-y2999") == f"partitions.{table}_default"
            insert(conn, table, f"{table}-new", cutover)
            suffix = "%Y%m%d" if table == "api_usage" else "%Y%m"
            assert holder(conn, table, f"{table}-new") == f"partitions.{table}_p{cutover:{suffix}}"
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (f"{table}-new",))
    # The same layout a database migrated today has: both paths end in one place.
    fresh_url = scratch_database()
    upgrade_head(fresh_url)
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        assert {table: layout(conn, table) for table in LOGS} == repaired

    command.downgrade(config, "0013")  # nothing to undo: the repaired layout suits 0013
    command.upgrade(config, "head")  # and nothing left to repair
    with psycopg.connect(url, autocommit=True) as conn:
        assert {table: layout(conn, table) for table in LOGS} == repaired
        assert {table: ids(conn, table) for table in LOGS} == before

    lane(url)
    configure(  # keep every row, to see none lost
        monkeypatch,
        RETENTION_API_USAGE_DAYS=0,
        RETENTION_SEARCH_HISTORY_DAYS=0,
        RETENTION_SYSTEM_METRICS_DAYS=0,
    )
    first, second = run_job(prune.JOB), run_job(prune.JOB)
    assert first["complete"] is True and second["complete"] is True
    assert second["created"] == {} and second["dropped"] == {}
    with psycopg.connect(url, autocommit=True) as conn:
        assert {table: ids(conn, table) for table in LOGS} == before
    # Retention can drop the legacy partition again once its bound is past the cutoff.
    configure(
        monkeypatch,
        RETENTION_API_USAGE_DAYS=None,
        RETENTION_SEARCH_HISTORY_DAYS=None,
        RETENTION_SYSTEM_METRICS_DAYS=None,
    )
    later = run_job(prune.JOB, now=(base + 500 * DAY).replace(tzinfo=UTC))
    for table in LOGS:
        assert f"{table}_legacy" in later["dropped"][table]


def test_revision_0014_repairs_a_legacy_bound_days_ahead_around_the_ranges_after_it(
    scratch_database: ScratchDatabase,
) -> None:
    """The old 0010 with a row two days ahead: the legacy partition ends a few days past the
    cutover and ranges follow it. Only the days between are laid out; the ranges after the old
    bound, and the DEFAULT partition's rows, stay where they are."""
    url = scratch_database()
    config = alembic_config(url)
    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        cutover = legacy_upper(conn, "api_usage")
        old_bound = cutover + 2 * DAY
        conn.execute("ALTER TABLE api_usage DETACH PARTITION partitions.api_usage_legacy")
        for day in (cutover, cutover + DAY):
            conn.execute(f"DROP TABLE partitions.api_usage_p{day:%Y%m%d}")
        conn.execute(
            "ALTER TABLE api_usage ATTACH PARTITION partitions.api_usage_legacy "
            f"FOR VALUES FROM (MINVALUE) TO ('{old_bound.isoformat(sep=' ')}')"
        )
        rows = {"today": today(), "ahead": cutover + DAY, "far": cutover + 400 * DAY}
        for name, at in rows.items():
            insert(conn, "api_usage", name, at)
        assert holder(conn, "api_usage", "ahead") == "partitions.api_usage_legacy"
        kept = {p for p in layout(conn, "api_usage") if not p[0].endswith("_legacy")}

    command.downgrade(config, "0013")
    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        assert legacy_upper(conn, "api_usage") == cutover
        assert kept <= layout(conn, "api_usage")
        assert {name: holder(conn, "api_usage", name) for name in rows} == {
            "today": "partitions.api_usage_legacy",
            "ahead": f"partitions.api_usage_p{cutover + DAY:%Y%m%d}",
            "far": "partitions.api_usage_default",
        }
        assert ids(conn, "api_usage") == set(rows.items())
        fresh_url = scratch_database()
        upgrade_head(fresh_url)
        with psycopg.connect(fresh_url, autocommit=True) as fresh_conn:
            assert layout(conn, "api_usage") == layout(fresh_conn, "api_usage")


def test_revision_0014_leaves_a_database_migrated_by_todays_0010_as_it_is(
    scratch_database: ScratchDatabase,
) -> None:
    url = scratch_database()
    config = alembic_config(url)
    command.upgrade(config, "0013")
    with psycopg.connect(url, autocommit=True) as conn:
        for table in LOGS:
            insert(conn, table, f"{table}-today", today())
        before = {table: (layout(conn, table), ids(conn, table)) for table in LOGS}

    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        assert {table: (layout(conn, table), ids(conn, table)) for table in LOGS} == before
    command.downgrade(config, "0013")
    with psycopg.connect(url, autocommit=True) as conn:
        assert {table: (layout(conn, table), ids(conn, table)) for table in LOGS} == before


# --------------------------------------------------------------------------- the cron


@dataclass
class Fresh:
    """A migrated database of its own: `conn` is a direct autocommit connection to it."""

    conn: psycopg.Connection[Any]
    lane: str


Lane = Callable[[str], str]


@pytest.fixture(
    params=[
        pytest.param("direct", id="direct"),
        pytest.param("pooled", id="pooled", marks=pytest.mark.pooled),
    ]
)
def lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lane]:
    """Points the app (the cron) at a database, given its direct URL, directly or through
    PgBouncer in transaction mode; returns the URL the app uses."""
    from shared.config import get_settings
    from shared.db import dispose_engine

    def use(direct: str) -> str:
        url = direct
        if request.param == "pooled":
            url = request.getfixturevalue("pgbouncer").url(conninfo_to_dict(direct)["dbname"])
        monkeypatch.setenv("DATABASE_URL", url)
        monkeypatch.setenv("DIRECT_DATABASE_URL", direct)
        get_settings.cache_clear()
        dispose_engine()
        return url

    try:
        yield use
    finally:
        dispose_engine()
        get_settings.cache_clear()


@pytest.fixture
def fresh(scratch_database: ScratchDatabase, lane: Lane) -> Iterator[Fresh]:
    direct = scratch_database()
    upgrade_head(direct)
    url = lane(direct)
    with psycopg.connect(direct, autocommit=True) as conn:
        yield Fresh(conn, url)


def test_partitions_are_created_ahead_once_and_under_the_lease(fresh: Fresh) -> None:
    later = today() + 40 * DAY  # past what the migration laid out
    first, second = overlapping_runs(prune.JOB, now=later.replace(tzinfo=UTC))
    assert second["skipped"] == LEASE_HELD and "created" not in second
    layout = partitions.LAYOUTS["api_usage"]
    expected = [layout.name(later + k * DAY) for k in range(layout.ahead + 1)]
    assert first["created"]["api_usage"] == expected
    assert set(expected) <= names(fresh.conn, "api_usage")
    for table in ("search_history", "system_metrics"):
        log = partitions.LAYOUTS[table]
        assert partitions.gaps(ranges(log), log.start(later), horizon(log, later)) == []
    again = run_job(prune.JOB, now=later.replace(tzinfo=UTC))
    assert again["created"] == {} and again["complete"] is True
    insert(fresh.conn, "api_usage", "in-range", later + 2 * DAY + timedelta(hours=5))
    assert holder(fresh.conn, "api_usage", "in-range") == f"partitions.{expected[2]}"


def ranges(layout: partitions.Layout) -> list[partitions.Partition]:
    return db.run(partial(partitions.partitions_of, layout=layout))


def horizon(layout: partitions.Layout, now: datetime) -> datetime:
    """The end of the last period the cron makes at `now`."""
    end = layout.start(now)
    for _ in range(layout.ahead + 1):
        end = layout.after(end)
    return end


def create(layout: partitions.Layout, now: datetime) -> list[str]:
    return db.transaction(partial(partitions.create_ahead, layout=layout, now=now))


def test_quarters_begin_where_the_migrations_months_end(fresh: Fresh) -> None:
    """A freshly migrated database: revision 0010 made the legacy partition up to next month and
    two months from there; the quarters take over after them, the first one clipped."""
    quarter = partitions.LAYOUTS["search_history"]
    monthly = replace(quarter, unit="month")
    now = today()
    made = monthly.after(monthly.after(monthly.after(monthly.start(now))))
    this_quarter, next_quarter = quarter.after(quarter.start(now)), horizon(quarter, now)
    before = ranges(quarter)
    expected = [(made, this_quarter)] if made < this_quarter else []
    expected.append((max(made, this_quarter), next_quarter))

    created = create(quarter, now)

    assert created == [quarter.name(lower, upper) for lower, upper in expected]
    after = ranges(quarter)
    assert set(before) <= set(after)  # the months stay until retention drops them
    bounded = [p for p in after if not p.default]
    assert bounded[0].lower is None and bounded[0].name == "search_history_legacy"
    assert all(a.upper == b.lower for a, b in pairwise(bounded))
    assert bounded[-1].upper == next_quarter
    insert(fresh.conn, "search_history", "first-quarter", made)
    assert holder(fresh.conn, "search_history", "first-quarter") == f"partitions.{created[0]}"
    assert create(quarter, now) == []


def test_quarters_follow_monthly_ranges_made_ahead_and_take_the_default_rows(
    fresh: Fresh,
) -> None:
    """A deployment whose cron made months ahead before quarters: no range overlaps another,
    and the rows the DEFAULT partition held for a new range move into it."""
    quarter = partitions.LAYOUTS["search_history"]
    monthly = replace(quarter, unit="month", ahead=2)
    for now in (datetime(2029, 9, 15), datetime(2029, 12, 10)):  # September to February
        create(monthly, now)
    rows = {
        "march": datetime(2030, 3, 15),
        "may": datetime(2030, 5, 20),
        "aug": datetime(2030, 8, 1),
    }
    for row_id, at in rows.items():
        insert(fresh.conn, "search_history", row_id, at)
    assert {holder(fresh.conn, "search_history", r) for r in rows} == {
        "partitions.search_history_default"
    }

    # December: the current quarter is all months, the next one is clipped after February.
    assert create(quarter, datetime(2029, 12, 11)) == ["search_history_p20300301"]
    assert holder(fresh.conn, "search_history", "march") == "partitions.search_history_p20300301"
    assert holder(fresh.conn, "search_history", "may") == "partitions.search_history_default"
    assert create(quarter, datetime(2029, 12, 12)) == []
    assert create(quarter, datetime(2030, 1, 5)) == ["search_history_p2030q2"]
    assert holder(fresh.conn, "search_history", "may") == "partitions.search_history_p2030q2"
    assert holder(fresh.conn, "search_history", "aug") == "partitions.search_history_default"
    assert create(quarter, datetime(2030, 4, 2)) == ["search_history_p2030q3"]
    assert holder(fresh.conn, "search_history", "aug") == "partitions.search_history_p2030q3"
    assert ids(fresh.conn, "search_history") == set(rows.items())

    laid = [(p.lower, p.upper) for p in ranges(quarter) if p.lower and p.lower.year >= 2029]
    months = [datetime(2029, m, 1) for m in range(9, 13)] + [datetime(2030, m, 1) for m in (1, 2)]
    assert [lower for lower, _ in laid] == [
        *months,
        datetime(2030, 3, 1),
        datetime(2030, 4, 1),
        datetime(2030, 7, 1),
    ]
    assert all(a[1] == b[0] for a, b in pairwise(laid))
    assert laid[-1][1] == datetime(2030, 10, 1)


def test_retention_drops_a_quarter_once_it_is_wholly_past_the_cutoff(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=30)
    quarter = partitions.LAYOUTS["search_history"]
    assert create(quarter, datetime(2030, 1, 10)) == [
        "search_history_p2030q1",
        "search_history_p2030q2",
    ]
    insert(fresh.conn, "search_history", "february", datetime(2030, 2, 15))
    insert(fresh.conn, "search_history", "june", datetime(2030, 6, 15))
    before = ranges(quarter)

    # Cutoff 2030-03-31 23:00: the first quarter's upper bound (April 1) is past it, so the
    # quarter stays whole, its February row with it, up to a quarter longer than the setting.
    now = datetime(2030, 4, 30, 23)
    summary = run_job(prune.JOB, now=now.replace(tzinfo=UTC))
    cutoff = now - 30 * DAY
    gone = {p.name for p in before if p.upper is not None and p.upper <= cutoff}
    assert "search_history_legacy" in gone and "search_history_p2030q1" not in gone
    assert set(summary["dropped"]["search_history"]) == gone
    assert summary["created"]["search_history"] == ["search_history_p2030q3"]
    assert {i for i, _ in ids(fresh.conn, "search_history")} == {"february", "june"}
    rolled = run_job(rollup.JOB, now=now.replace(tzinfo=UTC), options={"full": True})
    assert rolled["daysRecomputed"] == 1  # February's day (filled: the prune has reached it)

    # Cutoff April 1, 00:00: now every row of the quarter is past it, and it goes whole.
    summary = run_job(prune.JOB, now=datetime(2030, 5, 1, tzinfo=UTC))
    assert summary["dropped"]["search_history"] == ["search_history_p2030q1"]
    assert summary["deleted"]["search_history"] == 0
    assert {i for i, _ in ids(fresh.conn, "search_history")} == {"june"}
    # The prune recorded its cutoff's day before dropping: February's total outlives its row.
    state = fresh.conn.execute("SELECT state FROM cron_leases WHERE job = 'prune'").fetchone()
    assert state is not None and state[0][prune.PRUNED_THROUGH]["search_history"] == "2030-04-01"
    run_job(rollup.JOB, now=datetime(2030, 5, 1, 1, tzinfo=UTC), options={"full": True})
    february = "SELECT searches FROM search_daily_rollups WHERE day = '2030-02-15'"
    assert count(fresh.conn, february) == 1


def test_an_insert_lands_somewhere_whatever_its_time(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RETENTION_API_USAGE_DAYS=0)  # keep the 1999 row through the cron run
    base = today()
    cases = {
        "legacy-import": datetime(1999, 1, 1),
        "clock-skew": base + 365 * 50 * DAY,
        "cron-away-a-week": base + 20 * DAY,  # no range there yet: the cron did not run
    }
    with psycopg.connect(
        fresh.lane.replace("?pgbouncer=true", ""), autocommit=True, prepare_threshold=None
    ) as lane:
        for table in LOGS:
            for name, at in cases.items():
                insert(lane, table, f"{table}-{name}", at)
    for table in LOGS:
        assert holder(fresh.conn, table, f"{table}-legacy-import") == f"partitions.{table}_legacy"
        assert holder(fresh.conn, table, f"{table}-clock-skew") == f"partitions.{table}_default"
    assert holder(fresh.conn, "api_usage", "api_usage-cron-away-a-week") == (
        "partitions.api_usage_default"
    )
    # The cron comes back: the new range takes its rows over from the default partition.
    summary = run_job(prune.JOB, now=(base + 20 * DAY).replace(tzinfo=UTC))
    day = partitions.LAYOUTS["api_usage"].name(base + 20 * DAY)
    assert day in summary["created"]["api_usage"]
    assert holder(fresh.conn, "api_usage", "api_usage-cron-away-a-week") == f"partitions.{day}"
    assert count(fresh.conn, "SELECT count(*) FROM api_usage") == len(cases)


def seed_days(conn: psycopg.Connection[Any], first: datetime, days: int) -> set[str]:
    """Four api_usage rows a day for `days` days from `first`; returns their ids."""
    made = set()
    for d in range(days):
        for h in (0, 6, 12, 23):
            row_id = f"au-{d}-{h}"
            insert(conn, "api_usage", row_id, first + d * DAY + timedelta(hours=h, minutes=59))
            made.add(row_id)
    return made


def test_retention_drops_exactly_the_expired_partitions(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RETENTION_API_USAGE_DAYS=3, RETENTION_SEARCH_HISTORY_DAYS=0)
    start = today() + 30 * DAY
    first = run_job(prune.JOB, now=start.replace(tzinfo=UTC))  # ranges start .. start + 7 days
    assert "api_usage_legacy" in first["dropped"]["api_usage"]  # past retention already
    seed_days(fresh.conn, start - 2 * DAY, 10)  # the first two days go to the default partition
    layout = partitions.LAYOUTS["api_usage"]
    before = names(fresh.conn, "api_usage")

    now = start + 5 * DAY + timedelta(hours=12)
    cutoff = now - 3 * DAY  # start + 2 days 12 h
    summary = run_job(prune.JOB, now=now.replace(tzinfo=UTC))

    gone = {layout.name(start), layout.name(start + DAY)}
    assert set(summary["dropped"]["api_usage"]) == gone
    assert names(fresh.conn, "api_usage") == (before - gone) | set(
        summary["created"].get("api_usage", [])
    )
    assert "search_history" not in summary["dropped"]  # 0: forever
    # The default partition's expired rows went in batches; the partition holding the cutoff is
    # kept whole (up to one day longer than the setting), and nothing newer was touched.
    assert summary["deleted"]["api_usage"] == 8
    kept = {r[0] for r in fresh.conn.execute("SELECT timestamp FROM api_usage")}
    assert min(kept) == start + 2 * DAY + timedelta(minutes=59)
    assert min(kept) < cutoff
    assert len(kept) == 4 * 10 - 8 - 8
    again = run_job(prune.JOB, now=now.replace(tzinfo=UTC))
    assert (again["dropped"], again["deleted"]["api_usage"]) == ({}, 0)


def test_a_reader_holding_an_expired_partition_defers_its_drop(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RETENTION_API_USAGE_DAYS=3)
    start = today() + 30 * DAY
    run_job(prune.JOB, now=start.replace(tzinfo=UTC))
    name = partitions.LAYOUTS["api_usage"].name(start)
    with psycopg.connect(fresh.conn.info.dsn) as reader:  # an export's long snapshot
        reader.execute(f"SELECT count(*) FROM partitions.{name}").fetchone()
        held = run_job(prune.JOB, now=(start + 10 * DAY).replace(tzinfo=UTC))
        assert name in held["lockedOut"] and held["complete"] is False
        assert name not in held["dropped"].get("api_usage", [])
    done = run_job(prune.JOB, now=(start + 10 * DAY).replace(tzinfo=UTC))
    assert name in done["dropped"]["api_usage"] and done["complete"] is True


def test_inserts_racing_the_drop_are_neither_lost_nor_refused(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RETENTION_API_USAGE_DAYS=3)
    start = today() + 30 * DAY
    run_job(prune.JOB, now=start.replace(tzinfo=UTC))
    seed_days(fresh.conn, start, 3)
    now = start + 6 * DAY
    written: list[str] = []
    errors: list[BaseException] = []
    stop, started = threading.Event(), threading.Barrier(3)

    def writer(n: int) -> None:
        try:
            with psycopg.connect(
                fresh.lane.replace("?pgbouncer=true", ""), autocommit=True, prepare_threshold=None
            ) as conn:
                started.wait(30)
                k = 0
                while not stop.is_set() or k < 20:
                    row_id = f"race-{n}-{k}"
                    # Inside retention, and one far in the past into the default partition.
                    at = now if k % 2 else datetime(2001, 1, 1)
                    insert(conn, "api_usage", row_id, at)
                    written.append(row_id)
                    k += 1
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
            started.abort()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    started.wait(30)
    summary = run_job(prune.JOB, now=now.replace(tzinfo=UTC))
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors  # no insert was refused, whatever partition it met
    assert len(summary["dropped"]["api_usage"]) == 3  # three days went meanwhile
    stored = {r[0] for r in fresh.conn.execute("SELECT id FROM api_usage WHERE id LIKE 'race-%'")}
    recent = {i for i in written if int(i.rsplit("-", 1)[1]) % 2}
    # Rows inside retention are all there; rows from 2001 are past it and may have gone with
    # the legacy partition or the default one's batches.
    assert len(recent) >= 20 and recent <= stored


def test_the_metrics_count_a_partitioned_logs_rows_over_its_partitions(fresh: Fresh) -> None:
    base = today()
    for k, at in enumerate((datetime(2001, 1, 1), base + DAY, base + 9999 * DAY)):
        insert(fresh.conn, "api_usage", f"au-{k}", at)
    fresh.conn.execute("ANALYZE api_usage")  # what autovacuum does for each partition
    stats = db.run(database_stats.read)
    assert stats.table_rows["api_usage"] == 3
    assert stats.table_rows["search_history"] == 0


def test_erasure_reaches_every_partition(fresh: Fresh) -> None:
    base = today()
    fresh.conn.execute(
        "INSERT INTO users (id, email, \"updatedAt\") VALUES ('u-erase', 'e@x.io', now()),"
        " ('u-keep', 'k@x.io', now())"
    )
    places = {"legacy": datetime(2001, 1, 1), "range": base + 2 * DAY, "default": base + 9999 * DAY}
    for where, at in places.items():
        for user in ("u-erase", "u-keep"):
            insert(fresh.conn, "search_history", f"sh-{where}-{user}", at, user=user)
            insert(fresh.conn, "api_usage", f"au-{where}-{user}", at, user=user)
    assert len({holder(fresh.conn, "api_usage", f"au-{w}-u-erase") for w in places}) == 3

    erasure = db.transaction(lambda conn: accounts.erase(conn, "u-erase"))
    assert (erasure.history_anonymised, erasure.api_usage_deleted) == (3, 3)
    assert count(fresh.conn, "SELECT count(*) FROM api_usage WHERE \"userId\" = 'u-erase'") == 0
    assert (
        count(fresh.conn, "SELECT count(*) FROM search_history WHERE \"userId\" = 'u-erase'") == 0
    )
    assert count(fresh.conn, "SELECT count(*) FROM search_history WHERE \"userId\" = 'u-keep'") == 3
    # Deleting a user outright (as Prisma does) sets their history's userId NULL everywhere.
    fresh.conn.execute("DELETE FROM users WHERE id = 'u-keep'")
    assert count(fresh.conn, 'SELECT count(*) FROM search_history WHERE "userId" IS NULL') == 6


def test_a_hand_made_partition_is_laid_around_kept_and_dropped_whatever_its_name(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quarter an operator attached by hand, in the public schema (where a bare CREATE TABLE
    lands) under a name that needs quoting: the cron lays its ranges around it, and retention
    drops it (or empties it, as the legacy partition) by its own schema and name."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=30)
    quarter = partitions.LAYOUTS["search_history"]
    fresh.conn.execute(
        'CREATE TABLE public."Search-History 2030 Q1" PARTITION OF search_history '
        "FOR VALUES FROM ('2030-01-01') TO ('2030-04-01')"
    )
    insert(fresh.conn, "search_history", "by-hand", datetime(2030, 2, 15))
    assert create(quarter, datetime(2030, 1, 10)) == ["search_history_p2030q2"]
    assert "Search-History 2030 Q1" not in db.run(database_stats.read).table_rows  # its parent's

    summary = run_job(prune.JOB, now=datetime(2030, 5, 1, tzinfo=UTC))

    assert summary["complete"] is True
    assert "Search-History 2030 Q1" in summary["dropped"]["search_history"]
    assert "Search-History 2030 Q1" not in names(fresh.conn, "search_history")
    assert ids(fresh.conn, "search_history") == set()


def test_pieces_around_a_hand_made_partition_with_mid_day_bounds_have_names_of_their_own(
    fresh: Fresh,
) -> None:
    """An operator's partition from 06:00 to 18:00 of one day leaves two pieces of that day to
    the cron, both starting that day: named by their day alone, the second CREATE TABLE would
    fail, and with it every run."""
    fresh.conn.execute(
        "CREATE TABLE partitions.api_usage_by_hand PARTITION OF api_usage "
        "FOR VALUES FROM ('2030-12-05 06:00') TO ('2030-12-05 18:00')"
    )
    now = datetime(2030, 12, 4, 12, tzinfo=UTC)

    summary = run_job(prune.JOB, now=now)

    assert summary["created"]["api_usage"][:4] == [
        "api_usage_p20301204",
        "api_usage_p20301205",
        "api_usage_p20301205_180000",
        "api_usage_p20301206",
    ]
    assert run_job(prune.JOB, now=now)["created"] == {}
    hours = {"dawn": 3, "noon": 12, "evening": 20}
    for row_id, hour in hours.items():
        insert(fresh.conn, "api_usage", row_id, datetime(2030, 12, 5, hour))
    assert {row_id: holder(fresh.conn, "api_usage", row_id) for row_id in hours} == {
        "dawn": "partitions.api_usage_p20301205",
        "noon": "partitions.api_usage_by_hand",
        "evening": "partitions.api_usage_p20301205_180000",
    }


def test_a_partition_to_maxvalue_made_by_hand_holds_what_follows_and_loses_expired_rows(
    fresh: Fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's catch-all FROM a quarter TO MAXVALUE: the cron makes no range it would
    overlap (ATTACH would refuse, failing every run), and retention deletes its expired rows
    in batches, as the DEFAULT partition's."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=30)
    quarter = partitions.LAYOUTS["search_history"]
    fresh.conn.execute(
        "CREATE TABLE partitions.search_history_onwards PARTITION OF search_history "
        "FOR VALUES FROM ('2030-04-01') TO (MAXVALUE)"
    )
    insert(fresh.conn, "search_history", "june-2030", datetime(2030, 6, 15))
    insert(fresh.conn, "search_history", "july-2031", datetime(2031, 7, 1))
    assert create(quarter, datetime(2030, 1, 10)) == ["search_history_p2030q1"]

    summary = run_job(prune.JOB, now=datetime(2031, 7, 1, 12, tzinfo=UTC))

    assert summary["complete"] is True and "search_history" not in summary["created"]
    assert "search_history_p2030q1" in summary["dropped"]["search_history"]
    assert summary["deleted"]["search_history"] == 1
    assert {i for i, _ in ids(fresh.conn, "search_history")} == {"july-2031"}
    assert holder(fresh.conn, "search_history", "july-2031") == "partitions.search_history_onwards"
