"""Repositories on a real Postgres, in both lanes (direct and through PgBouncer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from benchmarks.scale import history_rows_read
from shared import db
from shared.errors import EmailInUseError, QuotaExceededError, UserNotFoundError
from shared.models import UserTier
from shared.quotas import Limits
from shared.repositories import (
    api_usage,
    feature_flags,
    saved_searches,
    search_history,
    system_metrics,
    users,
    webhook_events,
)

pytestmark = pytest.mark.usefixtures("db_env")

T0 = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


def search(name: str = "Running shoes", **overrides: Any) -> saved_searches.NewSavedSearch:
    fields: dict[str, Any] = {
        "name": name,
        "keywords": ["running shoes", "trail shoes"],
        "location": "US",
        "language": "en",
        "match_type": "phrase",
    }
    return saved_searches.NewSavedSearch(**{**fields, **overrides})


def make_user(user_id: str = "user_a", email: str = "a@example.com", **kw: Any) -> None:
    db.run(lambda conn: users.create(conn, user_id, email, **kw))


# --- users -------------------------------------------------------------------------------


def test_create_starts_a_seven_day_trial_with_client_side_id_and_timestamps() -> None:
    user = db.run(lambda conn: users.create(conn, "user_a", "A@Example.com", now=T0))
    assert user.tier is UserTier.FREE
    assert user.trial_started_at == T0 and user.trial_ends_at == T0 + timedelta(days=7)
    assert user.created_at == T0 and user.updated_at == T0 and user.monthly_reset_at == T0
    assert (user.keyword_searches_this_month, user.keyword_searches_total) == (0, 0)


def test_get_by_email_is_case_insensitive_and_duplicates_are_refused() -> None:
    make_user(email="Mixed.Case@Example.com")
    found = db.run(lambda conn: users.get_by_email(conn, "mixed.case@EXAMPLE.com"))
    assert found is not None and found.id == "user_a"
    with pytest.raises(EmailInUseError):
        make_user("user_b", "MIXED.case@example.com")


def test_get_or_create_returns_the_existing_row_untouched() -> None:
    make_user(now=T0)
    again = db.run(lambda conn: users.get_or_create(conn, "user_a", "other@example.com"))
    assert again.email == "a@example.com" and again.created_at == T0


def failed_statements(call: Any) -> list[str]:
    """The statements `call` sent that the server refused (sent, never completed): a unique
    violation among them puts the conflicting key, another account's email, in the server log."""
    pending: list[str] = []

    def sent(*args: Any) -> None:
        pending.append(args[2])

    def completed(*args: Any) -> None:
        pending.remove(args[2])

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", sent)
    event.listen(engine, "after_cursor_execute", completed)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", sent)
        event.remove(engine, "after_cursor_execute", completed)
    return pending


def refused_as_email_in_use(work: Any) -> list[str]:
    """Run `work`, expecting `EmailInUseError`; the statements that failed."""

    def call() -> None:
        with pytest.raises(EmailInUseError):
            db.run(work)

    return failed_statements(call)


def test_get_or_create_reports_an_email_owned_by_another_user() -> None:
    make_user()
    with pytest.raises(EmailInUseError):
        db.run(lambda conn: users.get_or_create(conn, "user_b", "A@example.com"))


def test_a_taken_email_is_found_without_a_unique_violation() -> None:
    """Creating, provisioning or updating a user with another account's email is refused by
    checking, not by the unique index: no statement fails, so the server logs no DETAIL."""
    make_user()
    make_user("user_b", "b@example.com")
    attempts = [
        lambda conn: users.get_or_create(conn, "user_c", "A@example.com"),
        lambda conn: users.create(conn, "user_c", "a@EXAMPLE.com"),
        lambda conn: users.create(conn, "user_c", "a@example.com", tier=UserTier.PRO),
        lambda conn: users.update_user(conn, "user_b", email="A@Example.com"),
        lambda conn: users.reserve_keywords(
            conn, "user_c", "A@example.com", 1, limits=Limits(100, 1000, 10000), enforce=True
        ),
    ]
    for work in attempts:
        assert refused_as_email_in_use(work) == []
    stored = db.run(lambda conn: users.get(conn, "user_b"))
    assert stored is not None and stored.email == "b@example.com"
    assert db.run(lambda conn: users.get(conn, "user_c")) is None
    # The user whose row exists searches as before, whatever the token's email says.
    usage = db.run(
        lambda conn: users.reserve_keywords(
            conn, "user_b", "A@example.com", 1, limits=Limits(100, 1000, 10000), enforce=True
        )
    )
    assert usage.total == 1


