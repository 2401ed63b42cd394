"""GET /api/admin/metrics and GET /api/admin/analytics: figures checked against hand-computed
values on seeded rows, validation messages, and admin-only access (real Postgres, both lanes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from shared import config, db
from shared.models import UserTier
from shared.repositories import search_history, system_metrics, users
from tests.support.http import Caller, Keys

ADMIN = "user_admin"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def admin_env(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture
def admin(admin_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Caller:
    """An admin caller; both functions see NOW as the current time."""
    from functions import admin_analytics, admin_metrics

    monkeypatch.setattr(admin_metrics, "utcnow", lambda: NOW)
    monkeypatch.setattr(admin_analytics, "utcnow", lambda: NOW)
    return Caller("lambda_v2", admin_env)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- metrics --------------------------------------------------------------------------------


def seed_metrics() -> None:
    samples = [
        ("db.connections", 1.0, "2026-11-20T09:59:59.999"),  # before `from`
        ("db.connections", 1.0, "2026-11-20T10:00:10"),
        ("db.connections", 3.0, "2026-11-20T10:00:50"),
        ("db.connections", 5.0, "2026-11-20T10:01:30"),
        ("db.connections", 7.0, "2026-11-20T10:59:59.999"),
        ("db.connections", 10.0, "2026-11-20T11:00:00"),
        ("db.connections", 20.0, "2026-11-21T09:00:00"),
        ("db.connections", 99.0, "2026-11-22T00:00:00"),  # == `to` of the day query: excluded
        ("cache.hit_rate", 0.25, "2026-11-20T10:00:20"),  # another metric
    ]
    rows = [system_metrics.Sample(m, v, {"host": "a"}, at(t)) for m, v, t in samples]
    db.run(lambda conn: system_metrics.record_many(conn, rows))


def series(admin: Caller, **query: str) -> Any:
    return admin("admin_metrics", "GET", "/api/admin/metrics", user=ADMIN, query=query)


def point(bucket: str, avg: float, low: float, high: float, count: int) -> dict[str, Any]:
    return {"bucket": bucket, "avg": avg, "min": low, "max": high, "count": count}


def test_minute_hour_and_day_buckets(admin: Caller) -> None:
    seed_metrics()
    window = {"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T10:02:00.000Z"}
    minute = series(admin, metric="db.connections", bucket="minute", **window)
    assert minute.status == 200, minute.text
    assert minute.json == {
        "metric": "db.connections",
        "bucket": "minute",
        "from": "2026-11-20T10:00:00.000Z",
        "to": "2026-11-20T10:02:00.000Z",
        "points": [
            point("2026-11-20T10:00:00.000Z", 2.0, 1.0, 3.0, 2),
            point("2026-11-20T10:01:00.000Z", 5.0, 5.0, 5.0, 1),
        ],
    }
    window = {"from": "2026-11-20T11:00:00+01:00", "to": "2026-11-20T12:00:00Z"}
    hour = series(admin, metric="db.connections", bucket="hour", **window)
    assert hour.json["from"] == "2026-11-20T10:00:00.000Z"  # the offset is honoured
    assert hour.json["points"] == [
        point("2026-11-20T10:00:00.000Z", 4.0, 1.0, 7.0, 4),
        point("2026-11-20T11:00:00.000Z", 10.0, 10.0, 10.0, 1),
    ]
    day = series(admin, metric="db.connections", bucket="day",
                 **{"from": "2026-11-20T00:00:00", "to": "2026-11-22T00:00:00"})  # fmt: skip
    assert day.json["points"] == [
        point("2026-11-20T00:00:00.000Z", 4.5, 1.0, 10.0, 6),
        point("2026-11-21T00:00:00.000Z", 20.0, 20.0, 20.0, 1),
    ]
    empty = series(admin, metric="nothing.here", **{"from": "2026-11-20T00:00:00Z"})
    assert empty.json["points"] == [] and empty.json["bucket"] == "hour"


def test_default_window_is_the_last_24_hours_in_hours(admin: Caller) -> None:
    rows = [
        system_metrics.Sample("api.latency", 30.0, None, NOW - timedelta(minutes=30)),
        system_metrics.Sample("api.latency", 50.0, None, NOW - timedelta(minutes=20)),
        system_metrics.Sample("api.latency", 99.0, None, NOW - timedelta(hours=25)),
    ]
    db.run(lambda conn: system_metrics.record_many(conn, rows))
    result = series(admin, metric="api.latency")
    assert result.json == {
        "metric": "api.latency",
        "bucket": "hour",
        "from": "2026-11-19T15:00:00.000Z",
        "to": "2026-11-20T15:00:00.000Z",
        "points": [point("2026-11-20T14:00:00.000Z", 40.0, 30.0, 50.0, 2)],
    }


def test_non_finite_values_are_left_out_of_the_aggregates_and_counted(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """NaN and ±Infinity, which `double precision` takes from any writer (psql, the original
    app), are not JSON: each bucket aggregates its finite values and counts the others."""
    admin_conn.execute(
        """INSERT INTO system_metrics (id, metric, value, timestamp) VALUES
               ('a', 'odd', 'NaN', '2026-11-20T10:10:00'),
               ('b', 'odd', 'Infinity', '2026-11-20T10:20:00'),
               ('c', 'odd', 2, '2026-11-20T10:30:00'),
               ('d', 'odd', 4, '2026-11-20T10:40:00'),
               ('e', 'odd', '-Infinity', '2026-11-20T11:10:00'),
               ('f', 'odd', 'NaN', '2026-11-20T11:20:00')"""
    )
    window = {"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T12:00:00Z"}
    for bucket in ("minute", "hour", "day"):
        result = series(admin, metric="odd", bucket=bucket, **window)
        assert result.status == 200, result.text
    hour = series(admin, metric="odd", bucket="hour", **window)
    assert hour.json["points"] == [
        {**point("2026-11-20T10:00:00.000Z", 3.0, 2.0, 4.0, 2), "nonFinite": 2},
        {"bucket": "2026-11-20T11:00:00.000Z", "avg": None, "min": None, "max": None,
         "count": 0, "nonFinite": 2},
    ]  # fmt: skip
    day = series(admin, metric="odd", bucket="day", **window)
    assert day.json["points"] == [{**point("2026-11-20T00:00:00.000Z", 3.0, 2.0, 4.0, 2),
                                    "nonFinite": 4}]  # fmt: skip


def test_an_average_past_a_doubles_range_is_still_answered(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Two values of 1.7e308 sum past the largest double; their mean does not."""
    admin_conn.execute(
        """INSERT INTO system_metrics (id, metric, value, timestamp) VALUES
               ('a', 'big', 1.7e308, '2026-11-20T10:10:00'),
               ('b', 'big', 1.7e308, '2026-11-20T10:20:00'),
               ('c', 'big', -1.7e308, '2026-11-20T11:10:00'),
               ('d', 'big', -1.7e308, '2026-11-20T11:20:00')"""
    )
    result = series(admin, metric="big", **{"from": "2026-11-20T10:00:00Z"})
    assert result.status == 200, result.text
    assert result.json["points"] == [
        point("2026-11-20T10:00:00.000Z", 1.7e308, 1.7e308, 1.7e308, 2),
        point("2026-11-20T11:00:00.000Z", -1.7e308, -1.7e308, -1.7e308, 2),
    ]


