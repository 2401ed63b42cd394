"""Counters, quotas, get-or-create and the saved-search cap raced over real connections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from threading import Barrier
from typing import Any

import psycopg
import pytest

from shared import config, db
from shared.clock import utcnow
from shared.errors import QuotaExceededError, SavedSearchLimitError
from shared.quotas import Limits
from shared.repositories import reservations, saved_searches, tombstones, users
from shared.repositories.rows import db_time

WORKERS = 20


@pytest.fixture
def wide_pool(db_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One engine with a connection per thread, so the races happen in Postgres."""
    monkeypatch.setenv("DB_POOL_SIZE", str(WORKERS))
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield
    db.dispose_engine()


def race(task: Callable[[int], Any], count: int, workers: int = WORKERS) -> list[Any]:
    """Run `task(i)` for i in range(count) on `workers` threads released together."""
    start = Barrier(min(workers, count))

    def run(index: int) -> Any:
        if index < workers:
            start.wait()
        try:
            return task(index)
        except Exception as error:  # collected and asserted by the caller
            return error

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(count)))


@pytest.mark.usefixtures("wide_pool")
def test_thousand_increments_from_twenty_threads_are_exact(
    admin_conn: psycopg.Connection[Any],
) -> None:
    db.run(lambda conn: users.create(conn, "counter", "counter@example.com"))
    outcomes = race(lambda _: db.run(lambda conn: users.increment_usage(conn, "counter", 1)), 1000)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        ("counter",),
    ).fetchone()
    assert row == (1000, 1000)


@pytest.mark.usefixtures("wide_pool")
def test_fifty_concurrent_get_or_create_make_one_row(admin_conn: psycopg.Connection[Any]) -> None:
    outcomes = race(
        lambda _: db.run(lambda conn: users.get_or_create(conn, "racer", "racer@example.com")), 50
    )
    assert [o.id for o in outcomes] == ["racer"] * 50  # every caller gets the row, no error
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


@pytest.mark.usefixtures("wide_pool")
def test_thirty_first_searches_of_a_returning_user_continue_one_trial(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Thirty first searches (3 keywords, each with its hold) of a user not yet in `users`,
    whose erased account left 4 of 20 trial keywords used: all race to create the row. One row
    continues the trial; exactly the 5 requests that fit are granted, only they hold keywords,
    and the counters are their sum on top of the tombstone's usage."""
    now = utcnow()
    ends = db_time(now + timedelta(days=3))
    for key in tombstones.keys("returning", "returning@example.com"):
        admin_conn.execute(
            'INSERT INTO account_tombstones (key, "trialEndsAt", "keywordsUsed")'
            " VALUES (%s, %s, 4)",
            (key, ends),
        )
    limits = Limits(trial=20, pro=100, enterprise=1000)

    def first_search(index: int) -> users.Usage:
        hold = reservations.Hold(f"hold-{index:02d}", now + timedelta(minutes=5))
        return db.run(
            lambda conn: users.reserve_keywords(
                conn, "returning", "returning@example.com", 3,
                limits=limits, enforce=True, now=now, hold=hold,
            )
        )  # fmt: skip

    outcomes = race(first_search, 30)
    granted = [i for i, o in enumerate(outcomes) if isinstance(o, users.Usage)]
    assert len(granted) == 5  # (20 - 4) // 3
    assert all(
        isinstance(o, QuotaExceededError) for i, o in enumerate(outcomes) if i not in granted
    )
    assert sorted(o.total for o in outcomes if isinstance(o, users.Usage)) == [7, 10, 13, 16, 19]
    assert admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal", "trialEndsAt" FROM users'
    ).fetchall() == [(15, 19, ends)]
    held = admin_conn.execute("SELECT id, keywords FROM keyword_reservations ORDER BY id")
    assert held.fetchall() == [(f"hold-{i:02d}", 3) for i in granted]


@pytest.mark.usefixtures("wide_pool")
def test_sixty_concurrent_creates_stop_at_fifty(admin_conn: psycopg.Connection[Any]) -> None:
    db.run(lambda conn: users.create(conn, "saver", "saver@example.com"))
    new = saved_searches.NewSavedSearch("s", ["k"], "US", "en", "exact")
    outcomes = race(
        lambda _: db.transaction(lambda conn: saved_searches.create(conn, "saver", new)), 60
    )
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"SavedSearch": 50, SavedSearchLimitError.__name__: 10}
    assert admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone() == (50,)


@pytest.mark.usefixtures("wide_pool")
def test_quota_guard_never_passes_the_limit(admin_conn: psycopg.Connection[Any]) -> None:
    db.run(lambda conn: users.create(conn, "quota", "quota@example.com"))
    db.run(lambda conn: users.increment_usage(conn, "quota", 300))
    outcomes = race(
        lambda _: db.run(lambda conn: users.increment_usage(conn, "quota", 50, limit=1000)), 40
    )
    granted = [o for o in outcomes if isinstance(o, users.Usage)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceededError)]
    assert (len(granted), len(refused)) == (14, 26)  # 700 left / 50 each
    assert max(o.this_month for o in granted) == 1000
    assert all(o.used + o.requested > 1000 for o in refused)
    assert admin_conn.execute(
        'SELECT "keywordSearchesThisMonth" FROM users WHERE id = %s', ("quota",)
    ).fetchone() == (1000,)


@pytest.mark.usefixtures("wide_pool")
def test_expired_reservations_are_given_back_once_whoever_races(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Twenty expired reservations of one user, each released by its search and by ten cron
    runs at once: every reservation is given back exactly once (a double give-back would take
    the counters below what stays counted), and none is left."""
    now = utcnow()
    limits = Limits(trial=10_000, pro=10_000, enterprise=10_000)

    def reserve(count: int, hold: reservations.Hold | None) -> None:
        db.run(
            lambda conn: users.reserve_keywords(
                conn, "racer", "racer@example.com", count,
                limits=limits, enforce=True, now=now, hold=hold,
            )
        )  # fmt: skip

    reserve(7, None)  # kept: what must stay counted
    held = [reservations.Hold(f"hold-{i}", now - timedelta(seconds=1)) for i in range(20)]
    for hold in held:
        reserve(3, hold)

    def give_back(index: int) -> int:
        if index < len(held):
            return db.run(lambda conn: reservations.release(conn, held[index].id, now=now))
        return db.run(lambda conn: reservations.release_expired(conn, now=now, limit=5))[1]

    outcomes = race(give_back, len(held) + 10)
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert sum(outcomes) == 60  # 20 reservations of 3, each once
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        ("racer",),
    ).fetchone()
    assert row == (7, 7)
    left = admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone()
    assert left == (0,)