def test_placeholders_differing_in_case_only_belong_to_different_ids() -> None:
    """Placeholders compare exactly (case-sensitive ids), real addresses case-insensitively."""
    make_user("user_X", users.placeholder_email("user_X"))
    made = db.run(lambda conn: users.create(conn, "user_x", users.placeholder_email("user_x")))
    assert made.email == "user_x@keyflash.local"
    got = db.run(lambda conn: users.get_or_create(conn, "user_y", "user_X@KEYFLASH.local"))
    assert got.id == "user_y"
    with pytest.raises(EmailInUseError):
        db.run(lambda conn: users.update_user(conn, "user_y", email="user_X@keyflash.local"))
    with pytest.raises(UserNotFoundError):
        db.run(lambda conn: users.update_user(conn, "ghost", email="free@example.com"))
    with pytest.raises(UserNotFoundError):  # not found, whoever holds the email
        db.run(lambda conn: users.update_user(conn, "ghost", email="user_X@keyflash.local"))


def test_partial_update_sets_only_given_columns_and_updated_at() -> None:
    make_user(now=T0)
    later = T0 + timedelta(hours=1)
    user = db.run(
        lambda conn: users.update_user(
            conn, "user_a", now=later, tier=UserTier.PRO, subscription_status="active"
        )
    )
    assert user.tier is UserTier.PRO and user.subscription_status == "active"
    assert user.updated_at == later and user.email == "a@example.com"
    assert user.trial_ends_at == T0 + timedelta(days=7)


def test_update_of_missing_user_is_a_clear_not_found() -> None:
    with pytest.raises(UserNotFoundError, match="ghost"):
        db.run(lambda conn: users.update_user(conn, "ghost", subscription_status="active"))


def test_increment_adds_to_both_counters() -> None:
    make_user(now=T0)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 3, now=T0))
    usage = db.run(lambda conn: users.increment_usage(conn, "user_a", 4, now=T0))
    assert (usage.this_month, usage.total) == (7, 7)


def test_monthly_counter_resets_lazily_across_a_month_boundary() -> None:
    march = datetime(2026, 3, 31, 23, 59, 59, 999000, tzinfo=UTC)
    april = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    make_user(now=march)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 900, now=march))
    usage = db.run(lambda conn: users.increment_usage(conn, "user_a", 5, limit=1000, now=april))
    assert (usage.this_month, usage.total) == (5, 905)
    assert usage.monthly_reset_at == april
    # Later in April the counter keeps counting and the reset stamp stays put.
    usage = db.run(
        lambda conn: users.increment_usage(conn, "user_a", 5, now=april + timedelta(days=3))
    )
    assert (usage.this_month, usage.monthly_reset_at) == (10, april)


def test_quota_guard_refuses_and_changes_nothing() -> None:
    make_user(now=T0)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 995, now=T0))
    with pytest.raises(QuotaExceededError) as caught:
        db.run(lambda conn: users.increment_usage(conn, "user_a", 6, limit=1000, now=T0))
    assert (caught.value.used, caught.value.limit, caught.value.requested) == (995, 1000, 6)
    user = db.run(lambda conn: users.get(conn, "user_a"))
    assert user is not None
    assert (user.keyword_searches_this_month, user.keyword_searches_total) == (995, 995)
    usage = db.run(lambda conn: users.increment_usage(conn, "user_a", 5, limit=1000, now=T0))
    assert usage.this_month == 1000  # exactly at the limit is allowed


def test_quota_guard_counts_a_stale_month_as_zero() -> None:
    make_user(now=T0)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 1000, now=T0))
    next_month = datetime(2026, 4, 2, tzinfo=UTC)
    usage = db.run(
        lambda conn: users.increment_usage(conn, "user_a", 200, limit=1000, now=next_month)
    )
    assert usage.this_month == 200


def test_increment_of_missing_user_is_not_found_not_quota() -> None:
    with pytest.raises(UserNotFoundError):
        db.run(lambda conn: users.increment_usage(conn, "ghost", 1, limit=10))