def test_an_average_keeps_every_digit_of_its_values(admin: Caller) -> None:
    value = 1.2345678901234567
    rows = [system_metrics.Sample("exact", value, None, at("2026-11-20T10:00:00"))]
    db.run(lambda conn: system_metrics.record_many(conn, rows))
    result = series(admin, metric="exact", **{"from": "2026-11-20T10:00:00Z"})
    assert result.json["points"] == [point("2026-11-20T10:00:00.000Z", value, value, value, 1)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "metric is required"),
        ({"metric": "  "}, "metric is required"),
        ({"metric": "m" * 201}, "metric must be at most 200 characters"),
        ({"metric": "m", "bucket": "week"}, "bucket must be one of minute, hour, day"),
        ({"metric": "m", "from": "yesterday"},
         "from must be an ISO 8601 timestamp, e.g. 2026-11-01T00:00:00.000Z"),
        ({"metric": "m", "to": "2026-13-01"},
         "to must be an ISO 8601 timestamp, e.g. 2026-11-01T00:00:00.000Z"),
        ({"metric": "m", "from": "2026-11-20T10:00:00Z", "to": "2026-11-20T10:00:00Z"},
         "from must be before to"),
        ({"metric": "m", "from": "2026-11-21T00:00:00Z", "to": "2026-11-20T00:00:00Z"},
         "from must be before to"),
        ({"metric": "m", "to": "0001-01-01T00:00:00Z"},
         "to must be after 0001-01-01T00:00:00.000Z"),
        ({"metric": "m", "to": "9999-12-31T23:59:59-01:00"},
         "to must fall within the years 1 to 9999 in UTC"),
        ({"metric": "m", "from": "0001-01-01T00:00:00+01:00"},
         "from must fall within the years 1 to 9999 in UTC"),
        ({"metric": "m", "bucket": "minute", "from": "2026-10-01T00:00:00Z",
          "to": "2026-10-08T00:00:01Z"}, "the range may span at most 7 days for minute buckets"),
        ({"metric": "m", "bucket": "hour", "from": "2025-01-01T00:00:00Z",
          "to": "2026-01-03T00:00:00Z"}, "the range may span at most 366 days for hour buckets"),
        ({"metric": "m", "bucket": "day", "from": "2020-01-01T00:00:00Z"},
         "the range may span at most 1096 days for day buckets"),
    ],
)  # fmt: skip
def test_metric_query_validation(admin: Caller, query: dict[str, str], message: str) -> None:
    result = series(admin, **query)
    assert result.status == 400, result.text
    assert (result.json["error"], result.json["message"]) == ("Validation Error", message)


