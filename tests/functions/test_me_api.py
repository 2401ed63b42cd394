"""/api/me, DELETE /api/me (erasure) and /api/me/export, in three invocation styles, both lanes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

from shared import config, db
from shared.clock import iso_ms, month_start, next_month_start, utcnow
from shared.errors import EmailInUseError
from shared.models import UserTier
from shared.quotas import Limits
from shared.repositories import (
    api_usage,
    data_exports,
    feature_flags,
    organizations,
    reservations,
    saved_searches,
    search_history,
    system_metrics,
    users,
    webhook_events,
)
from tests.support.http import Caller, Keys

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# Every table of the schema, so a new one cannot be forgotten by the erasure test.
ALL_TABLES = {
    "users",
    "saved_searches",
    "search_history",
    "api_usage",
    "webhook_events",
    "feature_flags",
    "system_metrics",
    "keyword_reservations",
    "data_exports",
    "organization_members",
}
# Tables the erasure leaves alone, each with the reason; a new table must be added to one set.
OUTSIDE_ERASURE = {
    # The dual-write outbox names the user's legacy Redis keys: a mark left there is what makes
    # the repair job bring Redis in line (delete the keys) once the rows are gone. The storage
    # work owns it and clears its marks when Redis matches.
    "legacy_repairs": "cleared by the storage work once Redis is erased",
    # Usage increments owed to the legacy counters: the erasure's transaction drops the user's
    # (`storage.mark_legacy_erasure`), the counters being deleted with the keys.
    "legacy_counter_deltas": "dropped in the erasure's transaction by the storage work",
    "cron_leases": "job leases and resume state, nothing per user",
    "search_daily_rollups": "per day and provider aggregates, nothing per user",
    # Written BY the erasure: the hash of the erased Stripe customer id, so that customer's later
    # events are recorded as processed (docs/billing.md, "Erasure").
    "erased_billing_customers": "the erasure's own record of the hashed Stripe customer id",
    # The erasure's retention exception (fraud prevention): keyed HMACs of the id and email,
    # the trial's end and the keywords used, so that erasing never grants a new trial.
    "account_tombstones": "written by the erasure: no id, email or other personal data in clear",
    # An organization's row names no member; the team's searches and history that a member
    # made stay with it without them (tests/orgs/test_lifecycle_privacy.py).
    "organizations": "the team's own row: nothing per user",
}


def billing(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("BILLING_ENABLED", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()


def make_user(user_id: str, email: str | None = None, **kw: Any) -> None:
    db.run(lambda conn: users.create(conn, user_id, email or f"{user_id}@example.com", **kw))


def me(call: Caller, user: str = "user_a") -> dict[str, Any]:
    result = call("me", "GET", "/api/me", user=user)
    assert result.status == 200, result.text
    body: dict[str, Any] = result.json
    return body


# --- GET /api/me ------------------------------------------------------------------------------


def test_a_new_caller_is_a_free_trial_without_limits_when_billing_is_off(call: Caller) -> None:
    token = call.token("user_a", email="Ada@Example.com")
    result = call("me", "GET", "/api/me", headers={"authorization": f"Bearer {token}"})
    assert result.status == 200, result.text
    assert result.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
    body = result.json
    assert set(body) == {"id", "email", "tier", "trialEndsAt", "usage"}  # no subscription
    assert (body["id"], body["email"], body["tier"]) == ("user_a", "Ada@Example.com", "FREE")
    assert TIMESTAMP.match(body["trialEndsAt"])
    ends = datetime.strptime(body["trialEndsAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert timedelta(days=6, hours=23) < ends - utcnow() <= timedelta(days=7)
    # Open-source mode: usage is counted but nothing is limited, so no limit is shown.
    assert body["usage"] == {"thisMonth": 0, "total": 0, "trialEndsAt": body["trialEndsAt"]}


def test_free_trial_usage_counts_the_whole_trial_against_300(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing(monkeypatch)
    make_user("user_a")
    db.run(lambda conn: users.increment_usage(conn, "user_a", 120))
    usage = me(call)["usage"]
    assert usage["limit"] == 300 and usage["remaining"] == 180
    assert (usage["thisMonth"], usage["total"]) == (120, 120)
    assert "resetsAt" not in usage and TIMESTAMP.match(usage["trialEndsAt"])


def test_an_expired_trial_has_nothing_remaining(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing(monkeypatch)
    make_user("user_a", now=utcnow() - timedelta(days=8))
    body = me(call)
    assert body["usage"]["remaining"] == 0 and body["usage"]["limit"] == 300


@pytest.mark.parametrize(("tier", "limit"), [(UserTier.PRO, 1000), (UserTier.ENTERPRISE, 2500)])
def test_paid_tiers_show_the_monthly_limit_and_when_it_resets(
    call: Caller, monkeypatch: pytest.MonkeyPatch, tier: UserTier, limit: int
) -> None:
    billing(monkeypatch, ENTERPRISE_MONTHLY_LIMIT="2500")
    make_user("user_a", tier=tier)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 40))
    body = me(call)
    assert "trialEndsAt" not in body
    assert body["usage"] == {
        "thisMonth": 40,
        "total": 40,
        "limit": limit,
        "remaining": limit - 40,
        "resetsAt": iso_ms(next_month_start(utcnow())),
    }


def test_last_months_counter_reads_as_zero_until_written_again(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing(monkeypatch)
    last_month = month_start(utcnow()) - timedelta(days=3)
    make_user("user_a", tier=UserTier.PRO, now=last_month)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 900, now=last_month))
    usage = me(call)["usage"]
    assert (usage["thisMonth"], usage["total"], usage["remaining"]) == (0, 900, 1000)
    db.run(lambda conn: users.increment_usage(conn, "user_a", 7))
    usage = me(call)["usage"]
    assert (usage["thisMonth"], usage["total"], usage["remaining"]) == (7, 907, 993)


def test_subscription_shows_only_the_keys_that_exist(call: Caller) -> None:
    make_user("user_a", tier=UserTier.PRO)
    db.run(
        lambda conn: users.update_user(
            conn, "user_a", subscription_status="active", subscription_plan="pro"
        )
    )
    assert me(call)["subscription"] == {"status": "active", "plan": "pro"}
    ends = datetime(2026, 12, 31, 23, 59, 59, 123000, tzinfo=UTC)
    db.run(
        lambda conn: users.update_user(
            conn, "user_a", subscription_status="canceled", subscription_ends_at=ends
        )
    )
    assert me(call)["subscription"] == {
        "status": "canceled",
        "plan": "pro",
        "endsAt": "2026-12-31T23:59:59.123Z",
    }


def test_email_taken_by_another_account_is_a_409(call: Caller) -> None:
    make_user("user_b", "shared@example.com")
    token = call.token("user_a", email="SHARED@example.com")
    result = call("me", "GET", "/api/me", headers={"authorization": f"Bearer {token}"})
    assert result.status == 409
    assert result.json["message"] == "This email address already belongs to another account"


def test_erasure_goes_through_when_another_account_holds_the_email(call: Caller) -> None:
    """Nothing of theirs is held back by someone else's account; the other row is untouched."""
    make_user("user_b", "shared@example.com")
    token = call.token("user_a", email="SHARED@example.com")
    headers = {"authorization": f"Bearer {token}"}
    assert call("me", "GET", "/api/me", headers=headers).status == 409
    assert usage_rows("user_a") == 1
    erased = call("me", "DELETE", "/api/me", headers=headers)
    assert (erased.status, erased.json) == (200, {"deleted": True}), erased.text
    assert db.run(lambda conn: users.get(conn, "user_a")) is None
    assert usage_rows("user_a") == 0
    holder = db.run(lambda conn: users.get(conn, "user_b"))
    assert holder is not None and holder.email == "shared@example.com"