def test_reset_monthly_usage() -> None:
    make_user(now=T0)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 10, now=T0))
    later = T0 + timedelta(days=20)
    db.run(lambda conn: users.reset_monthly_usage(conn, "user_a", now=later))
    user = db.run(lambda conn: users.get(conn, "user_a"))
    assert user is not None
    assert (user.keyword_searches_this_month, user.keyword_searches_total) == (0, 10)
    assert user.monthly_reset_at == later


def test_delete_cascades_saved_searches_and_keeps_history_anonymised(
    admin_conn: psycopg.Connection[Any],
) -> None:
    make_user()
    db.transaction(lambda conn: saved_searches.create(conn, "user_a", search()))
    db.run(lambda conn: search_history.record(conn, history_row("user_a")))
    assert db.run(lambda conn: users.delete_user(conn, "user_a")) is True
    assert db.run(lambda conn: users.delete_user(conn, "user_a")) is False
    counts = admin_conn.execute(
        "SELECT (SELECT count(*) FROM saved_searches), (SELECT count(*) FROM search_history),"
        ' (SELECT count("userId") FROM search_history)'
    ).fetchone()
    assert counts == (0, 1, 0)


def test_find_expired_trials_in_keyset_batches() -> None:
    for index in range(5):
        make_user(f"user_{index}", f"{index}@example.com", now=T0 - timedelta(days=index * 3))
    make_user("pro_user", "pro@example.com", tier=UserTier.PRO, now=T0 - timedelta(days=30))
    now = T0 + timedelta(days=2)
    first = db.run(lambda conn: users.find_expired_trials(conn, now=now, limit=2))
    rest = db.run(lambda conn: users.find_expired_trials(conn, now=now, after_id=first[-1].id))
    assert [u.id for u in first + rest] == ["user_2", "user_3", "user_4"]


def test_subscription_metrics_in_one_query() -> None:
    make_user("f1", "f1@example.com")
    make_user("p1", "p1@example.com", tier=UserTier.PRO)
    make_user("e1", "e1@example.com", tier=UserTier.ENTERPRISE)
    db.run(lambda conn: users.update_user(conn, "p1", subscription_status="active"))
    statements = count_statements(lambda: db.run(users.subscription_metrics))
    assert statements.result == users.SubscriptionMetrics(3, 1, 1, 1, 1)
    assert statements.count == 1


# --- saved searches ----------------------------------------------------------------------


def test_saved_search_roundtrip_with_legacy_fields() -> None:
    make_user()
    results = [{"keyword": "running shoes", "searchVolume": 1200.5}]
    created = db.transaction(
        lambda conn: saved_searches.create(
            conn, "user_a", search(description="For Q3", results=results), now=T0
        )
    )
    assert len(created.id) == 36 and created.id[14] == "4"  # UUID v4
    assert created.keyword_count == 2 and created.result_count == 1
    assert created.results == results and created.description == "For Q3"
    later = T0 + timedelta(minutes=5)
    fetched = db.run(lambda conn: saved_searches.get(conn, "user_a", created.id, now=later))
    assert fetched is not None and fetched.last_accessed_at == later


def test_legacy_saved_search_ids_are_storable() -> None:
    make_user()
    legacy = "1700000000000-abc1234"
    created = db.transaction(
        lambda conn: saved_searches.create(conn, "user_a", search(), search_id=legacy)
    )
    assert created.id == legacy
    assert db.run(lambda conn: saved_searches.get(conn, "user_a", legacy)) is not None


def test_saved_searches_are_scoped_to_their_owner() -> None:
    make_user()
    make_user("user_b", "b@example.com")
    mine = db.transaction(lambda conn: saved_searches.create(conn, "user_a", search()))
    assert db.run(lambda conn: saved_searches.get(conn, "user_b", mine.id)) is None
    assert (
        db.run(lambda conn: saved_searches.update_search(conn, "user_b", mine.id, name="x")) is None
    )
    assert db.run(lambda conn: saved_searches.delete_search(conn, "user_b", mine.id)) is False
    assert db.run(lambda conn: saved_searches.list_for_user(conn, "user_b")).items == []
    assert db.run(lambda conn: saved_searches.delete_search(conn, "user_a", mine.id)) is True


def test_update_changes_only_given_fields() -> None:
    make_user()
    created = db.transaction(lambda conn: saved_searches.create(conn, "user_a", search(), now=T0))
    later = T0 + timedelta(hours=2)
    updated = db.run(
        lambda conn: saved_searches.update_search(
            conn, "user_a", created.id, description="", now=later
        )
    )
    assert updated is not None
    assert (updated.name, updated.description, updated.updated_at) == ("Running shoes", "", later)