def test_widest_allowed_ranges_are_accepted(admin: Caller) -> None:
    minute = series(admin, metric="m", bucket="minute",
                    **{"from": "2026-10-01T00:00:00Z", "to": "2026-10-08T00:00:00Z"})  # fmt: skip
    assert (minute.status, minute.json["points"]) == (200, [])
    day = series(admin, metric="m", bucket="day", **{"from": "2023-11-20T15:00:00Z"})
    assert day.status == 200


def test_a_default_from_before_year_1_starts_at_year_1(admin: Caller) -> None:
    """The caller sent only `to`, within the default window of the first moment: no error
    about a `from` they never sent."""
    result = series(admin, metric="m", to="0001-01-01T12:00:00Z")
    assert result.status == 200, result.text
    assert (result.json["from"], result.json["to"]) == (
        "0001-01-01T00:00:00.000Z",
        "0001-01-01T12:00:00.000Z",
    )


# --- analytics ------------------------------------------------------------------------------

# (searchedAt, provider, cacheHit, responseTime ms, keywords); NOW = 2026-11-20T15:00Z.
SEARCHES: list[tuple[str, str, bool, int, list[str]]] = [
    ("2026-11-17T12:00:00", "mock", False, 500, ["old"]),
    ("2026-11-17T23:59:59.999", "mock", False, 500, ["old"]),
    ("2026-11-18T00:00:00", "mock", False, 100, ["SEO", "keyword tool"]),
    ("2026-11-18T12:00:00", "dataforseo", True, 300, ["seo"]),
    ("2026-11-19T14:59:59.999", "dataforseo", False, 200, ["seo tools", " SEO "]),
    ("2026-11-19T15:00:00", "mock", True, 40, ["keyword tool"]),
    ("2026-11-20T09:00:00", "mock", False, 60, ["seo"]),
    ("2026-11-20T10:00:00", "mock", False, 100, [f"kw{i:02d}" for i in range(12, 0, -1)]),
    ("2026-11-20T11:00:00", "mock", False, 20, []),
    ("2026-11-20T15:00:00", "mock", False, 1, ["future"]),  # == now: outside [since, now)
]


