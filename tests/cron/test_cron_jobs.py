"""Each cron job on seeded data: the right rows change, a second run changes nothing, two runs at
once do the work once, a run out of time stops and the next one finishes. Both lanes.

Times are injected (`run_job(now=…)`), never slept for; overlap is forced with events.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy.exc
from psycopg.types.json import Jsonb
from sqlalchemy import event

from devkit._host import wait_for
from shared import db
from shared.clock import month_start, utcnow
from shared.cron import metrics, prune, reset_usage, rollup, trials, webhook_retry
from shared.cron.runner import LEASE_HELD, LeaseLostError, run_job
from shared.repositories import reports, users
from tests.support.cron import BudgetContext, configure, count, overlapping_runs, rows
from tests.support.processes import RowLock

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
NAIVE = NOW.replace(tzinfo=None)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture
def small_batches(db_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    configure(monkeypatch, CRON_BATCH_SIZE=10)
    return db_env


# --------------------------------------------------------------------------- reset_monthly_usage


def seed_users(
    conn: psycopg.Connection[Any], n: int, *, reset_at: datetime, this_month: int, prefix: str
) -> None:
    conn.execute(
        """
        INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
                           "monthlyResetAt", "createdAt", "updatedAt")
        SELECT %(p)s || lpad(g::text, 6, '0'), %(p)s || g || '@example.com',
               (ARRAY['FREE','PRO','ENTERPRISE'])[1 + g %% 3]::"UserTier",
               %(m)s, 1000 + g, %(r)s, %(r)s, %(r)s
          FROM generate_series(1, %(n)s) AS g
        """,
        {"p": prefix, "n": n, "m": this_month, "r": naive(reset_at)},
    )


def test_reset_zeroes_exactly_the_stale_counters_once(
    small_batches: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_users(admin_conn, 35, reset_at=NOW - timedelta(days=20), this_month=7, prefix="stale")
    lazily = NOW - timedelta(minutes=2)  # reset by a request on Dec 1, then counted into
    seed_users(admin_conn, 5, reset_at=lazily, this_month=3, prefix="fresh")
    before = rows(admin_conn, "users")

    summary = run_job(reset_usage.JOB, now=NOW)
    assert (summary["processed"], summary["complete"], summary["batches"]) == (35, True, 5)
    stale = admin_conn.execute(
        """SELECT DISTINCT "keywordSearchesThisMonth", "monthlyResetAt", "updatedAt"
           FROM users WHERE id LIKE 'stale%'"""
    ).fetchall()
    assert stale == [(0, NAIVE, NAIVE)]
    fresh = admin_conn.execute(
        """SELECT DISTINCT "keywordSearchesThisMonth", "monthlyResetAt" FROM users
           WHERE id LIKE 'fresh%'"""
    ).fetchall()
    assert fresh == [(3, naive(lazily))]
    totals = admin_conn.execute('SELECT sum("keywordSearchesTotal") FROM users').fetchone()
    assert totals == (sum(r[4] for r in before),)  # lifetime totals untouched

    after = rows(admin_conn, "users")
    again = run_job(reset_usage.JOB, now=NOW + timedelta(hours=3))
    assert (again["processed"], again["complete"]) == (0, True)
    assert rows(admin_conn, "users") == after


def test_reset_overlapping_runs_do_the_work_once(
    small_batches: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_users(admin_conn, 25, reset_at=NOW - timedelta(days=40), this_month=4, prefix="u")
    first, second = overlapping_runs(reset_usage.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD and second["processed"] == 0
    assert first["processed"] == 25
    assert count(admin_conn, 'SELECT count(*) FROM users WHERE "keywordSearchesThisMonth" > 0') == 0


def test_reset_out_of_time_stops_and_the_next_run_finishes(
    small_batches: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_users(admin_conn, 35, reset_at=NOW - timedelta(days=20), this_month=7, prefix="u")
    partial = run_job(reset_usage.JOB, now=NOW, context=BudgetContext(checks=2))
    assert (partial["processed"], partial["batches"], partial["complete"]) == (20, 2, False)
    assert (
        count(admin_conn, 'SELECT count(*) FROM users WHERE "keywordSearchesThisMonth" = 7') == 15
    )
    rest = run_job(reset_usage.JOB, now=NOW + timedelta(minutes=1))
    assert (rest["processed"], rest["complete"]) == (15, True)
    assert count(admin_conn, 'SELECT count(*) FROM users WHERE "keywordSearchesThisMonth" = 7') == 0


def test_reset_racing_concurrent_increments_loses_nothing(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests count keywords (with the lazy reset) while the job resets the same rows.

    Whichever touches a row first in the new month resets it; the other sees it current. So
    every user must end with exactly the increments made to it this month, and its total
    with all of them: a lost update or a double reset would show as a smaller number.
    """
    configure(monkeypatch, CRON_BATCH_SIZE=7, DB_POOL_SIZE=8)
    db.dispose_engine()
    now = utcnow()
    users_n, workers, per_worker = 120, 6, 60
    seed_users(
        admin_conn,
        users_n,
        reset_at=month_start(now) - timedelta(days=3),
        this_month=50,
        prefix="r",
    )
    ids = [f"r{i:06d}" for i in range(1, users_n + 1)]
    # Requests race the job on the first half (the job's first batches, in id order); the second
    # half is the job's alone, so it always runs many batches however fast the requests are.
    raced = ids[: users_n // 2]
    initial = dict(admin_conn.execute('SELECT id, "keywordSearchesTotal" FROM users').fetchall())
    made: list[dict[str, int]] = [{} for _ in range(workers)]
    start = threading.Barrier(workers + 1)
    job_done = threading.Event()
    errors: list[BaseException] = []

    def increment(slot: int) -> None:
        rng = random.Random(slot)
        try:
            start.wait(30)
            done = 0
            while done < per_worker or not job_done.is_set():
                user_id = rng.choice(raced)
                db.run(lambda s, u=user_id: users.increment_usage(s, u, 1))
                made[slot][user_id] = made[slot].get(user_id, 0) + 1
                done += 1
                if done > per_worker * 50:
                    break
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=increment, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        start.wait(30)
        summary = run_job(reset_usage.JOB)
    finally:
        job_done.set()
        for thread in threads:
            thread.join(120)
        db.dispose_engine()
    assert not errors, errors
    assert summary["complete"] is True and summary["batches"] > 5
    expected = {user_id: 0 for user_id in ids}
    for counts in made:
        for user_id, n in counts.items():
            expected[user_id] += n
    final = {
        user_id: (this_month, total, reset_at)
        for user_id, this_month, total, reset_at in admin_conn.execute(
            'SELECT id, "keywordSearchesThisMonth", "keywordSearchesTotal", "monthlyResetAt" '
            "FROM users"
        )
    }
    assert {u: v[0] for u, v in final.items()} == expected
    assert {u: v[1] for u, v in final.items()} == {u: initial[u] + expected[u] for u in ids}
    assert all(v[2] >= naive(month_start(now)) for v in final.values())
    # Typically some rows are reset by the job and others lazily by a request first.
    increments = sum(sum(counts.values()) for counts in made)
    print(
        f"\nreset race: the job reset {summary['processed']} of {users_n} users in "
        f"{summary['batches']} batches while requests made {increments} increments"
    )
    assert summary["processed"] <= users_n


# --------------------------------------------------------------------------- expire_trials


def test_expire_trials_counts_and_changes_nothing(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    def user(uid: str, tier: str, ends: datetime | None) -> None:
        admin_conn.execute(
            'INSERT INTO users (id, email, tier, "trialEndsAt", "updatedAt") '
            'VALUES (%s, %s, %s::"UserTier", %s, %s)',
            (uid, f"{uid}@example.com", tier, ends and naive(ends), NAIVE),
        )

    user("old", "FREE", NOW - timedelta(days=3))
    user("recent1", "FREE", NOW - timedelta(minutes=10))
    user("recent2", "FREE", NOW - timedelta(minutes=50))
    user("future", "FREE", NOW + timedelta(days=2))
    user("pro", "PRO", NOW - timedelta(minutes=5))
    before = rows(admin_conn, "users")

    summary = run_job(trials.JOB, now=NOW)
    assert summary["expiredTrials"] == 3 and summary["expiredSinceLastRun"] == 2
    assert (summary["processed"], summary["rowsChanged"], summary["complete"]) == (2, 0, True)
    assert rows(admin_conn, "users") == before
    again = run_job(trials.JOB, now=NOW)
    assert (again["processed"], again["expiredTrials"]) == (0, 3)
    later = run_job(trials.JOB, now=NOW + timedelta(days=2, minutes=1))
    assert (later["processed"], later["expiredTrials"]) == (1, 4)  # "future" ended since
    assert rows(admin_conn, "users") == before


def test_expire_trials_overlap_and_budget(db_env: str, admin_conn: psycopg.Connection[Any]) -> None:
    _, second = overlapping_runs(trials.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD
    out = run_job(trials.JOB, now=NOW + timedelta(hours=1), context=BudgetContext(checks=0))
    assert (out["batches"], out["complete"]) == (0, False)
    assert run_job(trials.JOB, now=NOW + timedelta(hours=1))["complete"] is True


# --------------------------------------------------------------------------- prune


def seed_prunable(conn: psycopg.Connection[Any], old: int, new: int, tag: str = "") -> None:
    """`old` rows past every retention and `new` recent ones, in each pruned table."""
    ages = ((f"old{tag}", old, timedelta(days=500)), (f"new{tag}", new, timedelta(days=1)))
    for label, n, age in ages:
        at = naive(NOW - age)
        params = {"n": n, "at": at, "l": label}
        conn.execute(
            """INSERT INTO search_history (id, keywords, location, language, "matchType",
                   provider, "responseTime", "searchedAt")
               SELECT 'sh-' || %(l)s || '-' || g, ARRAY['kw'], 'US', 'en', 'broad', 'mock', 10,
                      %(at)s
               FROM generate_series(1, %(n)s) g""",
            params,
        )
        conn.execute(
            """INSERT INTO api_usage (id, endpoint, method, "statusCode", duration, timestamp)
               SELECT 'au-' || %(l)s || '-' || g, '/api/x', 'GET', 200, 5, %(at)s
               FROM generate_series(1, %(n)s) g""",
            params,
        )
        conn.execute(
            """INSERT INTO system_metrics (id, metric, value, timestamp)
               SELECT 'sm-' || %(l)s || '-' || g, 'm' || (g %% 3), g, %(at)s
               FROM generate_series(1, %(n)s) g""",
            params,
        )
        conn.execute(
            """INSERT INTO webhook_events (id, type, processed, "createdAt", "lastAttemptAt")
               SELECT 'we-' || %(l)s || '-' || g, 'invoice.paid', g %% 2 = 0, %(at)s, %(at)s
               FROM generate_series(1, %(n)s) g""",
            params,
        )


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {
        table: count(conn, f"SELECT count(*) FROM {table}")
        for table in ("search_history", "api_usage", "webhook_events", "system_metrics")
    }


def test_prune_deletes_past_retention_only_and_twice_is_once(
    small_batches: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_prunable(admin_conn, old=24, new=6)
    summary = run_job(prune.JOB, now=NOW)
    # Old unprocessed webhook events (odd ids) are kept: they are still owed a retry.
    assert summary["deleted"] == {
        "search_history": 24,
        "api_usage": 24,
        "webhook_events": 12,
        "system_metrics": 24,
    }
    assert (summary["processed"], summary["complete"]) == (84, True)
    assert table_counts(admin_conn) == {
        "search_history": 6,
        "api_usage": 6,
        "webhook_events": 18,
        "system_metrics": 6,
    }
    assert count(admin_conn, "SELECT count(*) FROM webhook_events WHERE id LIKE 'we-old-%'") == 12
    assert (
        count(
            admin_conn, "SELECT count(*) FROM webhook_events WHERE processed AND id LIKE 'we-old-%'"
        )
        == 0
    )
    again = run_job(prune.JOB, now=NOW)
    assert (again["processed"], again["complete"]) == (0, True)


def test_prune_uses_each_tables_retention_and_zero_keeps_forever(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(
        monkeypatch,
        RETENTION_SEARCH_HISTORY_DAYS=0,  # forever
        RETENTION_API_USAGE_DAYS=600,  # longer than the old rows' age
        RETENTION_SYSTEM_METRICS_DAYS=1,  # shorter than the new rows' age (a day and a bit)
    )
    seed_prunable(admin_conn, old=5, new=5)
    summary = run_job(prune.JOB, now=NOW + timedelta(hours=1))
    assert summary["deleted"] == {"api_usage": 0, "webhook_events": 2, "system_metrics": 10}
    counts = table_counts(admin_conn)
    assert (counts["search_history"], counts["api_usage"], counts["system_metrics"]) == (10, 10, 0)


def test_prune_overlap_and_budget(small_batches: str, admin_conn: psycopg.Connection[Any]) -> None:
    seed_prunable(admin_conn, old=24, new=0)
    first, second = overlapping_runs(prune.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD and first["processed"] == 84
    seed_prunable(admin_conn, old=24, new=0, tag="2")
    partial = run_job(prune.JOB, now=NOW, context=BudgetContext(checks=6))
    # One batch per log for the partitions ahead, then three batches of 10: 10 + 10 + 4 of
    # search_history (its legacy partition), then no time for its default partition.
    assert (partial["processed"], partial["batches"], partial["complete"]) == (24, 6, False)
    assert partial["deleted"] == {"search_history": 24}
    rest = run_job(prune.JOB, now=NOW)
    assert (rest["processed"], rest["complete"]) == (60, True)
    assert table_counts(admin_conn) == {
        "search_history": 0,
        "api_usage": 0,
        "webhook_events": 24,  # unprocessed ones of both seeds
        "system_metrics": 0,
    }


# --------------------------------------------------------------------------- retry_webhooks


def subscription_event(
    event_id: str, customer: str, status: str, created: datetime
) -> dict[str, Any]:
    """A Stripe subscription event in the ledger's stored form (`StripeEvent.payload()`)."""
    return {
        "id": event_id,
        "type": "customer.subscription.updated",
        "created": int(created.timestamp()),
        "data": {
            "object": {
                "id": f"sub_{customer}",
                "customer": customer,
                "status": status,
                "items": {"data": [{"price": {"id": "price_pro", "nickname": "Pro"}}]},
            }
        },
    }


def ledger(
    conn: psycopg.Connection[Any],
    event_id: str,
    payload: dict[str, Any] | None,
    *,
    attempts: int = 1,
    last_attempt: datetime,
    provider: str = "stripe",
) -> None:
    conn.execute(
        """INSERT INTO webhook_events (id, type, provider, processed, attempts, "lastAttemptAt",
                                       error, payload, "createdAt")
           VALUES (%s, %s, %s, false, %s, %s, 'BillingUserNotFoundError: earlier', %s, %s)""",
        (
            event_id,
            (payload or {}).get("type", "x"),
            provider,
            attempts,
            naive(last_attempt),
            Jsonb(payload) if payload else None,
            naive(last_attempt),
        ),
    )


@pytest.fixture
def billing_on(db_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    configure(
        monkeypatch,
        BILLING_ENABLED="true",
        STRIPE_PRICE_PRO="price_pro",  # tests.support.stripe_events' default price
        WEBHOOK_RETRY_BASE_DELAY_S=300,
    )
    return db_env


def user_with_customer(conn: psycopg.Connection[Any], user_id: str, customer: str) -> None:
    conn.execute(
        'INSERT INTO users (id, email, "stripeCustomerId", "updatedAt") VALUES (%s, %s, %s, %s)',
        (user_id, f"{user_id}@example.com", customer, NAIVE),
    )


def test_retry_applies_due_events_through_billing_and_records_failures(
    billing_on: str, admin_conn: psycopg.Connection[Any]
) -> None:
    user_with_customer(admin_conn, "user_a", "cus_a")
    hour_ago = NOW - timedelta(hours=1)
    ledger(
        admin_conn,
        "evt_due",
        subscription_event("evt_due", "cus_a", "active", hour_ago),
        last_attempt=hour_ago,
    )
    ledger(
        admin_conn,
        "evt_nouser",
        subscription_event("evt_nouser", "cus_x", "active", hour_ago),
        last_attempt=hour_ago,
    )
    ledger(
        admin_conn,
        "evt_backoff",
        subscription_event("evt_backoff", "cus_a", "active", NOW),
        attempts=5,
        last_attempt=NOW - timedelta(minutes=10),
    )  # backoff: 80 min
    ledger(
        admin_conn,
        "evt_exhausted",
        subscription_event("evt_exhausted", "cus_a", "canceled", hour_ago),
        attempts=10,
        last_attempt=NOW - timedelta(days=30),
    )

    summary = run_job(webhook_retry.JOB, now=NOW)
    assert summary["outcomes"] == {"applied": 1, "failed": 1}
    assert (summary["processed"], summary["complete"]) == (2, True)
    tier, status, plan = (
        admin_conn.execute(
            'SELECT tier, "subscriptionStatus", "subscriptionPlan" FROM users WHERE id = %s',
            ("user_a",),
        ).fetchone()
        or ()
    )
    assert (tier, status, plan) == ("PRO", "active", "Pro")
    state = dict(
        (row[0], row[1:])
        for row in admin_conn.execute(
            'SELECT id, processed, attempts, "lastAttemptAt", error FROM webhook_events'
        )
    )
    assert state["evt_due"][0] is True
    assert state["evt_nouser"][:3] == (False, 2, NAIVE)
    assert "BillingUserNotFoundError" in state["evt_nouser"][3]
    assert state["evt_backoff"][:2] == (False, 5) and state["evt_exhausted"][:2] == (False, 10)

    before = rows(admin_conn, "webhook_events")
    again = run_job(webhook_retry.JOB, now=NOW + timedelta(minutes=1))
    assert (again["processed"], again["complete"]) == (0, True)  # the failure is backing off
    assert rows(admin_conn, "webhook_events") == before
    # Once its backoff (300 s * 2^1) is over and the user exists, the failed event applies.
    user_with_customer(admin_conn, "user_x", "cus_x")
    later = run_job(webhook_retry.JOB, now=NOW + timedelta(minutes=11))
    assert later["outcomes"] == {"applied": 1}
    assert count(admin_conn, "SELECT count(*) FROM users WHERE tier = 'PRO'") == 2


def test_retry_does_nothing_while_billing_is_off(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    user_with_customer(admin_conn, "user_a", "cus_a")
    hour_ago = NOW - timedelta(hours=1)
    ledger(
        admin_conn,
        "evt_due",
        subscription_event("evt_due", "cus_a", "active", hour_ago),
        last_attempt=hour_ago,
    )
    before = rows(admin_conn, "webhook_events")
    summary = run_job(webhook_retry.JOB, now=NOW)
    assert summary["skipped"] == "billing disabled" and summary["processed"] == 0
    assert rows(admin_conn, "webhook_events") == before


def test_retry_records_events_it_cannot_rerun_and_reaches_the_due_ones_behind_them(
    billing_on: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ledger rows that can never be re-run (no stored payload, as a legacy or erased row has;
    a payload without `created`) ahead of a due event, more of them than a batch: each failure
    is recorded, so the rows back off and stop at the limit, and the event behind them is
    applied in the same run. Other providers' rows are not the cron's and stay as they are."""
    configure(monkeypatch, CRON_BATCH_SIZE=10, WEBHOOK_RETRY_MAX_ATTEMPTS=3)
    day_ago = NOW - timedelta(days=1)
    for i in range(25):
        ledger(admin_conn, f"evt_bad_{i:02}", None, last_attempt=day_ago - timedelta(seconds=i))
    undated = subscription_event("evt_undated", "cus_a", "active", day_ago)
    del undated["created"]
    ledger(admin_conn, "evt_undated", undated, last_attempt=day_ago)
    ledger(admin_conn, "clerk_1", None, last_attempt=day_ago, provider="clerk")
    user_with_customer(admin_conn, "user_a", "cus_a")
    hour_ago = NOW - timedelta(hours=1)
    ledger(
        admin_conn,
        "evt_good",
        subscription_event("evt_good", "cus_a", "active", hour_ago),
        last_attempt=hour_ago,
    )
    clerk_before = rows(admin_conn, "webhook_events")[0]

    summary = run_job(webhook_retry.JOB, now=NOW)
    assert summary["outcomes"] == {"applied": 1, "failed": 26}
    assert (summary["processed"], summary["complete"]) == (27, True)

    def state(event_id: str) -> tuple[Any, ...]:
        row = admin_conn.execute(
            'SELECT processed, attempts, "lastAttemptAt", error FROM webhook_events WHERE id = %s',
            (event_id,),
        ).fetchone()
        assert row is not None
        return tuple(row)

    assert state("evt_good")[0] is True
    assert state("evt_bad_07") == (
        False,
        2,
        NAIVE,
        "InvalidEventError: webhook event evt_bad_07 has no stored Stripe payload",
    )
    assert state("evt_undated") == (
        False,
        2,
        NAIVE,
        "InvalidEventError: event created time missing",
    )
    assert rows(admin_conn, "webhook_events")[0] == clerk_before

    # Backing off (300 s * 2^1), then the last attempt, then never again.
    assert run_job(webhook_retry.JOB, now=NOW + timedelta(minutes=9))["processed"] == 0
    last = run_job(webhook_retry.JOB, now=NOW + timedelta(minutes=10))
    assert (last["outcomes"], last["complete"]) == ({"failed": 26}, True)
    assert state("evt_bad_07")[:3] == (False, 3, naive(NOW + timedelta(minutes=10)))
    assert run_job(webhook_retry.JOB, now=NOW + timedelta(days=30))["processed"] == 0


def test_retry_overlap_and_budget(billing_on: str, admin_conn: psycopg.Connection[Any]) -> None:
    for i in range(3):
        user_with_customer(admin_conn, f"user_{i}", f"cus_{i}")
        created = NOW - timedelta(hours=2)
        ledger(
            admin_conn,
            f"evt_{i}",
            subscription_event(f"evt_{i}", f"cus_{i}", "active", created),
            last_attempt=created,
        )
    partial = run_job(webhook_retry.JOB, now=NOW, context=BudgetContext(checks=2))
    assert (partial["processed"], partial["complete"]) == (1, False)
    first, second = overlapping_runs(webhook_retry.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD
    assert first["outcomes"] == {"applied": 2} and first["complete"] is True
    assert count(admin_conn, "SELECT count(*) FROM webhook_events WHERE processed") == 3


# --------------------------------------------------------------------------- collect_metrics


def seed_searches(
    conn: psycopg.Connection[Any],
    at: datetime,
    n: int,
    *,
    provider: str = "mock",
    hit_every: int = 2,
    response: int = 100,
    tag: str = "s",
) -> None:
    conn.execute(
        """INSERT INTO search_history (id, keywords, location, language, "matchType", provider,
               "cacheHit", "responseTime", "keywordCount", "searchedAt")
           SELECT %(t)s || g, ARRAY['a','b'], 'US', 'en', 'broad', %(p)s, g %% %(h)s = 0,
                  %(r)s, 2, %(at)s
           FROM generate_series(1, %(n)s) g""",
        {
            "t": f"{tag}-{provider}-{at:%Y%m%d%H%M%S}-",
            "p": provider,
            "h": hit_every,
            "r": response,
            "at": naive(at),
            "n": n,
        },
    )


def metric_rows(conn: psycopg.Connection[Any]) -> dict[str, tuple[float, Any, datetime]]:
    return {
        metric: (value, tags, stamp)
        for metric, value, tags, stamp in conn.execute(
            "SELECT metric, value, tags, timestamp FROM system_metrics"
        )
    }


@pytest.fixture
def count_inserts(db_env: str) -> Iterator[list[str]]:
    """Statements that INSERT into system_metrics, as the engine sends them."""
    seen: list[str] = []
    engine = db.get_engine()

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SYSTEM_METRICS"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", spy)
    yield seen
    event.remove(engine, "before_cursor_execute", spy)


def test_metrics_records_one_interval_in_one_insert(
    count_inserts: list[str],
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    upstash: Any,
) -> None:
    from shared.redis import reset_redis

    configure(
        monkeypatch, UPSTASH_REDIS_REST_URL=upstash.url, UPSTASH_REDIS_REST_TOKEN=upstash.token
    )
    reset_redis()
    at = datetime(2026, 11, 30, 12, 7, 30, tzinfo=UTC)  # interval [12:00, 12:05)
    seed_searches(admin_conn, datetime(2026, 11, 30, 12, 1, tzinfo=UTC), 4)  # 2 hits
    seed_searches(admin_conn, datetime(2026, 11, 30, 11, 59, tzinfo=UTC), 9)  # before
    seed_searches(admin_conn, datetime(2026, 11, 30, 12, 5, tzinfo=UTC), 9)  # after
    try:
        summary = run_job(metrics.JOB, now=at)
    finally:
        reset_redis()
    assert len(count_inserts) == 1
    recorded = metric_rows(admin_conn)
    assert summary["processed"] == len(recorded) and summary["complete"] is True
    end = datetime(2026, 11, 30, 12, 5)
    assert {stamp for _, _, stamp in recorded.values()} == {end}
    assert recorded["searches.count"][:2] == (4.0, {"windowSeconds": 300})
    assert recorded["searches.cache_hit_rate"][0] == 0.5
    assert recorded["searches.avg_response_ms"][0] == 100.0
    assert recorded["redis.reachable"][:2] == (1.0, {"configured": True})
    assert "redis.response_ms" in recorded
    assert recorded["db.size_bytes"][0] > 0
    assert recorded["db.connections"][0] >= 1 and recorded["db.connections"][1]["max"] > 0
    assert {f"db.rows.{t}" for t in ("users", "search_history", "cron_leases")} <= set(recorded)

    again = run_job(metrics.JOB, now=at + timedelta(minutes=1))  # same interval
    assert again["skipped"] == "interval already collected" and again["processed"] == 0
    assert len(count_inserts) == 1 and len(metric_rows(admin_conn)) == len(recorded)

    # After missed runs the next one covers the whole gap, once.
    gap = run_job(metrics.JOB, now=datetime(2026, 11, 30, 12, 21, tzinfo=UTC))
    assert gap["processed"] > 0
    # The summary's times are the API's form, as every JSON timestamp the bundle writes.
    assert (gap["intervalStart"], gap["intervalEnd"]) == (
        "2026-11-30T12:05:00.000Z",
        "2026-11-30T12:20:00.000Z",
    )
    counts = admin_conn.execute(
        "SELECT value, tags FROM system_metrics WHERE metric = 'searches.count' ORDER BY timestamp"
    ).fetchall()
    assert counts == [(4.0, {"windowSeconds": 300}), (9.0, {"windowSeconds": 900})]


def test_metrics_estimate_the_rows_of_plain_and_partitioned_tables(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Plain tables count their own estimate (they used to report 0: `pg_partition_tree` lists
    nothing for them), partitioned logs the sum over their partitions, and a table never
    analysed (reltuples -1) the statistics' live rows."""
    seed_users(admin_conn, 50, reset_at=NOW, this_month=0, prefix="est")
    seed_searches(admin_conn, NOW - timedelta(days=1), 4)
    admin_conn.execute("ANALYZE users")
    admin_conn.execute("ANALYZE search_history")  # what autovacuum does for each partition
    admin_conn.execute("CREATE TABLE zz_never_analysed (id int)")
    try:
        with admin_conn.transaction():  # its statistics are sent when the session goes idle
            admin_conn.execute("INSERT INTO zz_never_analysed SELECT generate_series(1, 7)")
            admin_conn.execute("SELECT pg_stat_force_next_flush()")
        run_job(metrics.JOB, now=NOW)
    finally:
        admin_conn.execute("DROP TABLE zz_never_analysed")
    recorded = metric_rows(admin_conn)
    assert recorded["db.rows.users"][:2] == (50.0, {"table": "users"})
    assert recorded["db.rows.search_history"][0] == 4.0
    assert recorded["db.rows.zz_never_analysed"][0] == 7.0


def test_metrics_reports_redis_unconfigured_or_unreachable(
    db_env: str,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    breaker_clock: object,
) -> None:
    from shared.redis import get_redis, reset_redis
    from shared.redis_breaker import FAILURE_THRESHOLD

    configure(monkeypatch, UPSTASH_REDIS_REST_URL=None, UPSTASH_REDIS_REST_TOKEN=None)
    reset_redis()
    run_job(metrics.JOB, now=NOW)
    assert metric_rows(admin_conn)["redis.reachable"][:2] == (0.0, {"configured": False})
    assert "searches.cache_hit_rate" not in metric_rows(admin_conn)  # no searches: no rate

    configure(
        monkeypatch,
        UPSTASH_REDIS_REST_URL="http://127.0.0.1:9",
        UPSTASH_REDIS_REST_TOKEN="t",
        REDIS_TIMEOUT_S="0.5",
    )
    reset_redis()
    try:
        run_job(metrics.JOB, now=NOW + timedelta(minutes=5))
        assert latest_reachable(admin_conn) == (0.0, {"configured": True})
        client = get_redis()
        assert client is not None
        for _ in range(FAILURE_THRESHOLD - 1):  # with the run's, the failures that open it
            with pytest.raises(httpx.ConnectError):
                client.ping()
        run_job(metrics.JOB, now=NOW + timedelta(minutes=10))  # no PING sent: the breaker is open
        assert latest_reachable(admin_conn) == (0.0, {"configured": True, "breakerOpen": True})
    finally:
        reset_redis()


def latest_reachable(admin_conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return admin_conn.execute(
        "SELECT value, tags FROM system_metrics WHERE metric = 'redis.reachable' "
        "ORDER BY timestamp DESC LIMIT 1"
    ).fetchone()


def test_metrics_overlap_and_budget(db_env: str, admin_conn: psycopg.Connection[Any]) -> None:
    out = run_job(metrics.JOB, now=NOW, context=BudgetContext(checks=0))
    assert (out["processed"], out["complete"]) == (0, False)
    assert count(admin_conn, "SELECT count(*) FROM system_metrics") == 0
    first, second = overlapping_runs(metrics.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD and first["processed"] > 0
    assert count(admin_conn, "SELECT count(DISTINCT timestamp) FROM system_metrics") == 1


def test_metrics_recorded_by_a_run_that_lost_its_lease_are_rolled_back(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The samples and the interval's mark commit together or not at all."""

    def overtaken(at: datetime) -> list[Any]:
        admin_conn.execute("UPDATE cron_leases SET holder = 'thief' WHERE job = 'collect_metrics'")
        return []

    monkeypatch.setattr(metrics, "redis_samples", overtaken)
    with pytest.raises(LeaseLostError):
        run_job(metrics.JOB, now=NOW)
    assert count(admin_conn, "SELECT count(*) FROM system_metrics") == 0
    state = admin_conn.execute("SELECT state FROM cron_leases").fetchone()
    assert state == (None,)


# --------------------------------------------------------------------------- rollup

TODAY = date(2026, 11, 30)
AT = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)


def at_day(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def expected_rollups(conn: psycopg.Connection[Any], since: date) -> list[tuple[Any, ...]]:
    """The aggregates recomputed independently, straight from search_history, through today."""
    return conn.execute(
        """SELECT "searchedAt"::date, provider, count(*)::int, sum("keywordCount")::bigint,
                  (count(*) FILTER (WHERE "cacheHit"))::int, sum("responseTime")::bigint,
                  avg("responseTime")::float8
           FROM search_history WHERE "searchedAt" >= %s AND "searchedAt" < %s
           GROUP BY 1, 2 ORDER BY 1, 2""",
        (since, TODAY + timedelta(days=1)),
    ).fetchall()


def actual_rollups(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT day, provider, searches, keywords, "cacheHits", "responseTimeTotal",
                  "avgResponseTime" FROM search_daily_rollups ORDER BY 1, 2"""
    ).fetchall()


def seed_three_days(conn: psycopg.Connection[Any]) -> None:
    for offset, (mock, live) in enumerate(((5, 2), (3, 4), (6, 1))):
        day = TODAY - timedelta(days=2 - offset)
        seed_searches(conn, at_day(day), mock, provider="mock", response=100 + offset)
        seed_searches(
            conn,
            at_day(day, 11),
            live,
            provider="dataforseo",
            hit_every=3,
            response=300 + 7 * offset,
        )


def test_rollup_backfills_then_recomputes_only_touched_days(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_three_days(admin_conn)
    first = run_job(rollup.JOB, now=AT)
    assert (first["processed"], first["daysRecomputed"], first["complete"]) == (6, 3, True)
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, TODAY - timedelta(days=2))

    stamps = rows(admin_conn, "search_daily_rollups", "day, provider")
    again = run_job(rollup.JOB, now=AT + timedelta(hours=1))
    assert (again["processed"], again["daysRecomputed"]) == (0, 1)  # today only, unchanged
    assert rows(admin_conn, "search_daily_rollups", "day, provider") == stamps

    # New searches today, and one provider's searches of today all gone (e.g. erased).
    seed_searches(admin_conn, at_day(TODAY, 19), 3, provider="mock", tag="late")
    admin_conn.execute(
        "DELETE FROM search_history WHERE provider = 'dataforseo' AND \"searchedAt\" >= %s",
        (TODAY,),
    )
    touched = run_job(rollup.JOB, now=AT + timedelta(hours=2))
    assert touched["processed"] == 2  # today's mock row updated, its dataforseo row removed
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, TODAY - timedelta(days=2))

    # A row slipped into an old day (a legacy import) is picked up by a full run only.
    seed_searches(admin_conn, at_day(TODAY - timedelta(days=2)), 1, provider="mock", tag="imp")
    assert run_job(rollup.JOB, now=AT + timedelta(hours=3))["processed"] == 0
    full = run_job(rollup.JOB, now=AT + timedelta(hours=3), options={"full": "true"})
    assert (full["processed"], full["daysRecomputed"]) == (1, 3)
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, TODAY - timedelta(days=2))


def test_rollup_never_touches_days_past_history_retention(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_three_days(admin_conn)
    run_job(rollup.JOB, now=AT)
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1)
    run_job(prune.JOB, now=AT)  # deletes the history of two days ago
    full = run_job(rollup.JOB, now=AT + timedelta(hours=1), options={"full": True})
    assert full["processed"] == 0
    assert len(actual_rollups(admin_conn)) == 6  # the pruned day's aggregates are kept


def test_the_rollup_after_midnight_still_counts_the_last_searches_of_the_day_before(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's last rollup runs at 23:20; searches after it are counted by the 00:20 run of
    the next day: the prune (03:30) has deleted nothing of that day yet, whatever the
    retention, so the day is recomputed, not only filled. Once the prune's cutoff reaches the
    day, its totals are kept as they are."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1)
    day = TODAY
    run_job(prune.JOB, now=datetime(2026, 11, 30, 3, 30, tzinfo=UTC))  # cutoff: 29th, 03:30
    seed_searches(admin_conn, at_day(day, 1), 3, provider="mock")
    run_job(rollup.JOB, now=datetime(2026, 11, 30, 23, 20, tzinfo=UTC))
    seed_searches(admin_conn, datetime(2026, 11, 30, 23, 40, tzinfo=UTC), 2, provider="mock")
    run_job(rollup.JOB, now=datetime(2026, 12, 1, 0, 20, tzinfo=UTC))
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, day)
    assert actual_rollups(admin_conn)[0][:3] == (day, "mock", 5)

    run_job(prune.JOB, now=datetime(2026, 12, 1, 3, 30, tzinfo=UTC))  # cutoff: the 30th, 03:30
    assert count(admin_conn, "SELECT count(*) FROM search_history") == 2  # the 23:40 ones
    run_job(rollup.JOB, now=datetime(2026, 12, 1, 4, 20, tzinfo=UTC), options={"full": True})
    assert actual_rollups(admin_conn)[0][:3] == (day, "mock", 5)


def test_a_full_run_rolls_up_history_older_than_retention_before_the_prune_deletes_it(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill of old history (a legacy import) is rolled up by the full run after it, so
    its aggregates outlive the rows the prune then deletes. Before the retention cutoff only
    the days that have rows are visited: a stray row from 1900 costs one day, not 46,000."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1)
    seed_three_days(admin_conn)
    for old in (date(1900, 1, 1), TODAY - timedelta(days=30)):
        seed_searches(admin_conn, at_day(old), 2, provider="mock", tag="old")
    full = run_job(rollup.JOB, now=AT, options={"full": True})
    assert (full["daysRecomputed"], full["complete"]) == (5, True)  # 4 filled, then today
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, date(1900, 1, 1))
    before = actual_rollups(admin_conn)
    run_job(prune.JOB, now=AT)
    kept = 'SELECT count(*) FROM search_history WHERE "searchedAt" < %s'
    assert count(admin_conn, kept, TODAY - timedelta(days=1)) == 0
    again = run_job(rollup.JOB, now=AT + timedelta(hours=1), options={"full": True})
    assert (again["processed"], again["daysRecomputed"]) == (0, 1)  # today's: the oldest left
    assert actual_rollups(admin_conn) == before


def test_no_rollup_lowers_the_totals_of_a_partly_pruned_day(
    db_env: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prune deletes in batches, in no order, and may run out of time. A rollup after an
    interrupted prune finds days with only some rows left: their totals are kept, never
    recomputed lower, nor after the next prune has deleted the rest."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1, CRON_BATCH_SIZE=3)
    seed_three_days(admin_conn)
    old = TODAY - timedelta(days=30)
    seed_searches(admin_conn, at_day(old), 4, provider="mock", tag="old")
    seed_searches(admin_conn, at_day(old, 11), 2, provider="dataforseo", tag="old")
    run_job(rollup.JOB, now=AT, options={"full": True})
    before = actual_rollups(admin_conn)
    # Cutoff the 29th, 18:00: 20 rows past it. The partitions ahead, then two batches of 3.
    stopped = run_job(prune.JOB, now=AT, context=BudgetContext(checks=5))
    assert (stopped["deleted"], stopped["complete"]) == ({"search_history": 6}, False)
    state = admin_conn.execute("SELECT state FROM cron_leases WHERE job = 'prune'").fetchone()
    assert state == ({prune.PRUNED_THROUGH: {"search_history": "2026-11-29"}},)
    for options in ({}, {"full": True}):
        again = run_job(rollup.JOB, now=AT + timedelta(hours=1), options=options)
        assert (again["processed"], again["complete"]) == (0, True)
        assert actual_rollups(admin_conn) == before
    run_job(prune.JOB, now=AT)
    assert count(admin_conn, "SELECT count(*) FROM search_history") == 7  # today's
    full = run_job(rollup.JOB, now=AT + timedelta(hours=2), options={"full": True})
    assert full["processed"] == 0
    assert actual_rollups(admin_conn) == before


@pytest.mark.parametrize("prune_row", ["none", "unrecorded"])
def test_without_the_prunes_record_days_past_retention_are_only_filled(
    db_env: str,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    prune_row: str,
) -> None:
    """A release before the record pruned without recording (reviewer B): until the prune first
    records, the days before the clock's retention floor are taken as pruned, so a full run
    never lowers the total of a day an earlier prune emptied partly. Later days are recomputed."""
    if prune_row == "unrecorded":  # a lease row as a run that recorded nothing leaves it
        configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=0)
        run_job(prune.JOB, now=AT - timedelta(days=1))
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1)
    old = TODAY - timedelta(days=30)
    seed_searches(admin_conn, at_day(old), 4, provider="mock", tag="old")
    seed_searches(admin_conn, at_day(TODAY), 2, provider="mock")
    run_job(rollup.JOB, now=AT, options={"full": True})
    before = actual_rollups(admin_conn)
    assert [row[:3] for row in before] == [(old, "mock", 4), (TODAY, "mock", 2)]
    # The earlier release's prune, interrupted: half the old day's rows gone, nothing recorded.
    gone = admin_conn.execute(
        """DELETE FROM search_history WHERE id IN (SELECT id FROM search_history
               WHERE "searchedAt" < %s ORDER BY id LIMIT 2)""",
        (TODAY,),
    )
    assert gone.rowcount == 2
    seed_searches(admin_conn, at_day(TODAY, 12), 1, provider="mock", tag="late")
    run_job(rollup.JOB, now=AT + timedelta(hours=1), options={"full": True})
    assert [row[:3] for row in actual_rollups(admin_conn)] == [(old, "mock", 4), (TODAY, "mock", 3)]


def test_a_rollup_recomputing_a_day_the_prune_then_reaches_counts_the_day_as_it_was(
    db_env: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's statement reads the prune's record in its own snapshot. Held mid-way (its upsert
    waits on a row lock) while the prune records that day and deletes every row of it, the
    statement still recomputes the day from all its rows, as if it had run before the prune;
    the prune waits for nothing. The next rollup only fills the day: its total stays."""
    configure(monkeypatch, RETENTION_SEARCH_HISTORY_DAYS=1, DB_POOL_SIZE=2)
    day = TODAY - timedelta(days=1)
    run_job(prune.JOB, now=AT - timedelta(days=1))  # records the day before `day`
    seed_searches(admin_conn, at_day(day), 3, provider="mock")
    run_job(rollup.JOB, now=at_day(day, 12))
    seed_searches(admin_conn, at_day(day, 13), 2, provider="mock", tag="late")
    results: list[dict[str, Any]] = []
    held = "SELECT day FROM search_daily_rollups WHERE day = %(d)s"
    with RowLock(direct_database_url, held, {"d": day}) as lock:
        rollup_run = threading.Thread(target=lambda: results.append(run_job(rollup.JOB, now=AT)))
        rollup_run.start()
        try:
            assert wait_for(lambda: waits_on(admin_conn, lock.pid), timeout=30)
            pruned = run_job(prune.JOB, now=AT)  # cutoff: `day`, 18:00
            assert (pruned["deleted"]["search_history"], pruned["complete"]) == (5, True)
            assert results == []  # still held
        finally:
            lock.release()
            rollup_run.join(60)
    assert results[0]["complete"] is True
    assert actual_rollups(admin_conn)[0][:3] == (day, "mock", 5)
    run_job(rollup.JOB, now=AT + timedelta(hours=1), options={"full": True})
    assert actual_rollups(admin_conn)[0][:3] == (day, "mock", 5)


def waits_on(conn: psycopg.Connection[Any], blocker: int) -> bool:
    """Whether a statement on the rollups waits for a lock `blocker` holds."""
    row = conn.execute(
        """SELECT query FROM pg_stat_activity
           WHERE wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))""",
        (blocker,),
    ).fetchone()
    return row is not None and "search_daily_rollups" in row[0]


def test_rollup_out_of_time_resumes_where_it_stopped(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_three_days(admin_conn)
    partial = run_job(rollup.JOB, now=AT, context=BudgetContext(checks=1))
    assert (partial["daysRecomputed"], partial["complete"]) == (1, False)
    state = admin_conn.execute("SELECT state FROM cron_leases WHERE job = 'rollup'").fetchone()
    assert state == ({"nextDay": (TODAY - timedelta(days=1)).isoformat()},)
    _, second = overlapping_runs(rollup.JOB, now=AT)
    assert second["skipped"] == LEASE_HELD
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, TODAY - timedelta(days=2))
    state = admin_conn.execute("SELECT state FROM cron_leases WHERE job = 'rollup'").fetchone()
    assert state is not None
    assert {key: state[0][key] for key in state[0] if key != "reports"} == {
        "watermark": AT.isoformat()
    }  # `reports`: tests/core/test_reports.py


@pytest.mark.parametrize("full", [False, True])
def test_rollup_skips_history_dated_past_any_day_it_can_hold(
    db_env: str, admin_conn: psycopg.Connection[Any], full: bool
) -> None:
    """Rows another writer dated BC, -infinity, after 9999 or infinity (the column holds them,
    Python's dates do not) are no day's: the run rolls up the rest and refreshes the reports."""
    seed_three_days(admin_conn)
    for n, far in enumerate(("0001-12-31 19:00:00 BC", "-infinity", "10000-01-01", "infinity")):
        admin_conn.execute(
            """INSERT INTO search_history (id, keywords, location, language, "matchType",
                   provider, "responseTime", "keywordCount", "searchedAt")
               VALUES (%s, ARRAY['p'], 'US', 'en', 'phrase', 'mock', 1, 1, %s)""",
            (f"far-{n}", far),
        )
    options = {"full": True} if full else {}
    summary = run_job(rollup.JOB, now=AT, options=options)
    assert (summary["daysRecomputed"], summary["complete"]) == (3, True)
    assert summary["reportsRefreshed"] == list(reports.REPORTS)
    assert actual_rollups(admin_conn) == expected_rollups(admin_conn, TODAY - timedelta(days=2))


def test_a_failed_rollup_is_recorded_as_each_reports_failed_refresh(
    db_env: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """A day that cannot be rolled up fails the run (the invocation fails, the next run tries
    again), and the reports it then never refreshed say so, as a failed refresh does: the
    trends route shows `refreshFailedAt` instead of only a growing age."""
    seed_three_days(admin_conn)
    run_job(rollup.JOB, now=AT)
    admin_conn.execute(
        """ALTER TABLE search_daily_rollups
               ADD CONSTRAINT refuse_more CHECK (searches < 5) NOT VALID"""
    )  # today's mock figure (6) becomes 7 below: its upsert is refused
    seed_searches(admin_conn, at_day(TODAY, 19), 1, provider="mock", tag="late")
    later = AT + timedelta(hours=1)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        run_job(rollup.JOB, now=later)
    for report in reports.REPORTS:
        fresh = db.run(partial(reports.freshness, report=report))
        assert fresh == reports.Freshness(refreshed_at=AT, failed_at=later), report
    admin_conn.execute("ALTER TABLE search_daily_rollups DROP CONSTRAINT refuse_more")
    run_job(rollup.JOB, now=later + timedelta(hours=1))
    fresh = db.run(partial(reports.freshness, report=reports.REPORTS[0]))
    assert fresh == reports.Freshness(refreshed_at=later + timedelta(hours=1), failed_at=None)


def test_rollup_with_no_history_is_complete(db_env: str) -> None:
    summary = run_job(rollup.JOB, now=AT)
    assert (summary["processed"], summary["daysRecomputed"], summary["complete"]) == (0, 0, True)