def test_list_is_most_recently_updated_first_with_keyset_pages() -> None:
    make_user()
    for index in range(5):
        db.transaction(
            lambda s, i=index: saved_searches.create(
                s, "user_a", search(f"s{i}"), now=T0 + timedelta(minutes=i)
            )
        )
    first = db.run(lambda conn: saved_searches.list_for_user(conn, "user_a", limit=3))
    second = db.run(
        lambda conn: saved_searches.list_for_user(conn, "user_a", limit=3, cursor=first.next_cursor)
    )
    assert [x.name for x in first.items] == ["s4", "s3", "s2"]
    assert [x.name for x in second.items] == ["s1", "s0"] and second.next_cursor is None


def test_create_outside_a_transaction_is_refused() -> None:
    make_user()
    with pytest.raises(RuntimeError, match="transaction"):
        db.run(lambda conn: saved_searches.create(conn, "user_a", search()))


def test_create_for_missing_user_is_not_found() -> None:
    with pytest.raises(UserNotFoundError):
        db.transaction(lambda conn: saved_searches.create(conn, "ghost", search()))


# --- search history, api usage -----------------------------------------------------------


def history_row(user_id: str | None, **overrides: Any) -> search_history.NewSearch:
    fields: dict[str, Any] = {
        "user_id": user_id,
        "keywords": ["a", "b"],
        "location": "United States",
        "language": "en",
        "match_type": "exact",
        "provider": "mock",
        "cache_hit": False,
        "response_time": 100,
    }
    return search_history.NewSearch(**{**fields, **overrides})


def test_history_is_listed_newest_first_per_user() -> None:
    make_user()
    make_user("user_b", "b@example.com")
    for minute in range(3):
        db.run(lambda s, m=minute: search_history.record(
            s, history_row("user_a"), now=T0 + timedelta(minutes=m)
        ))  # fmt: skip
    db.run(lambda conn: search_history.record(conn, history_row("user_b")))
    page = db.run(lambda conn: search_history.list_for_user(conn, "user_a", limit=2))
    rest = db.run(
        lambda conn: search_history.list_for_user(conn, "user_a", cursor=page.next_cursor)
    )
    times = [row.searched_at for row in page.items + rest.items]
    assert times == [T0 + timedelta(minutes=m) for m in (2, 1, 0)]