def seed_analytics() -> None:
    for user_id, tier, status in [
        ("u_free", UserTier.FREE, None),
        ("u_pro", UserTier.PRO, "active"),
        ("u_grace", UserTier.PRO, "past_due"),
        ("u_ent", UserTier.ENTERPRISE, "active"),
    ]:
        db.run(lambda s, u=user_id, t=tier: users.create(s, u, f"{u}@example.com", tier=t))
        if status:
            db.run(lambda s, u=user_id, st=status: users.update_user(s, u, subscription_status=st))
    for searched_at, provider, hit, took, keywords in SEARCHES:
        row = search_history.NewSearch(
            user_id="u_pro", keywords=keywords, location="US", language="en", match_type="phrase",
            provider=provider, cache_hit=hit, response_time=took,
        )  # fmt: skip
        db.run(lambda s, r=row, t=searched_at: search_history.record(s, r, now=at(t)))


def analytics(admin: Caller, **query: str) -> Any:
    return admin("admin_analytics", "GET", "/api/admin/analytics", user=ADMIN, query=query)


def test_analytics_figures_match_hand_computed_values(admin: Caller) -> None:
    seed_analytics()
    result = analytics(admin, days="3")
    assert result.status == 200, result.text
    assert result.json == {
        "days": 3,
        "from": "2026-11-18T00:00:00.000Z",
        "to": "2026-11-20T15:00:00.000Z",
        "searches": {
            "total": 7,
            "perDay": [
                {"date": "2026-11-18", "searches": 2},
                {"date": "2026-11-19", "searches": 2},
                {"date": "2026-11-20", "searches": 3},
            ],
            "cacheHitRate": 0.2857,  # 2 of 7
            "providers": {
                "dataforseo": {"searches": 2, "avgResponseTime": 250.0, "cacheHitRate": 0.5},
                "mock": {"searches": 5, "avgResponseTime": 64.0, "cacheHitRate": 0.2},
            },
        },
        # [2026-11-19T15:00, now): 40, 60, 100, 20 ms
        "last24h": {"searches": 4, "avgResponseTime": 55.0},
        "topKeywords": [
            {"keyword": "seo", "searches": 4},  # case-folded and trimmed
            {"keyword": "keyword tool", "searches": 2},
            *({"keyword": f"kw{i:02d}", "searches": 1} for i in range(1, 9)),  # ties: a-z
        ],
        "subscriptions": {  # + the admin, provisioned (FREE) by the call
            "totalUsers": 5,
            "freeUsers": 2,
            "proUsers": 2,
            "enterpriseUsers": 1,
            "activeSubscriptions": 2,
        },
    }


def test_analytics_default_window_zero_fills_days(admin: Caller) -> None:
    seed_analytics()
    result = analytics(admin)
    assert result.json["days"] == 7 and result.json["from"] == "2026-11-14T00:00:00.000Z"
    assert [d["searches"] for d in result.json["searches"]["perDay"]] == [0, 0, 0, 2, 2, 2, 3]
    assert result.json["searches"]["perDay"][0]["date"] == "2026-11-14"
    today = analytics(admin, days="1")
    assert today.json["searches"]["perDay"] == [{"date": "2026-11-20", "searches": 3}]
    assert today.json["searches"]["total"] == 3