def usage_rows(user_id: str) -> int:
    statement = text('SELECT count(*) FROM api_usage WHERE "userId" = :u')
    return int(db.run(lambda conn: conn.session.execute(statement, {"u": user_id}).scalar_one()))


def test_ids_differing_only_in_case_each_get_their_own_placeholder(call: Caller) -> None:
    """Clerk ids are case-sensitive: two people, two placeholders, no email conflict."""
    assert me(call, "user_2CaseX")["email"] == "user_2CaseX@keyflash.local"
    assert me(call, "user_2casex")["email"] == "user_2casex@keyflash.local"
    erased = call("me", "DELETE", "/api/me", user="user_2casex")
    assert (erased.status, erased.json) == (200, {"deleted": True}), erased.text
    assert me(call, "user_2CaseX")["email"] == "user_2CaseX@keyflash.local"


def test_real_emails_differing_only_in_case_still_conflict(call: Caller) -> None:
    make_user("user_b", "Shared@Example.com")
    with pytest.raises(EmailInUseError):
        make_user("user_c", "shared@example.COM")


def test_every_route_requires_auth(call: Caller) -> None:
    for module, method, path in (
        ("me", "GET", "/api/me"),
        ("me", "DELETE", "/api/me"),
        ("me_export", "GET", "/api/me/export"),
    ):
        result = call(module, method, path, headers={"authorization": "Bearer not-a-jwt"})
        assert result.status == 401, path
        assert result.json["message"] == "Authentication required"