def test_history_pages_walk_every_row_once_in_order_across_partitions(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Pages of 7 through rows in the legacy partition, the ranges and the DEFAULT one (a row
    dated 2999), with ties on `searchedAt` (id decides), another user's rows between them:
    every row of the user exactly once, in the list's order, the last page without a cursor."""
    make_user()
    make_user("user_b", "b@example.com")
    admin_conn.execute(
        'INSERT INTO search_history (id, "userId", keywords, location, language, "matchType", '
        'provider, "cacheHit", "responseTime", "keywordCount", "searchedAt") '
        "SELECT 'h' || lpad(g::text, 3, '0'), CASE WHEN g % 4 = 0 THEN 'user_b' ELSE 'user_a' "
        "END, ARRAY['k'], 'US', 'en', 'exact', 'mock', false, 100, 1, "
        "CASE WHEN g = 1 THEN timestamp '2999-01-01' WHEN g = 2 THEN timestamp '2001-01-01' "
        "ELSE now() AT TIME ZONE 'UTC' + (15 - g / 3) * interval '6 days' END "
        "FROM generate_series(1, 90) AS g"
    )
    kinds = admin_conn.execute(
        "SELECT count(DISTINCT tableoid) FROM search_history WHERE \"userId\" = 'user_a'"
    ).fetchone()
    expected = [
        row[0]
        for row in admin_conn.execute(
            "SELECT id FROM search_history WHERE \"userId\" = 'user_a' "
            'ORDER BY "searchedAt" DESC, id DESC'
        )
    ]
    walked: list[str] = []
    cursor = None
    for _ in range(len(expected)):
        page = db.run(
            lambda conn, c=cursor: search_history.list_for_user(conn, "user_a", limit=7, cursor=c)
        )
        walked += [row.id for row in page.items]
        assert all(row.user_id == "user_a" for row in page.items)
        assert all(row.searched_at.tzinfo is UTC for row in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert kinds is not None and kinds[0] >= 4  # legacy, DEFAULT and at least two ranges
    assert walked == expected
    assert len(expected) == 68


def test_history_list_reads_one_page_even_deep_in_an_active_account(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """The cursor is an index range, not a filter: a page 200 rows deep into an account with 400
    reads about one page (each partition's scan may read one row ahead), not every newer row.
    The statement the app sends, run again on a fresh connection (the function's first five
    plans are made for their values), rows counted by the server's statistics. The plan a
    server connection settles on later is the scale benchmark's to check (`function_rows_read`,
    at production size): on tables this small the generic plan sorts the account's rows."""
    admin_conn.execute(
        'INSERT INTO users (id, email, "createdAt", "updatedAt") '
        "SELECT 'light' || g, 'light' || g || '@example.com', now(), now() "
        "FROM generate_series(1, 2000) AS g"
    )
    make_user()
    admin_conn.execute(
        'INSERT INTO search_history (id, "userId", keywords, location, language, "matchType", '
        'provider, "cacheHit", "responseTime", "keywordCount", "searchedAt") '
        "SELECT 'h' || g, CASE WHEN g <= 400 THEN 'user_a' ELSE 'light' || (g % 2000 + 1) END, "
        "ARRAY['k'], 'US', 'en', 'exact', 'mock', false, 100, 1, "
        "now() AT TIME ZONE 'UTC' - g * interval '11 hours' FROM generate_series(1, 4400) AS g"
    )
    admin_conn.execute("ANALYZE users, search_history")
    partitions = admin_conn.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'search_history'::regclass"
    ).fetchone()
    deep = admin_conn.execute(
        'SELECT "searchedAt", id FROM search_history WHERE "userId" = \'user_a\' '
        'ORDER BY "searchedAt" DESC, id DESC OFFSET 199 LIMIT 1'
    ).fetchone()
    assert partitions is not None and deep is not None
    for cursor in (None, (deep[0].replace(tzinfo=UTC), deep[1])):
        sql, params = sent_statement(
            lambda c=cursor: db.run(
                lambda conn: search_history.list_for_user(conn, "user_a", limit=20, cursor=c)
            )
        )
        read = history_rows_read(admin_conn, sql, params)
        assert read <= 20 + 1 + partitions[0], (cursor, read)


def sent_statement(call: Any) -> tuple[str, dict[str, Any]]:
    """The one statement `call` sends, as the driver receives it (SQL, parameters)."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(sent) == 1
    return sent[0]


def test_history_stats_totals_and_per_provider_in_one_query() -> None:
    rows = [
        history_row(None, provider="mock", cache_hit=True, response_time=100),
        history_row(None, provider="mock", cache_hit=False, response_time=300),
        history_row(None, provider="dataforseo", cache_hit=False, response_time=800),
        history_row(None, provider="dataforseo", cache_hit=True, response_time=400),
    ]
    for row in rows:
        db.run(lambda s, r=row: search_history.record(s, r, now=T0))
    db.run(lambda conn: search_history.record(conn, history_row(None), now=T0 - timedelta(days=2)))
    measured = count_statements(
        lambda: db.run(
            lambda conn: search_history.stats(
                conn, since=T0 - timedelta(days=1), until=T0 + timedelta(seconds=1)
            )
        )
    )
    stats = measured.result
    assert measured.count == 1
    assert (stats.searches, stats.avg_response_time, stats.cache_hit_rate) == (4, 400.0, 0.5)
    assert stats.providers["mock"] == search_history.ProviderStats(2, 200.0, 0.5)
    assert stats.providers["dataforseo"] == search_history.ProviderStats(2, 600.0, 0.5)


def test_api_usage_many_rows_in_one_round_trip(admin_conn: psycopg.Connection[Any]) -> None:
    requests = [
        api_usage.Request(endpoint="/api/searches", method="GET", status_code=200, duration_ms=i)
        for i in range(25)
    ]
    measured = count_statements(lambda: db.run(lambda conn: api_usage.record_many(conn, requests)))
    assert measured.count == 1
    assert admin_conn.execute("SELECT count(*), sum(duration) FROM api_usage").fetchone() == (
        25,
        300,
    )


# --- webhook events ----------------------------------------------------------------------


def test_webhook_claim_then_processed_then_duplicate() -> None:
    claim = db.transaction(
        lambda conn: webhook_events.claim(conn, "evt_1", "invoice.paid", {"id": "evt_1"})
    )
    assert claim == webhook_events.Claim("evt_1", attempts=1, first_delivery=True)
    db.run(lambda conn: webhook_events.mark_processed(conn, "evt_1"))
    assert (
        db.transaction(lambda conn: webhook_events.claim(conn, "evt_1", "invoice.paid", None))
        is None
    )


def test_failed_webhook_is_retryable_after_backoff_until_max_attempts() -> None:
    def fail(at: datetime) -> None:
        db.run(
            lambda conn: webhook_events.mark_failed(
                conn, "evt_2", "invoice.paid", {}, "boom", now=at
            )
        )

    fail(T0)  # attempt 1: retry after 60 s

    def retryable(at: datetime) -> list[str]:
        rows = db.run(lambda conn: webhook_events.list_retryable(
            conn, max_attempts=3, base_delay=timedelta(seconds=60), now=at
        ))  # fmt: skip
        return [row.id for row in rows]

    assert retryable(T0 + timedelta(seconds=59)) == []
    assert retryable(T0 + timedelta(seconds=60)) == ["evt_2"]
    fail(T0 + timedelta(seconds=60))  # attempt 2: retry after 120 s more
    assert retryable(T0 + timedelta(seconds=179)) == []
    assert retryable(T0 + timedelta(seconds=180)) == ["evt_2"]
    fail(T0 + timedelta(seconds=180))  # attempt 3 = max: never again
    assert retryable(T0 + timedelta(days=1)) == []
    row = db.run(
        lambda conn: webhook_events.list_retryable(conn, max_attempts=9, base_delay=timedelta(0))
    )
    assert (row[0].attempts, row[0].error, row[0].processed) == (3, "boom", False)


# --- feature flags, metrics --------------------------------------------------------------


def test_flag_upsert_keeps_creator_and_rejects_out_of_range_percent() -> None:
    values = feature_flags.FlagValues(enabled=True, rollout_percent=20, allowed_users=("u1",))
    first = db.run(
        lambda conn: feature_flags.upsert(conn, "new-ui", values, created_by="admin_1", now=T0)
    )
    changed = feature_flags.FlagValues(enabled=False, rollout_percent=30)
    later = T0 + timedelta(days=1)
    second = db.run(
        lambda conn: feature_flags.upsert(conn, "new-ui", changed, created_by="admin_2", now=later)
    )
    assert second.id == first.id and second.created_by == "admin_1" and second.created_at == T0
    assert (second.enabled, second.rollout_percent, second.allowed_users) == (False, 30, [])
    assert [f.key for f in db.run(feature_flags.list_all)] == ["new-ui"]
    with pytest.raises(Exception, match="rolloutPercent_check"):
        bad = feature_flags.FlagValues(rollout_percent=101)
        db.run(lambda conn: feature_flags.upsert(conn, "bad", bad))
    assert db.run(lambda conn: feature_flags.delete_flag(conn, "new-ui")) is True
    assert db.run(lambda conn: feature_flags.get_by_key(conn, "new-ui")) is None


def test_metric_series_buckets() -> None:
    samples = [
        system_metrics.Sample("db.connections", float(v), {"host": "a"}, T0.replace(minute=m))
        for v, m in [(1, 0), (3, 10), (5, 59)]
    ] + [
        system_metrics.Sample(
            "db.connections", 10.0, None, T0.replace(minute=0) + timedelta(hours=1)
        )
    ]
    db.run(lambda conn: system_metrics.record_many(conn, samples))
    hour = T0.replace(minute=0, second=0, microsecond=0)
    points = db.run(
        lambda conn: system_metrics.series(
            conn, "db.connections", start=hour, end=hour + timedelta(hours=2), bucket="hour"
        )
    )
    assert points == [
        system_metrics.Point(hour, avg=3.0, min=1.0, max=5.0, count=3, non_finite=0),
        system_metrics.Point(
            hour + timedelta(hours=1), avg=10.0, min=10.0, max=10.0, count=1, non_finite=0
        ),
    ]


# --- helpers -----------------------------------------------------------------------------


class Counted:
    def __init__(self, result: Any, count: int) -> None:
        self.result = result
        self.count = count


def count_statements(call: Any) -> Counted:
    """Run `call` and count the statements (= round trips in autocommit) it sent."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        result = call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return Counted(result, len(statements))