def test_top_keywords_count_each_search_once(admin: Caller) -> None:
    db.run(lambda s: users.create(s, "u_dup", "dup@example.com"))
    for keywords in (["Latte Dup", "latte dup", " LATTE DUP "], ["latte dup", "x"], ["x"], ["x"]):
        row = search_history.NewSearch("u_dup", keywords, "US", "en", "phrase", "mock", False, 5)
        db.run(lambda s, r=row: search_history.record(s, r, now=at("2026-11-20T09:00:00")))
    result = analytics(admin, days="1")
    assert result.json["topKeywords"] == [
        {"keyword": "x", "searches": 3},  # more searches, fewer mentions
        {"keyword": "latte dup", "searches": 2},
    ]


def test_top_keywords_are_lower_cased_not_case_folded(admin: Caller) -> None:
    """PostgreSQL `lower(btrim(…))`, as documented: Unicode-aware lower-casing, no folding of ß
    to ss, and only the space character trimmed."""
    db.run(lambda s: users.create(s, "u_case", "case@example.com"))
    keywords = ["Straße", "STRASSE", "ÉTÉ", " été ", "\u00a0été"]
    row = search_history.NewSearch("u_case", keywords, "US", "en", "phrase", "mock", False, 5)
    db.run(lambda s: search_history.record(s, row, now=at("2026-11-20T09:00:00")))
    result = analytics(admin, days="1")
    assert sorted(k["keyword"] for k in result.json["topKeywords"]) == [
        "strasse", "straße", "\u00a0été", "été"
    ]  # fmt: skip


def test_analytics_on_an_empty_database_omits_averages(admin: Caller) -> None:
    result = analytics(admin, days="2")
    assert result.json["searches"] == {
        "total": 0,
        "perDay": [{"date": "2026-11-19", "searches": 0}, {"date": "2026-11-20", "searches": 0}],
        "providers": {},
    }
    assert result.json["last24h"] == {"searches": 0}
    assert result.json["topKeywords"] == []
    assert result.json["subscriptions"]["totalUsers"] == 1  # the admin, provisioned by the call


def test_each_analytics_figure_is_one_query(admin: Caller) -> None:
    seed_analytics()
    analytics(admin)  # provisions the admin (once per container)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert analytics(admin).status == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    figures = [s for s in statements if "api_usage" not in s]
    assert len(figures) == 5, figures  # per day, window stats, 24 h stats, keywords, users


@pytest.mark.parametrize("days", ["0", "91", "abc", "7.5", "-1", ""])
def test_analytics_days_validation(admin: Caller, days: str) -> None:
    result = analytics(admin, days=days)
    assert result.status == 400
    assert result.json["message"] == "days must be a whole number from 1 to 90"


# --- access ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "path"),
    [("admin_metrics", "/api/admin/metrics"), ("admin_analytics", "/api/admin/analytics")],
)
def test_admin_endpoints_refuse_anonymous_and_members(
    call: Caller, admin_env: Keys, module: str, path: str
) -> None:
    anonymous = call(module, "GET", path, query={"metric": "m"})
    assert (anonymous.status, anonymous.json["message"]) == (401, "Authentication required")
    member = call(module, "GET", path, user="user_member", query={"metric": "m", "days": "x"})
    assert (member.status, member.json["message"]) == (403, "Admin access required")
    assert member.json["error"] == "Client Error"
    allowed = call(module, "GET", path, user=ADMIN, query={"metric": "m"})
    assert allowed.status == 200, allowed.text
    assert allowed.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"


def test_analytics_names_the_busiest_providers_only(
    admin: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.contracts import admin as contract

    monkeypatch.setattr(contract, "MAX_PROVIDERS", 2)
    now = NOW - timedelta(hours=1)
    for provider, searches in (("quiet", 1), ("busy", 3), ("middle", 2), ("also-middle", 2)):
        for _ in range(searches):
            db.run(lambda s, p=provider: search_history.record(s, search=search_history.NewSearch(
                None, ["k"], "US", "en", "exact", p, False, 5), now=now))  # fmt: skip
    providers = analytics(admin, days="1").json["searches"]["providers"]
    assert list(providers) == ["also-middle", "busy"]  # most searches; a tie goes a to z
