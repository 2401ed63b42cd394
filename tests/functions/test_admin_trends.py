"""GET /api/admin/analytics/trends: each report's points after a cron refresh, how old the
figures are (also after a failed refresh), validation, and admin-only access. Both lanes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from shared import config, db
from shared.cron import rollup
from shared.cron.runner import run_job
from shared.models import UserTier
from shared.repositories import reports, search_history, users
from tests.support.http import Caller, Keys

ADMIN = "user_admin"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
REFRESHED = NOW - timedelta(hours=2)


@pytest.fixture
def admin(api_env: Keys, monkeypatch: pytest.MonkeyPatch, direct_database_url: str) -> Caller:
    """An admin caller that sees NOW as the current time, over freshly emptied reports."""
    from functions import admin_trends

    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    monkeypatch.setattr(admin_trends, "utcnow", lambda: NOW)
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        for report in reports.REPORTS:  # views outlive the tables' cleaning between tests
            conn.execute(f"REFRESH MATERIALIZED VIEW {report}")
    return Caller("lambda_v2", api_env)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def seed() -> None:
    for user_id, tier in (("u_free", UserTier.FREE), ("u_pro", UserTier.PRO)):
        db.run(lambda s, u=user_id, t=tier: users.create(s, u, f"{u}@example.com", tier=t))
    for user_id, searched_at, provider, hit, took, keywords in [
        ("u_free", "2026-10-31T23:00:00", "mock", False, 100, ["SEO", "seo tools"]),
        ("u_free", "2026-11-02T00:00:00", "mock", True, 20, [" seo "]),
        ("u_pro", "2026-11-08T23:00:00", "dataforseo", False, 300, ["seo", "Rank"]),
        ("u_pro", "2026-11-09T00:00:00", "dataforseo", True, 101, ["rank"]),
    ]:
        row = search_history.NewSearch(
            user_id=user_id, keywords=keywords, location="US", language="en",
            match_type="phrase", provider=provider, cache_hit=hit, response_time=took,
        )  # fmt: skip
        db.run(lambda s, r=row, t=searched_at: search_history.record(s, r, now=at(t)))
    run_job(rollup.JOB, now=REFRESHED)


def trends(admin: Caller, **query: str) -> Any:
    return admin("admin_trends", "GET", "/api/admin/analytics/trends", user=ADMIN, query=query)


def test_usage_by_tier(admin: Caller) -> None:
    seed()
    result = trends(admin, metric="usage-by-tier")
    assert result.status == 200, result.text
    assert result.json == {
        "metric": "usage-by-tier",
        "from": "2025-11-19T15:00:00.000Z",  # default: 366 days before `to`
        "to": "2026-11-20T15:00:00.000Z",
        "refreshedAt": "2026-11-20T13:00:00.000Z",
        "ageSeconds": 7200,
        "points": [
            {"bucket": "2026-10-01T00:00:00.000Z", "tier": "FREE", "searches": 1,
             "keywords": 2, "users": 1, "cacheHitRate": 0.0},
            {"bucket": "2026-11-01T00:00:00.000Z", "tier": "FREE", "searches": 1,
             "keywords": 1, "users": 1, "cacheHitRate": 1.0},
            {"bucket": "2026-11-01T00:00:00.000Z", "tier": "PRO", "searches": 2,
             "keywords": 3, "users": 1, "cacheHitRate": 0.5},
        ],
    }  # fmt: skip


def test_keyword_trends_in_a_window(admin: Caller) -> None:
    seed()
    window = {"from": "2026-11-02T00:00:00Z", "to": "2026-11-16T00:00:00.000Z"}
    result = trends(admin, metric="keyword-trends", **window)
    assert result.status == 200, result.text
    assert result.json["points"] == [  # weeks starting in [from, to); most searched first
        {"bucket": "2026-11-02T00:00:00.000Z", "keyword": "seo", "searches": 2, "users": 2},
        {"bucket": "2026-11-02T00:00:00.000Z", "keyword": "rank", "searches": 1, "users": 1},
        {"bucket": "2026-11-09T00:00:00.000Z", "keyword": "rank", "searches": 1, "users": 1},
    ]
    assert (result.json["from"], result.json["to"]) == (
        "2026-11-02T00:00:00.000Z",
        "2026-11-16T00:00:00.000Z",
    )


def test_keyword_trends_are_bounded_per_week(
    admin: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.contracts import trends as contract

    seed()
    monkeypatch.setattr(contract, "TOP_PER_WEEK", 1)
    result = trends(admin, metric="keyword-trends", **{"from": "2026-10-26T00:00:00Z"})
    assert [(p["bucket"][:10], p["keyword"]) for p in result.json["points"]] == [
        ("2026-10-26", "seo"),  # a tie with "seo tools": a to z
        ("2026-11-02", "seo"),
        ("2026-11-09", "rank"),
    ]


def test_a_keyword_counts_once_per_search_that_names_it(admin: Caller) -> None:
    """`searches` is searches: one search naming a keyword three times (the API keeps the
    forms as typed) counts once, as the usage report counts it."""
    db.run(lambda s: users.create(s, "u_dup", "dup@example.com"))
    for keywords in (["Latte Dup", "latte dup", " LATTE DUP "], ["latte dup", "x"]):
        row = search_history.NewSearch("u_dup", keywords, "US", "en", "phrase", "mock", False, 5)
        db.run(lambda s, r=row: search_history.record(s, r, now=at("2026-11-17T10:00:00")))
    run_job(rollup.JOB, now=REFRESHED)
    result = trends(admin, metric="keyword-trends")
    assert result.status == 200, result.text
    assert result.json["points"] == [
        {"bucket": "2026-11-16T00:00:00.000Z", "keyword": "latte dup", "searches": 2, "users": 1},
        {"bucket": "2026-11-16T00:00:00.000Z", "keyword": "x", "searches": 1, "users": 1},
    ]


def test_provider_performance(admin: Caller) -> None:
    seed()
    result = trends(admin, metric="provider-performance")
    assert result.status == 200, result.text
    assert result.json["points"] == [
        {"bucket": "2026-10-26T00:00:00.000Z", "provider": "mock", "searches": 1,
         "avgResponseTime": 100.0, "cacheHitRate": 0.0},
        {"bucket": "2026-11-02T00:00:00.000Z", "provider": "dataforseo", "searches": 1,
         "avgResponseTime": 300.0, "cacheHitRate": 0.0},
        {"bucket": "2026-11-02T00:00:00.000Z", "provider": "mock", "searches": 1,
         "avgResponseTime": 20.0, "cacheHitRate": 1.0},
        {"bucket": "2026-11-09T00:00:00.000Z", "provider": "dataforseo", "searches": 1,
         "avgResponseTime": 101.0, "cacheHitRate": 1.0},
    ]  # fmt: skip


def test_never_refreshed_says_nothing_of_age(admin: Caller) -> None:
    result = trends(admin, metric="provider-performance")
    assert result.status == 200, result.text
    assert result.json == {
        "metric": "provider-performance",
        "from": "2026-08-28T15:00:00.000Z",  # default: 12 weeks
        "to": "2026-11-20T15:00:00.000Z",
        "points": [],
    }


def test_a_failed_refresh_serves_the_last_figures_and_says_how_old(
    admin: Caller, direct_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed()
    before = trends(admin, metric="usage-by-tier").json
    row = search_history.NewSearch("u_pro", ["x"], "US", "en", "exact", "mock", False, 5)
    db.run(lambda conn: search_history.record(conn, row, now=at("2026-11-20T13:30:00")))
    monkeypatch.setattr(rollup, "REFRESH_LOCK_TIMEOUT_MS", 1)
    failed_at = NOW - timedelta(minutes=30)
    with psycopg.connect(direct_database_url) as holder:
        holder.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY report_usage_by_tier")
        assert run_job(rollup.JOB, now=failed_at)["reportsFailed"] == ["report_usage_by_tier"]
        holder.rollback()
    result = trends(admin, metric="usage-by-tier")
    assert result.status == 200, result.text
    assert result.json == {**before, "refreshFailedAt": "2026-11-20T14:30:00.000Z"}
    assert result.json["ageSeconds"] == 7200  # the last successful refresh's age
    other = trends(admin, metric="keyword-trends")
    assert (other.json["refreshedAt"], other.json["ageSeconds"]) == (
        "2026-11-20T14:30:00.000Z",
        1800,
    )
    assert "refreshFailedAt" not in other.json


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "metric must be one of usage-by-tier, keyword-trends, provider-performance"),
        ({"metric": "revenue"}, "metric must be one of usage-by-tier, keyword-trends, "
         "provider-performance"),
        ({"metric": "keyword-trends", "from": "last week"},
         "from must be an ISO 8601 timestamp, e.g. 2026-11-01T00:00:00.000Z"),
        ({"metric": "keyword-trends", "to": "2026-13-01"},
         "to must be an ISO 8601 timestamp, e.g. 2026-11-01T00:00:00.000Z"),
        ({"metric": "keyword-trends", "from": "2026-11-20T00:00:00Z",
          "to": "2026-11-20T00:00:00Z"}, "from must be before to"),
        ({"metric": "keyword-trends", "to": "0001-01-01T00:00:00Z"},
         "to must be after 0001-01-01T00:00:00.000Z"),
        ({"metric": "keyword-trends", "to": "9999-12-31T23:59:59-01:00"},
         "to must fall within the years 1 to 9999 in UTC"),
        ({"metric": "keyword-trends", "from": "0001-01-01T00:00:00+01:00"},
         "from must fall within the years 1 to 9999 in UTC"),
        ({"metric": "keyword-trends", "from": "2025-01-01T00:00:00Z"},
         "the range may span at most 371 days for keyword-trends"),
        ({"metric": "usage-by-tier", "from": "2023-01-01T00:00:00Z"},
         "the range may span at most 1096 days for usage-by-tier"),
    ],
)  # fmt: skip
def test_bad_queries_are_400(admin: Caller, query: dict[str, str], message: str) -> None:
    result = trends(admin, **query)
    assert (result.status, result.json["message"]) == (400, message), result.text
    assert result.json["error"] == "Validation Error"


@pytest.mark.parametrize(
    ("metric", "to"),
    [("keyword-trends", "0001-03-25T00:00:00Z"), ("usage-by-tier", "0002-01-01T00:00:00Z")],
)
def test_a_default_from_before_year_1_starts_at_year_1(admin: Caller, metric: str, to: str) -> None:
    result = trends(admin, metric=metric, to=to)
    assert result.status == 200, result.text
    assert result.json["from"] == "0001-01-01T00:00:00.000Z"


def test_members_and_anonymous_callers_are_refused(
    call: Caller, api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    path, query = "/api/admin/analytics/trends", {"metric": "keyword-trends"}
    anonymous = call("admin_trends", "GET", path, query=query)
    assert (anonymous.status, anonymous.json["message"]) == (401, "Authentication required")
    member = call("admin_trends", "GET", path, user="user_member", query={"metric": "x"})
    assert (member.status, member.json["message"]) == (403, "Admin access required")
    allowed = call("admin_trends", "GET", path, user=ADMIN, query=query)
    assert allowed.status == 200, allowed.text
    assert allowed.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