# --- DELETE /api/me ---------------------------------------------------------------------------


def seed_everything(user_id: str) -> None:
    """One or more rows about `user_id` in every table."""
    email = f"{user_id}@example.com"
    make_user(user_id, email)
    db.run(
        lambda conn: users.update_user(
            conn,
            user_id,
            stripe_customer_id=f"cus_{user_id}",
            stripe_subscription_id=f"sub_{user_id}",
        )
    )
    search = saved_searches.NewSavedSearch(
        name="n", keywords=["k"], location="US", language="en", match_type="exact"
    )
    db.transaction(lambda conn: saved_searches.create(conn, user_id, search))
    hold = reservations.Hold(f"hold_{user_id}", utcnow() + timedelta(minutes=5))
    limits = Limits(trial=300, pro=1000, enterprise=10_000)
    db.run(
        lambda conn: users.reserve_keywords(
            conn, user_id, email, 2, limits=limits, enforce=False, hold=hold
        )
    )  # a search in flight
    for provider in ("mock", "dataforseo"):
        row = search_history.NewSearch(
            user_id=user_id, keywords=["k"], location="US", language="en", match_type="exact",
            provider=provider, cache_hit=False, response_time=12, user_agent="UA/1",
            ip_address="198.51.100.0",
        )  # fmt: skip
        db.run(partial(search_history.record, search=row))
    db.run(
        lambda conn: api_usage.record_many(
            conn,
            [
                api_usage.Request("/api/keywords", "POST", 200, 5, user_id, "198.51.100.0", "UA"),
                api_usage.Request("/api/searches", "GET", 200, 3, user_id, None, None),
            ],
        )
    )
    db.transaction(
        lambda conn: webhook_events.claim(
            conn, f"evt_meta_{user_id}", "checkout.session.completed",
            {"data": {"object": {"metadata": {"clerkUserId": user_id}, "lines": [1, 2]}}},
        )
    )  # fmt: skip
    db.transaction(
        lambda conn: webhook_events.claim(
            conn, f"evt_email_{user_id}", "customer.updated",
            {"data": {"object": {"emails": [{"value": email}]}}},
        )
    )  # fmt: skip
    db.transaction(
        lambda conn: webhook_events.claim(
            conn, f"evt_cus_{user_id}", "invoice.paid", {"customer": f"cus_{user_id}"}
        )
    )
    db.run(
        lambda conn: webhook_events.mark_failed(
            conn, f"evt_err_{user_id}", "invoice.paid", None,
            f"Key (lower(email))=({email}) already exists",
        )
    )  # fmt: skip
    db.run(
        lambda conn: system_metrics.record_many(
            conn, [system_metrics.Sample("searches", 1.0, {"userId": user_id, "tier": "FREE"})]
        )
    )
    db.run(lambda conn: data_exports.request(conn, user_id, now=utcnow()))
    db.run(lambda conn: organizations.ensure(conn, "org_shared"))
    membership = {"org": "org_shared", "user": user_id}
    db.run(
        lambda conn: conn.session.execute(
            text(
                """INSERT INTO organization_members ("organizationId", "userId", role,
                       "updatedAt") VALUES (:org, :user, 'org:member', now())"""
            ),
            membership,
        )
    )


def rows_about(conn: psycopg.Connection[Any], user_id: str) -> dict[str, int]:
    """Per table, the rows that still identify `user_id` in any column."""
    email = f"{user_id}@example.com"
    ids = [user_id, email, f"cus_{user_id}", f"sub_{user_id}"]
    queries: dict[str, tuple[str, list[Any]]] = {
        "users": ("SELECT count(*) FROM users WHERE id = %s OR email = %s", [user_id, email]),
        "saved_searches": ('SELECT count(*) FROM saved_searches WHERE "userId" = %s', [user_id]),
        "search_history": ('SELECT count(*) FROM search_history WHERE "userId" = %s', [user_id]),
        "api_usage": ('SELECT count(*) FROM api_usage WHERE "userId" = %s', [user_id]),
        "webhook_events": (
            "SELECT count(*) FROM webhook_events WHERE EXISTS (SELECT 1 FROM unnest(%s::text[]) i"
            " WHERE strpos(coalesce(payload::text, '') || coalesce(error, ''), i) > 0)",
            [ids],
        ),
        "feature_flags": (
            'SELECT count(*) FROM feature_flags WHERE %s = ANY("allowedUsers")',
            [user_id],
        ),
        "system_metrics": (
            "SELECT count(*) FROM system_metrics WHERE strpos(coalesce(tags::text, ''), %s) > 0",
            [user_id],
        ),
        "keyword_reservations": (
            'SELECT count(*) FROM keyword_reservations WHERE "userId" = %s',
            [user_id],
        ),
        "data_exports": ('SELECT count(*) FROM data_exports WHERE "userId" = %s', [user_id]),
        "organization_members": (
            'SELECT count(*) FROM organization_members WHERE "userId" = %s',
            [user_id],
        ),
    }
    assert set(queries) == ALL_TABLES
    counts = {}
    for table, (statement, params) in queries.items():
        row = conn.execute(statement, params).fetchone()
        assert row is not None
        counts[table] = row[0]
    return counts


