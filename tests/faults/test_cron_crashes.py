"""Crons killed mid-batch (issue 10): a real child process, SIGKILLed while a later batch waits.

Each test runs a cron module's Lambda `lambda_handler` in its own interpreter, holds a row lock
that a later batch needs (so earlier batches have committed and the child waits inside a statement),
SIGKILLs the child as a vanished container would be, and shows:

- the dead run's lease keeps a second run out until it expires (the takeover path: the lease
  lasts the invocation's time limit plus a second, so a small Lambda timeout keeps this short);
- the run after that finishes the work with no double effect, whatever the statement that was
  in flight when the client died did (PostgreSQL completes an autocommit statement once the
  lock is released: the server learns of the dead client only when it next talks to it).

Both lanes: direct, and through PgBouncer in transaction mode (as on Neon's pooler).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devkit import events
from devkit._host import wait_for
from shared import db
from shared.clock import month_start, utcnow
from shared.cron import metrics
from shared.cron.runner import LEASE_HELD, run_job
from shared.repositories import users
from tests.faults.conftest import FaultApp
from tests.support.cron import configure, count
from tests.support.processes import (
    HandlerProcess,
    RowLock,
    child_env,
    wait_for_backend,
    wait_until_settled,
)

pytestmark = pytest.mark.faults

BATCH = 10
CHILD_TIMEOUT_MS = 4_000  # the child's Lambda time limit: its lease lasts this + 1 s
Invoke = Callable[[str], dict[str, Any]]


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def cron_env(db_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This process runs the jobs with the same batch size as the child."""
    configure(monkeypatch, CRON_BATCH_SIZE=BATCH, CRON_TIME_MARGIN_MS=0)
    return db_env


def spawn_cron(job: str, database_url: str, direct_url: str, app: str) -> HandlerProcess:
    """`functions.cron.<job>.lambda_handler` on a scheduled event, in a child with a short
    time limit."""
    env = child_env(
        DATABASE_URL=database_url,
        DIRECT_DATABASE_URL=direct_url,
        DB_APPLICATION_NAME=app,
        CRON_BATCH_SIZE=BATCH,
        CRON_TIME_MARGIN_MS=0,
    )
    return HandlerProcess(
        f"functions.cron.{job}", events.schedule(), env, timeout_ms=CHILD_TIMEOUT_MS
    )


def invoke(job: str) -> dict[str, Any]:
    """The next scheduled invocation of `job`, in this (warm) process."""
    module = importlib.import_module(f"functions.cron.{job}")
    result: dict[str, Any] = module.lambda_handler(
        events.schedule(), events.lambda_context(job, 60_000)
    )
    return result


def lease(conn: psycopg.Connection[Any], job: str) -> tuple[Any, ...]:
    """(holder, live?, state) of the job's lease, by the database's clock."""
    row = conn.execute(
        """SELECT holder, "expiresAt" > timezone('UTC', clock_timestamp()), state
           FROM cron_leases WHERE job = %s""",
        (job,),
    ).fetchone()
    assert row is not None, f"no lease row for {job}"
    return tuple(row)


def wait_for_lease_expiry(conn: psycopg.Connection[Any], job: str) -> None:
    assert wait_for(lambda: not lease(conn, job)[1], timeout=CHILD_TIMEOUT_MS / 1000 + 20)


def application_name() -> str:
    return f"kf-cron-crash-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- reset_monthly_usage


def seed_stale_users(conn: psycopg.Connection[Any], n: int, last_month: datetime) -> None:
    """`n` users (u000001…) whose monthly counter (7) dates from last month."""
    conn.execute(
        """INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
                              "monthlyResetAt", "createdAt", "updatedAt")
           SELECT 'u' || lpad(g::text, 6, '0'), 'u' || g || '@example.com', 'PRO', 7, 100 + g,
                  %(at)s, %(at)s, %(at)s
           FROM generate_series(1, %(n)s) g""",
        {"n": n, "at": naive(last_month)},
    )


