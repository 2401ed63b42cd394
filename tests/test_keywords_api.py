"""POST /api/keywords (spec §2.1, §3) through the Lambda handler and HTTP, on both lanes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from threading import Barrier
from typing import Any

import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse
from sqlalchemy import event

from shared import config, db, providers
from tests.support.http import Caller, Keys

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BODY = {"keywords": ["seo tools", "keyword research"], "matchType": "phrase", "location": "US"}


DATAFORSEO_URL = re.compile(r"https://api\.dataforseo\.com/.*")
FIXTURES = Path(__file__).parent / "fixtures" / "dataforseo"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(autouse=True)
def fresh_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_PROVIDER_SEED", "7")
    monkeypatch.setenv("DATAFORSEO_REQUESTS_PER_MINUTE", "0")  # its own tests turn it on
    config.get_settings.cache_clear()
    providers.reset_providers()


@contextmanager
def dataforseo_upstream() -> Iterator[respx.MockRouter]:
    """respx for DataForSEO only: our Upstash emulator (on loopback) is reached for real."""
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        yield mock


def use_dataforseo(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="secret-password",
        **env,
    )


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


def user_id() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def search(call: Caller, user: str | None, body: Any = None, **kw: Any) -> Any:
    return call("keywords", "POST", "/api/keywords", user=user, json_body=body or BODY, **kw)


# --- contract ------------------------------------------------------------------------------


def fresh_keywords() -> list[str]:
    """Keywords no earlier test cached (the emulator lives for the whole session)."""
    tag = uuid.uuid4().hex[:10]
    return [f"seo tools {tag}", f"keyword research {tag}"]


def test_miss_then_hit_with_the_original_response_shape(call: Caller) -> None:
    who = user_id()
    keywords = fresh_keywords()
    first = search(call, who, {**BODY, "keywords": keywords})
    assert first.status == 200, first.text
    body = first.json
    assert set(body) == {"data", "cached", "cacheHealthy", "timestamp", "mockData", "provider"}
    assert (body["cached"], body["cacheHealthy"], body["mockData"], body["provider"]) == (
        False, True, True, "Mock",
    )  # fmt: skip
    assert TIMESTAMP.match(body["timestamp"])
    assert [row["keyword"] for row in body["data"]] == keywords
    assert first.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
    assert "x-ratelimit-remaining" in first.headers and "x-ratelimit-reset" in first.headers

    reordered = search(call, who, {**BODY, "keywords": keywords[::-1]})
    assert reordered.json["cached"] is True and "cacheHealthy" not in reordered.json
    assert [row["keyword"] for row in reordered.json["data"]] == keywords[::-1]
    assert reordered.json["data"][1] == body["data"][0]  # the same cached row, in request order


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**BODY, "keywords": []}, "At least one keyword is required"),
        ({**BODY, "keywords": ["k"] * 201}, "Maximum 200 keywords allowed"),
        ({**BODY, "keywords": ["  "]}, "Keyword cannot be empty"),
        ({**BODY, "keywords": ["x" * 101]}, "Keyword too long (max 100 chars)"),
        (
            {**BODY, "keywords": ["seo; DROP TABLE users"]},
            "Keywords must contain only letters, numbers, spaces, hyphens, and underscores",
        ),
        (
            {**BODY, "location": "XX"},
            "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global",
        ),
        (
            {**BODY, "location": "us"},
            "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global",
        ),
        ({**BODY, "language": "english"}, "Language must be valid language code (e.g., en, en-US)"),
        (
            {**BODY, "keywords": [""], "location": "XX"},
            "Keyword cannot be empty, "
            "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global",
        ),
    ],
)
def test_validation_messages(call: Caller, body: dict[str, Any], message: str) -> None:
    result = search(call, user_id(), body)
    assert result.status == 400
    assert (result.json["error"], result.json["message"]) == ("Validation Error", message)


def test_match_type_is_required(call: Caller) -> None:
    result = search(call, user_id(), {"keywords": ["seo"]})
    assert result.status == 400 and "matchType" in result.json["message"]


def test_blank_location_and_language_mean_defaults_and_gl_is_worldwide(call: Caller) -> None:
    result = search(call, user_id(), {**BODY, "location": " ", "language": "", "extra": 1})
    assert result.status == 200
    result = search(call, user_id(), {**BODY, "location": "GL", "language": "en-US"})
    assert result.status == 200


def test_unicode_spaces_are_allowed_like_js(call: Caller) -> None:
    result = search(call, user_id(), {**BODY, "keywords": ["seo\u00a0tools"]})
    assert result.status == 200


def test_sign_in_required_after_validation(call: Caller) -> None:
    anonymous = search(call, None)
    assert anonymous.status == 401
    assert anonymous.json["message"] == "Authentication required. Please sign in to use KeyFlash."
    invalid = search(call, None, {"keywords": []})
    assert invalid.status == 400  # body first, then auth (the original's order)


def test_get_is_405_with_the_original_body(call: Caller) -> None:
    result = call("keywords", "GET", "/api/keywords")
    assert result.status == 405
    assert result.json["error"] == "Method Not Allowed"
    assert result.json["message"] == "Use POST to search for keywords"
    assert result.json["supportedMethods"] == ["POST"]


def test_rate_limit_counts_before_validation_and_auth(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS_PER_HOUR="2")
    agent = {"user-agent": str(uuid.uuid4())}
    assert search(call, None, {"keywords": []}, headers=agent).status == 400
    assert search(call, None, headers=agent).status == 401
    refused = search(call, None, headers=agent)
    assert refused.status == 429
    assert refused.json["error"] == "Rate Limit Exceeded"
    assert refused.json["message"].endswith("seconds. Limit: 2 requests/hour.")
    assert refused.headers["x-ratelimit-remaining"] == "0" and "retry-after" in refused.headers
    signed_in = search(call, user_id(), headers=agent)
    assert signed_in.status == 200  # a signed-in user has a budget of their own


# --- quotas --------------------------------------------------------------------------------


def reservation_rows(admin: psycopg.Connection[Any], user: str) -> int:
    row = admin.execute(
        'SELECT count(*) FROM keyword_reservations WHERE "userId" = %s', (user,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def set_user(admin: psycopg.Connection[Any], user: str, sql: str, *params: Any) -> None:
    admin.execute(f"UPDATE users SET {sql} WHERE id = %s", (*params, user))


def counters(admin: psycopg.Connection[Any], user: str) -> tuple[int, int]:
    row = admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        (user,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_usage_is_counted_per_keyword_on_hits_too_with_billing_off(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = user_id()
    body = {**BODY, "keywords": fresh_keywords()}
    assert search(call, who, body).json["cached"] is False
    assert search(call, who, body).json["cached"] is True
    assert counters(admin_conn, who) == (4, 4)


def test_trial_users_get_mock_data_and_no_cache_with_billing_on(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", KEYWORD_API_PROVIDER="dataforseo")
    who = user_id()
    first = search(call, who).json
    second = search(call, who).json
    assert (first["provider"], first["mockData"], first["cached"]) == ("Mock", True, False)
    assert second["cached"] is False and "cacheHealthy" not in second


def test_expired_trial_is_403_and_nothing_is_counted(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true")
    who = user_id()
    search(call, who)
    set_user(admin_conn, who, "\"trialEndsAt\" = now() - interval '1 day'")
    result = search(call, who)
    assert result.status == 403
    assert result.json["message"] == (
        "Your 7-day free trial has expired. Upgrade to Pro to continue using KeyFlash."
    )
    assert counters(admin_conn, who) == (2, 2)


def test_trial_quota_429_with_remaining_header(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true")
    who = user_id()
    search(call, who)
    set_user(admin_conn, who, '"keywordSearchesTotal" = 299')
    result = search(call, who)
    assert result.status == 429
    assert result.json["error"] == "Client Error"
    assert result.json["message"] == (
        "Monthly keyword limit reached (299/300). Upgrade to Pro for 1,000 keywords/month."
    )
    assert result.headers["x-quota-remaining"] == "1"


def test_pro_quota_resets_lazily_in_a_new_month(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true")
    who = user_id()
    search(call, who)
    set_user(admin_conn, who, "tier = 'PRO', \"keywordSearchesThisMonth\" = 1000")
    refused = search(call, who)
    assert refused.status == 429
    assert refused.json["message"] == (
        "Monthly keyword limit reached (1000/1000). Your limit resets at the start of next month."
    )
    set_user(admin_conn, who, "\"monthlyResetAt\" = date_trunc('month', now()) - interval '1 day'")
    assert search(call, who).status == 200
    assert counters(admin_conn, who)[0] == 2


def test_forty_parallel_pro_requests_never_pass_the_limit(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", DB_POOL_SIZE="20")
    db.dispose_engine()
    call = Caller("lambda_v2", api_env)
    who = user_id()
    fifty = {**BODY, "keywords": [f"kw {i}" for i in range(50)]}
    assert search(call, who, {**BODY, "keywords": ["warm"]}).status == 200
    set_user(admin_conn, who, "tier = 'PRO', \"keywordSearchesThisMonth\" = 300")
    start = Barrier(20)

    def one(index: int) -> int:
        if index < 20:
            start.wait()
        return search(call, who, fifty).status

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(one, range(40)))
    assert (statuses.count(200), statuses.count(429)) == (14, 26)
    assert counters(admin_conn, who)[0] == 1000


# --- provider failures, cache, history ----------------------------------------------------


def test_provider_failure_gives_the_reservation_back(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="secret-password",
    )
    who = user_id()
    with dataforseo_upstream() as mock:
        mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(500, text="upstream exploded: rate limit of account 42")
        )
        result = search(call, who)
    assert result.status == 502
    assert result.json["message"] == "An unexpected error occurred"
    assert "upstream" not in result.text and "rate limit" not in result.text
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s', (who,)
    ).fetchone()
    assert row == (0, 0)


def test_provider_is_part_of_the_cache_key(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    who = user_id()
    body = {**BODY, "keywords": fresh_keywords()}
    assert search(call, who, body).json["cached"] is False
    assert search(call, who, body).json["cached"] is True
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="pw",
    )
    rows = [{"keyword": k, "search_volume": 10} for k in body["keywords"]]
    task = {"status_code": 20000, "result": rows}
    with dataforseo_upstream() as mock:
        mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(200, json={"status_code": 20000, "tasks": [task]})
        )
        switched = search(call, who, body).json
    assert (switched["cached"], switched["provider"]) == (False, "DataForSEO")


def test_privacy_mode_skips_the_cache(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    settings(monkeypatch, PRIVACY_MODE="true")
    who = user_id()
    body = {**BODY, "keywords": [f"private {uuid.uuid4().hex}"]}
    assert search(call, who, body).json["cacheHealthy"] is False
    assert search(call, who, body).json["cached"] is False


def test_history_row_contents(call: Caller, admin_conn: psycopg.Connection[Any]) -> None:
    who = user_id()
    keyword = fresh_keywords()[0]
    body = {
        "keywords": [keyword, keyword],
        "matchType": "exact",
        "location": "GB",
        "language": "en-GB",
    }
    result = search(call, who, body, headers={"user-agent": "agent/2"})
    volumes = [row["searchVolume"] for row in result.json["data"]]
    row = admin_conn.execute(
        'SELECT keywords, location, language, "matchType", provider, "cacheHit", "keywordCount",'
        ' "avgVolume", "totalVolume", "userAgent", "ipAddress", "responseTime" FROM search_history'
        ' WHERE "userId" = %s',
        (who,),
    ).fetchone()
    assert row is not None
    assert row[:10] == (
        [keyword, keyword], "United Kingdom", "en-GB", "exact", "mock", False, 2,
        round(sum(volumes) / 2), sum(volumes), "agent/2",
    )  # fmt: skip
    assert row[10] in {"203.0.113.0", "127.0.0.0", None} and row[11] >= 0
    usage = admin_conn.execute(
        'SELECT endpoint, method, "statusCode" FROM api_usage WHERE "userId" = %s', (who,)
    ).fetchall()
    assert usage == [("/api/keywords", "POST", 200)]  # written once, with the history row


def test_two_database_round_trips_for_a_miss_and_for_a_hit(api_env: Keys) -> None:
    call = Caller("lambda_v2", api_env)
    who = user_id()
    search(call, who)  # warm: user exists, connection open
    statements: list[str] = []
    engine = db.get_engine()
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        miss = search(call, who, {**BODY, "keywords": [f"fresh {uuid.uuid4().hex[:8]}"]})
        miss_count = len(statements)
        hit = search(call, who, {**BODY, "keywords": [miss.json["data"][0]["keyword"]]})
        hit_count = len(statements) - miss_count
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert (miss.json["cached"], hit.json["cached"]) == (False, True)
    assert (miss_count, hit_count) == (2, 2)


def test_open_circuit_is_503_with_retry_after_and_refund(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="pw",
    )
    who = user_id()
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(500, text="down")
        )
        statuses = [
            search(call, who, {**BODY, "keywords": fresh_keywords()}).status for _ in range(5)
        ]
        opened = search(call, who, {**BODY, "keywords": fresh_keywords()})
        assert route.call_count == 5  # the open circuit did not call upstream again
    assert statuses == [502] * 5
    assert opened.status == 503
    assert opened.json["error"] == "Service Unavailable"
    assert opened.json["reason"] == "provider_circuit_open"
    assert 1 <= int(opened.headers["retry-after"]) <= 60
    assert counters(admin_conn, who) == (0, 0)


@pytest.mark.parametrize("provider", ["dataforseo", "google-ads", "bing"])
def test_an_unconfigured_or_unknown_provider_is_503_never_mock_data(
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    provider: str,
) -> None:
    settings(monkeypatch, KEYWORD_API_PROVIDER=provider)
    monkeypatch.delenv("DATAFORSEO_API_LOGIN", raising=False)
    monkeypatch.delenv("DATAFORSEO_API_PASSWORD", raising=False)
    who = user_id()
    result = search(call, who, {**BODY, "keywords": fresh_keywords()})
    assert result.status == 503, result.text
    assert (result.json["error"], result.json["reason"]) == (
        "Service Unavailable", "provider_not_configured",
    )  # fmt: skip
    assert "DATAFORSEO" not in result.text and "Mock" not in result.text
    assert counters(admin_conn, who) == (0, 0)
    assert reservation_rows(admin_conn, who) == 0


def test_invalid_json_and_any_content_type_after_the_rate_limit(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS_PER_HOUR="2")
    agent = {"user-agent": str(uuid.uuid4()), "content-type": "application/json"}
    bad = call("keywords", "POST", "/api/keywords", body="{nope", headers=agent)
    assert (bad.status, bad.json["message"]) == (400, "Invalid JSON payload")
    empty = call("keywords", "POST", "/api/keywords", body="", headers=agent)
    assert empty.status == 400 and empty.json["error"] == "Validation Error"  # `{}`: fields missing
    refused = call("keywords", "POST", "/api/keywords", body="{nope", headers=agent)
    assert refused.status == 429  # malformed bodies spent the budget too
    plain = {"user-agent": str(uuid.uuid4()), "content-type": "text/plain"}
    ok = call("keywords", "POST", "/api/keywords", user=user_id(),
              body=json.dumps({**BODY, "keywords": fresh_keywords()}), headers=plain)  # fmt: skip
    assert ok.status == 200


def test_other_methods_are_405_naming_post_only(call: Caller) -> None:
    result = call("keywords", "PUT", "/api/keywords", user=user_id())
    assert result.status == 405
    assert result.json["supportedMethods"] == ["POST"]
    assert call("keywords", "GET", "/api/keywords").headers["allow"] == "POST"