def test_every_table_is_covered_by_the_erasure_test_or_named_as_outside_it(
    admin_conn: psycopg.Connection[Any],
) -> None:
    tables = {
        name
        for (name,) in admin_conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert tables - {"alembic_version"} - set(OUTSIDE_ERASURE) == ALL_TABLES


def test_erasure_removes_the_caller_from_every_table_and_leaves_others_intact(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_everything("user_a")
    seed_everything("user_b")
    db.run(
        lambda conn: feature_flags.upsert(
            conn, "beta", feature_flags.FlagValues(enabled=True, allowed_users=("user_a", "user_b"))
        )
    )
    assert all(rows_about(admin_conn, "user_a").values())
    before_b = rows_about(admin_conn, "user_b")

    result = call("me", "DELETE", "/api/me", user="user_a")
    assert (result.status, result.json) == (200, {"deleted": True})

    assert rows_about(admin_conn, "user_a") == dict.fromkeys(ALL_TABLES, 0)
    assert rows_about(admin_conn, "user_b") == before_b
    # History is kept for aggregates, with nothing that points back at the person.
    anonymous = admin_conn.execute(
        'SELECT "ipAddress", "userAgent" FROM search_history WHERE "userId" IS NULL'
    ).fetchall()
    assert anonymous == [(None, None), (None, None)]
    flags = admin_conn.execute('SELECT "allowedUsers" FROM feature_flags').fetchall()
    assert flags == [(["user_b"],)]
    # Ledger rows stay (replays are still recognised); only what identified the user is gone.
    ledger = admin_conn.execute(
        "SELECT id, payload IS NULL, error IS NULL FROM webhook_events ORDER BY id"
    ).fetchall()
    assert {row[0] for row in ledger} >= {"evt_meta_user_a", "evt_cus_user_a", "evt_err_user_a"}
    assert all(row[1] and row[2] for row in ledger if row[0].endswith("user_a"))
    assert all(not row[1] or not row[2] for row in ledger if row[0].endswith("user_b"))
    metrics = admin_conn.execute("SELECT tags FROM system_metrics ORDER BY tags IS NULL").fetchall()
    assert metrics == [({"userId": "user_b", "tier": "FREE"},), (None,)]
    # The erasure request's own usage row is anonymous.
    own = admin_conn.execute(
        "SELECT \"userId\" FROM api_usage WHERE endpoint = '/api/me' AND method = 'DELETE'"
    ).fetchall()
    assert own == [(None,)]


def test_after_erasure_the_next_call_starts_a_fresh_account_without_a_new_trial(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing(monkeypatch)
    make_user("user_a", tier=UserTier.PRO, now=utcnow() - timedelta(days=30))
    db.run(lambda conn: users.increment_usage(conn, "user_a", 50))
    assert me(call)["tier"] == "PRO"
    assert call("me", "DELETE", "/api/me", user="user_a").status == 200
    again = call("me", "DELETE", "/api/me", user="user_a")  # nothing left: still fine
    assert (again.status, again.json) == (200, {"deleted": True})
    # This container forgot the user: a route that needs the row re-provisions it.
    body = {
        "name": "n",
        "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"},
    }
    created = call("searches", "POST", "/api/searches", user="user_a", json_body=body)
    assert created.status == 201, created.text
    fresh = me(call)  # a new account, but the trial it had (ended 23 days ago) is not reset
    assert fresh["tier"] == "FREE" and fresh["usage"]["total"] == 50
    assert fresh["usage"]["remaining"] == 0
    assert fresh["trialEndsAt"] < iso_ms(utcnow() - timedelta(days=22))


@pytest.mark.parametrize("status", ["active", "trialing", "past_due"])
def test_erasure_is_refused_while_a_subscription_is_live(
    call: Caller, admin_conn: psycopg.Connection[Any], status: str
) -> None:
    assert call("me", "GET", "/api/me", user="payer").status == 200
    admin_conn.execute(
        'UPDATE users SET "subscriptionStatus" = %s WHERE id = %s', (status, "payer")
    )
    result = call("me", "DELETE", "/api/me", user="payer")
    assert result.status == 409
    assert result.json["message"] == "Cancel your subscription before deleting your account."
    assert admin_conn.execute("SELECT count(*) FROM users WHERE id = 'payer'").fetchone() == (1,)
    admin_conn.execute("""UPDATE users SET "subscriptionStatus" = 'canceled' WHERE id = 'payer'""")
    assert call("me", "DELETE", "/api/me", user="payer").status == 200


def test_me_recreates_a_row_erased_by_another_container(call: Caller) -> None:
    me(call)  # provisioned and remembered by this container
    db.transaction(lambda conn: users.delete_user(conn, "user_a"))  # elsewhere
    assert me(call)["usage"]["total"] == 0


def test_erasure_cannot_be_triggered_cross_site(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    make_user("user_a")
    cookie = f"__session={call.token('user_a')}"
    forged = call("me", "DELETE", "/api/me", headers={"cookie": cookie})
    assert forged.status == 403
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (1,)


# --- GET /api/me/export -----------------------------------------------------------------------


def test_export_contains_everything_stored_about_the_caller_only(call: Caller) -> None:
    seed_everything("user_a")
    seed_everything("user_b")
    result = call("me_export", "GET", "/api/me/export", user="user_a")
    assert result.status == 200, result.text
    assert result.headers["content-disposition"] == 'attachment; filename="keyflash-export.json"'
    assert result.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
    body = result.json
    assert set(body) == {
        "user", "organizationMemberships", "savedSearches", "searchHistory", "apiUsage",
        "webhookEvents", "systemMetrics", "featureFlags", "onErasure",
    }  # fmt: skip
    assert [(m["organizationId"], m["userId"]) for m in body["organizationMemberships"]] == [
        ("org_shared", "user_a")
    ]
    assert "keyed hash" in body["onErasure"]  # the erasure's retention exception, stated
    # The ledger and metric rows that mention the caller (test_personal_data checks them whole).
    assert {e["id"] for e in body["webhookEvents"]} == {
        "evt_meta_user_a", "evt_email_user_a", "evt_cus_user_a", "evt_err_user_a",
    }  # fmt: skip
    assert [m["tags"] for m in body["systemMetrics"]] == [{"userId": "user_a", "tier": "FREE"}]
    user = body["user"]
    assert user["id"] == "user_a" and user["email"] == "user_a@example.com"
    assert user["tier"] == "FREE" and user["stripeCustomerId"] == "cus_user_a"
    assert {"keywordSearchesThisMonth", "keywordSearchesTotal", "monthlyResetAt", "createdAt",
            "updatedAt", "trialStartedAt", "trialEndsAt"} <= set(user)  # fmt: skip
    assert "subscriptionStatus" not in user  # NULL columns are omitted
    assert [s["userId"] for s in body["savedSearches"]] == ["user_a"]
    assert body["savedSearches"][0]["keywords"] == ["k"]
    assert {"id", "name", "matchType", "keywordCount", "lastAccessedAt"} <= set(
        body["savedSearches"][0]
    )
    history = body["searchHistory"]
    assert sorted(h["provider"] for h in history) == ["dataforseo", "mock"]
    assert all(h["ipAddress"] == "198.51.100.0" and h["userAgent"] == "UA/1" for h in history)
    assert sorted(u["endpoint"] for u in body["apiUsage"]) == ["/api/keywords", "/api/searches"]
    assert all(u["userId"] == "user_a" for u in body["apiUsage"])
    stamps = [user["createdAt"], *(h["searchedAt"] for h in history)]
    stamps += [u["timestamp"] for u in body["apiUsage"]]
    assert all(TIMESTAMP.match(stamp) for stamp in stamps)


def test_export_reads_a_constant_number_of_statements(api_env: Keys) -> None:
    """One query per table, however many rows: no N+1."""
    call = Caller("asgi", api_env)
    make_user("user_a")
    assert call("me_export", "GET", "/api/me/export", user="user_a").status == 200  # provisioned
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        sizes = []
        for batch in (1, 12):
            rows = [
                search_history.NewSearch("user_a", ["k"], "US", "en", "exact", "mock", False, 5)
                for _ in range(batch)
            ]
            for row in rows:
                db.run(partial(search_history.record, search=row))
            statements.clear()
            assert call("me_export", "GET", "/api/me/export", user="user_a").status == 200
            sizes.append(len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sizes[0] == sizes[1]
    # One read of the rows, and one size estimate (measured in the database, nothing loaded).
    assert sum("FROM search_history" in s for s in statements) == 2