def test_reset_killed_mid_batch_resets_every_counter_exactly_once(
    cron_env: str, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """45 stale users in batches of 10; the child dies while batch 3 waits on user 25.

    Between the crash and the next run a user already reset by the dead run searches again:
    the next run must not reset that user a second time, and must reset everyone it missed.
    """
    this_month = month_start(utcnow())
    seed_stale_users(admin_conn, 45, this_month - timedelta(days=3))
    totals_before = count(admin_conn, 'SELECT sum("keywordSearchesTotal") FROM users')
    app = application_name()

    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = 'u000025'") as lock:
        with spawn_cron("reset_monthly_usage", cron_env, direct_database_url, app) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert blocked.query.lstrip().upper().startswith("WITH BATCH")  # the batch UPDATE
            # Batches 1 and 2 committed on their own before the crash.
            reset = 'SELECT count(*) FROM users WHERE "keywordSearchesThisMonth" = 0'
            assert count(admin_conn, reset) == 2 * BATCH
            assert lease(admin_conn, "reset_monthly_usage")[:2] != (None, False)  # held, live
            assert child.sigkill() == -9 and not child.answered()

            # The dead run's lease keeps the next run out until it expires.
            early = invoke("reset_monthly_usage")
            assert (early.get("skipped"), early["processed"]) == (LEASE_HELD, 0)
        lock.release()
        wait_until_settled(admin_conn, app)

    by_dead_run = count(admin_conn, reset)
    assert by_dead_run in (2 * BATCH, 3 * BATCH)  # batch 3 may finish after the client died
    print(f"reset: killed child pid {child.pid}; {by_dead_run} of 45 reset by the dead run")
    # A request by a user the dead run already reset: counted into this month, once.
    db.run(lambda conn: users.increment_usage(conn, "u000005", 3))

    wait_for_lease_expiry(admin_conn, "reset_monthly_usage")
    rerun = invoke("reset_monthly_usage")
    assert (rerun["complete"], rerun["processed"]) == (True, 45 - by_dead_run)

    counters = dict(admin_conn.execute('SELECT id, "keywordSearchesThisMonth" FROM users'))
    assert counters.pop("u000005") == 3  # not reset a second time
    assert set(counters.values()) == {0}
    stamps = count(
        admin_conn, 'SELECT count(*) FROM users WHERE "monthlyResetAt" >= %s', naive(this_month)
    )
    assert stamps == 45
    totals = count(admin_conn, 'SELECT sum("keywordSearchesTotal") FROM users')
    assert totals == totals_before + 3  # lifetime totals are never reset
    assert invoke("reset_monthly_usage")["processed"] == 0
    assert lease(admin_conn, "reset_monthly_usage")[0] is None  # given back


# --------------------------------------------------------------------------- rollup


def seed_history(conn: psycopg.Connection[Any], day: date, searches: int) -> None:
    conn.execute(
        """INSERT INTO search_history (id, keywords, location, language, "matchType", provider,
               "cacheHit", "responseTime", "keywordCount", "searchedAt")
           SELECT %(tag)s || g, ARRAY['a','b','c'], 'US', 'en', 'broad', 'mock', g %% 2 = 0,
                  100 + g, 3, %(at)s
           FROM generate_series(1, %(n)s) g""",
        {"tag": f"h{day:%Y%m%d}-", "n": searches, "at": datetime(day.year, day.month, day.day, 12)},
    )


def expected_rollups(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The daily aggregates, recomputed independently from search_history."""
    return conn.execute(
        """SELECT "searchedAt"::date, provider, count(*)::int, sum("keywordCount")::bigint,
                  (count(*) FILTER (WHERE "cacheHit"))::int, sum("responseTime")::bigint
           FROM search_history GROUP BY 1, 2 ORDER BY 1, 2"""
    ).fetchall()


def actual_rollups(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT day, provider, searches, keywords, "cacheHits", "responseTimeTotal"
           FROM search_daily_rollups ORDER BY 1, 2"""
    ).fetchall()


def test_rollup_killed_mid_run_ends_with_each_day_counted_once(
    cron_env: str, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Five days of history; the child dies while day 3's upsert waits on its old rollup row.

    A rollup that added to its rows would count days 1 and 2 twice after the crash; ours
    recomputes each day whole, and the next run leaves the already-correct days unwritten.
    """
    today = utcnow().date()
    days = [today - timedelta(days=n) for n in range(5, 0, -1)]
    for i, day in enumerate(days):
        seed_history(admin_conn, day, 4 + i)
    # Day 3's rollup row as an older run left it, before most of its searches existed.
    admin_conn.execute(
        """INSERT INTO search_daily_rollups (day, provider, searches, keywords, "cacheHits",
               "responseTimeTotal", "avgResponseTime", "updatedAt")
           VALUES (%s, 'mock', 1, 3, 0, 101, 101, now())""",
        (days[2],),
    )
    app = application_name()

    with RowLock(
        direct_database_url,
        "SELECT day FROM search_daily_rollups WHERE day = %(d)s",
        {"d": days[2]},
    ) as lock:
        with spawn_cron("rollup", cron_env, direct_database_url, app) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert "search_daily_rollups" in blocked.query
            done = [row for row in actual_rollups(admin_conn) if row[0] in days[:2]]
            assert done == [row for row in expected_rollups(admin_conn) if row[0] in days[:2]]
            assert child.sigkill() == -9 and not child.answered()
            assert invoke("rollup").get("skipped") == LEASE_HELD
        lock.release()
        wait_until_settled(admin_conn, app)

    first_two = admin_conn.execute(
        'SELECT day, "updatedAt" FROM search_daily_rollups WHERE day < %s ORDER BY day',
        (days[2],),
    ).fetchall()
    assert [day for day, _ in first_two] == days[:2]
    day3_fixed = actual_rollups(admin_conn)[2] == expected_rollups(admin_conn)[2]
    print(f"rollup: killed child pid {child.pid}; day 3 finished by the orphan: {day3_fixed}")
    # The dead run saved no resume state: its lease was never given back.
    assert lease(admin_conn, "rollup")[2] in (None, {})

    wait_for_lease_expiry(admin_conn, "rollup")
    rerun = invoke("rollup")
    assert rerun["complete"] is True
    # Days 1-2 (and day 3, if the orphaned statement finished it) were already right: unwritten.
    assert rerun["processed"] == (2 if day3_fixed else 3)
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn)
    assert (
        admin_conn.execute(
            'SELECT day, "updatedAt" FROM search_daily_rollups WHERE day < %s ORDER BY day',
            (days[2],),
        ).fetchall()
        == first_two
    )
    assert invoke("rollup")["processed"] == 0


# --------------------------------------------------------------------------- a lost lease answer


@contextmanager
def acquire_commit_waits_for_a_standby(fault_app: FaultApp) -> Iterator[None]:
    """The lease acquire commits on the server and then waits, before answering, for a
    synchronous standby that never comes: terminating that backend loses the answer of a
    statement that ran (PostgreSQL warns, then sends nothing more), as a connection dropped
    after the server answered does. Only the acquire (an INSERT) waits: the trigger asks for a
    synchronous commit in its transaction alone (the fault server's default is `off`)."""
    postgres = fault_app.servers.postgres
    with fault_app.admin() as admin:
        admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'kf_never_connects'")
        admin.execute(
            "CREATE FUNCTION kf_wait_for_standby() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM set_config('synchronous_commit', 'on', true); RETURN NULL; END $$"
        )
        admin.execute(
            "CREATE TRIGGER kf_wait_for_standby BEFORE INSERT ON cron_leases"
            " FOR EACH STATEMENT EXECUTE FUNCTION kf_wait_for_standby()"
        )
    postgres.restart()  # every process, the checkpointer included, starts with the standby named
    try:
        yield
    finally:
        with fault_app.admin() as admin:
            admin.execute("DROP FUNCTION kf_wait_for_standby() CASCADE")
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")


def backend_waiting_for_standby(admin: psycopg.Connection[Any], app: str) -> int | None:
    row = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'SyncRep'",
        (app,),
    ).fetchone()
    return None if row is None else int(row[0])


def test_a_run_whose_lease_acquire_answer_is_lost_gives_the_lease_back(
    fault_app: FaultApp,
) -> None:
    """The server took the lease, the answer never arrived: the run fails ("outcome unknown"),
    and gives back the lease it may hold, by its own token, so the next run is not skipped
    until the lease expires (docs/crons-and-backups.md)."""
    with acquire_commit_waits_for_a_standby(fault_app), ThreadPoolExecutor(1) as pool:
        failed = pool.submit(run_job, metrics.JOB)
        with fault_app.admin() as admin:
            assert wait_for(
                lambda: backend_waiting_for_standby(admin, fault_app.application_name) is not None,
                timeout=20,
            )
            admin.execute(
                "SELECT pg_terminate_backend(%s)",
                (backend_waiting_for_standby(admin, fault_app.application_name),),
            )
        with pytest.raises(db.DatabaseUnavailableError, match="outcome unknown"):
            failed.result(timeout=20)
    with fault_app.admin() as admin:
        assert lease(admin, metrics.JOB.name)[0] is None  # the acquire applied; given back
    rerun = run_job(metrics.JOB)
    assert rerun["complete"] is True and "skipped" not in rerun
