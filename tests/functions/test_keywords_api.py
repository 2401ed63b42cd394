"""POST /api/keywords (docs/original-app.md#post-apikeywords, #tiers-trials-and-quotas) through the
Lambda handler and HTTP, on both lanes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Barrier
from typing import Any

import httpx
import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse
from sqlalchemy import event
from starlette.requests import Request

from functions import keywords as keywords_function
from shared import config, db, providers
from shared import redis as redis_module
from shared.clock import utcnow
from shared.cron import reservations as reservations_cron
from shared.cron.runner import run_job
from shared.providers import google_ads
from shared.redis import get_redis
from tests.support.fake_dataforseo import FakeDataForSEO
from tests.support.http import Caller, Keys, fresh_ip, make_token

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BODY = {"keywords": ["seo tools", "keyword research"], "matchType": "phrase", "location": "US"}


DATAFORSEO_URL = re.compile(r"https://api\.dataforseo\.com/.*")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "dataforseo"


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
    address = fresh_ip()
    assert search(call, None, {"keywords": []}, source_ip=address).status == 400
    assert search(call, None, source_ip=address).status == 401
    refused = search(call, None, source_ip=address)
    assert refused.status == 429
    assert refused.json["error"] == "Rate Limit Exceeded"
    assert refused.json["message"].endswith("seconds. Limit: 2 requests/hour.")
    assert refused.headers["x-ratelimit-remaining"] == "0" and "retry-after" in refused.headers
    signed_in = search(call, user_id(), source_ip=address)
    assert signed_in.status == 200  # a signed-in user has a budget of their own


def test_an_anonymous_client_has_one_budget_per_address_whatever_its_user_agent(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new User-Agent is free to send, an address is not: rotating it gave a fresh bucket."""
    settings(monkeypatch, RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS_PER_HOUR="2")
    http, address = Caller("asgi", api_env), fresh_ip()
    statuses = [
        search(http, None, headers={"user-agent": f"rotating/{n}"}, source_ip=address).status
        for n in range(3)
    ]
    assert statuses == [401, 401, 429]
    assert search(http, None, source_ip=fresh_ip()).status == 401  # another address, its own


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
    """Nothing is stored for a trial, yet its miss carries `cacheHealthy` as every miss does
    (the original's clients read it on each `cached: false`): nothing failed to be stored."""
    settings(monkeypatch, BILLING_ENABLED="true", KEYWORD_API_PROVIDER="dataforseo")
    who = user_id()
    first = search(call, who).json
    second = search(call, who).json
    assert (first["provider"], first["mockData"], first["cached"]) == ("Mock", True, False)
    assert (second["cached"], second.get("cacheHealthy")) == (False, True)


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
    assert "retry-after" not in result.headers  # a trial ends, it never resets


def seconds_to_next_month(moment: datetime) -> int:
    """Whole seconds from `moment` to the next UTC month's start, rounded up."""
    first = moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return math.ceil((following - moment).total_seconds())


def test_a_monthly_quota_429_says_when_the_counter_resets_in_retry_after(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """docs/keyword-search.md: the seconds until the start of the next UTC month (report s49 t2,
    F2: http-contract.md promised `Retry-After` on every 429; this one had none)."""
    settings(monkeypatch, BILLING_ENABLED="true")
    who = user_id()
    search(call, who)
    set_user(admin_conn, who, "tier = 'PRO', \"keywordSearchesThisMonth\" = 1000")
    before = utcnow()
    refused = search(call, who)
    after = utcnow()
    assert refused.status == 429, refused.text
    retry_after = int(refused.headers["retry-after"])
    assert seconds_to_next_month(after) <= retry_after <= seconds_to_next_month(before)
    assert refused.headers["x-quota-remaining"] == "0"


def test_a_monthly_quota_429_with_keywords_left_has_no_retry_after(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Reviewer C: a request for more keywords than are left is refused, but a smaller one
    would pass now: no `Retry-After` of the rest of the month, only `X-Quota-Remaining`."""
    settings(monkeypatch, BILLING_ENABLED="true")
    who = user_id()
    search(call, who)
    set_user(admin_conn, who, "tier = 'PRO', \"keywordSearchesThisMonth\" = 999")
    refused = search(call, who, {"keywords": fresh_keywords(), "matchType": "phrase"})
    assert refused.status == 429, refused.text
    assert refused.headers["x-quota-remaining"] == "1"
    assert "retry-after" not in refused.headers


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


def test_a_success_whose_result_is_malformed_is_502_given_back_and_not_cached(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Status 20000 with a `result` that is not DataForSEO's array of objects is a broken answer
    (s44t3 F3): not no-data rows charged and cached for 7 days."""
    use_dataforseo(monkeypatch)
    who, body = user_id(), {**BODY, "keywords": fresh_keywords()}
    broken = fixture("search_volume_ok")
    broken["tasks"][0]["result"] = {"keyword": body["keywords"][0], "search_volume": 1000}
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(HttpxResponse(200, json=broken))
        failed = search(call, who, body)
        route.mock(side_effect=answer_for)
        served = search(call, who, body)
    assert (failed.status, failed.json["error"]) == (502, "Bad Gateway")
    assert served.status == 200 and served.json["cached"] is False and route.call_count == 2
    assert counters(admin_conn, who) == (2, 2)  # only the served search counts


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
    sent = {"headers": {"content-type": "application/json"}, "source_ip": fresh_ip()}
    bad = call("keywords", "POST", "/api/keywords", body="{nope", **sent)
    assert (bad.status, bad.json["message"]) == (400, "Invalid JSON payload")
    empty = call("keywords", "POST", "/api/keywords", body="", **sent)
    assert empty.status == 400 and empty.json["error"] == "Validation Error"  # `{}`: fields missing
    refused = call("keywords", "POST", "/api/keywords", body="{nope", **sent)
    assert refused.status == 429  # malformed bodies spent the budget too
    plain = {"content-type": "text/plain"}
    ok = call("keywords", "POST", "/api/keywords", user=user_id(),
              body=json.dumps({**BODY, "keywords": fresh_keywords()}), headers=plain)  # fmt: skip
    assert ok.status == 200


def test_other_methods_are_405_naming_post_only(call: Caller) -> None:
    result = call("keywords", "PUT", "/api/keywords", user=user_id())
    assert result.status == 405
    assert result.json["supportedMethods"] == ["POST"]
    assert call("keywords", "GET", "/api/keywords").headers["allow"] == "OPTIONS, POST"


# --- the provider for a real DataForSEO account (issue 23) ----------------------------------


def answer_for(request: httpx.Request) -> HttpxResponse:
    """A documented-shape answer for whatever keywords were sent: the recorded "seo tools" item
    under each keyword's name (DataForSEO echoes keywords lower-cased)."""
    body = fixture("search_volume_ok")
    task = body["tasks"][0]
    sent = json.loads(request.content)[0]
    template = task["result"][0]
    task["data"] = {**task["data"], **sent}
    task["result"] = [{**template, "keyword": k.lower()} for k in sent["keywords"]]
    task["result_count"] = len(task["result"])
    return HttpxResponse(200, json=body)


def forget_account_state() -> None:
    """The budget and any rejection live in the session's shared emulator: start clean."""
    client = get_redis()
    assert client is not None
    client.delete("provider-budget:dataforseo", "provider-rejected:dataforseo")


def test_account_budget_is_shared_by_every_container_and_a_cached_search_still_answers(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    use_dataforseo(monkeypatch, DATAFORSEO_REQUESTS_PER_MINUTE="2", RATE_LIMIT_ENABLED="true")
    forget_account_state()
    who = user_id()
    bodies = [{**BODY, "keywords": fresh_keywords()} for _ in range(3)]
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer_for)
        first = search(call, who, bodies[0])
        providers.reset_providers()  # the next request lands on a new container
        second = search(call, who, bodies[1])
        providers.reset_providers()
        spent = search(call, who, bodies[2])
        cached = search(call, who, bodies[0])
    forget_account_state()
    assert (first.status, second.status) == (200, 200), first.text
    assert route.call_count == 2  # the third never reached DataForSEO
    assert (spent.status, spent.json["reason"]) == (503, "provider_busy")
    assert 1 <= int(spent.headers["retry-after"]) <= 60  # until the oldest request leaves
    # The 503 came after a counted rate-limit check: it tells that window, as the 200s do.
    window = [
        tuple(r.headers.get(f"x-ratelimit-{h}") for h in ("limit", "remaining", "reset"))
        for r in (first, spent, cached)
    ]
    assert window == [
        ("10", "9", window[0][2]),
        ("10", "7", window[0][2]),
        ("10", "6", window[0][2]),
    ]
    assert (cached.status, cached.json["cached"]) == (200, True)  # the cache needs no budget
    assert counters(admin_conn, who) == (6, 6)  # the refused search's keywords came back
    assert reservation_rows(admin_conn, who) == 0


def test_upstream_rate_limits_and_refused_input_never_open_the_breaker(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    use_dataforseo(monkeypatch)
    who = user_id()
    answers = [
        *[HttpxResponse(429, text="Too Many Requests")] * 3,
        *[HttpxResponse(200, json=fixture("search_volume_rate_limited"))] * 3,
        *[HttpxResponse(200, json=fixture("search_volume_task_error"))] * 3,
    ]
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answers)
        results = [search(call, who, {**BODY, "keywords": fresh_keywords()}) for _ in answers]
        route.mock(side_effect=answer_for)
        served = search(call, who, {**BODY, "keywords": fresh_keywords()})
    assert [r.status for r in results] == [503] * 6 + [502] * 3
    assert {r.json.get("reason") for r in results[:6]} == {"provider_busy"}
    assert {r.headers["retry-after"] for r in results[:6]} == {"60"}
    assert served.status == 200 and route.call_count == 10  # never short-circuited
    assert (providers.breaker_stats() or {})["state"] == "CLOSED"
    assert counters(admin_conn, who) == (2, 2)  # only the served search counts


def test_no_search_results_is_no_data_and_account_limits_are_busy_never_an_outage(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Task status 40102 ("No Search Results.": the user's rare keyword) answers no-data rows
    and 40205 (the account's duplicate-task limit per hour) 503 busy; neither counts toward the
    breaker, so one user's searches never shut the provider for another."""
    use_dataforseo(monkeypatch)
    rare_user, other = user_id(), user_id()
    nothing = fixture("search_volume_rate_limited")
    nothing["tasks"][0].update(status_code=40102, status_message="No Search Results.")
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(200, json=nothing)
        )
        rare = [search(call, rare_user, {**BODY, "keywords": fresh_keywords()}) for _ in range(6)]
        route.mock(return_value=HttpxResponse(200, json=fixture("search_volume_duplicate_limit")))
        limited = [
            search(call, rare_user, {**BODY, "keywords": fresh_keywords()}) for _ in range(3)
        ]
        route.mock(side_effect=answer_for)
        served = search(call, other, {**BODY, "keywords": fresh_keywords()})
    assert [r.status for r in rare] == [200] * 6, rare[0].text
    assert all(row["noData"] is True for r in rare for row in r.json["data"])
    assert {(r.status, r.json["reason"], r.headers["retry-after"]) for r in limited} == {
        (503, "provider_busy", "3600")
    }
    assert served.status == 200 and route.call_count == 10
    assert (providers.breaker_stats() or {})["failures"] == 0
    assert counters(admin_conn, rare_user) == (12, 12)  # answered searches count, refused not


def test_rejected_credentials_are_configuration_shown_by_health(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    use_dataforseo(monkeypatch)
    forget_account_state()
    who = user_id()
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(401, json=fixture("unauthorized"))
        )
        results = [search(call, who, {**BODY, "keywords": fresh_keywords()}) for _ in range(6)]
        health = call("health", "GET", "/api/health").json["checks"]["provider"]
    forget_account_state()
    assert {(r.status, r.json["reason"]) for r in results} == {(503, "provider_not_configured")}
    assert route.call_count == 6 and (providers.breaker_stats() or {})["state"] == "CLOSED"
    assert health["healthy"] is False
    assert "HTTP 401" in health["details"]["configError"]
    assert "secret-password" not in json.dumps(health)
    assert counters(admin_conn, who) == (0, 0)


def test_missing_data_stays_missing_through_the_cache_and_the_history(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    use_dataforseo(monkeypatch)
    tag = uuid.uuid4().hex[:8]
    recorded = fixture("search_volume_ok")
    items = recorded["tasks"][0]["result"]
    keywords = [f"seo tools {tag}", f"obscure term {tag}", f"never returned {tag}"]
    items[0]["keyword"], items[4]["keyword"] = keywords[0], keywords[1]
    recorded["tasks"][0]["result"] = [items[0], items[4]]  # one measured, one all-null
    who = user_id()
    body = {**BODY, "keywords": keywords, "location": "GL"}
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(200, json=recorded)
        )
        first = search(call, who, body)
        again = search(call, who, body)
    assert "location_code" not in json.loads(route.calls.last.request.content)[0]
    measured, null_item, absent = first.json["data"]
    assert measured["searchVolume"] == 74000 and "noData" not in measured
    for row in (null_item, absent):
        assert row == row | {"searchVolume": None, "cpc": None, "competition": None}
        assert (row["intent"], row["noData"]) == (None, True)
    assert again.json["cached"] is True and again.json["data"] == first.json["data"]
    history = admin_conn.execute(
        'SELECT "avgVolume", "totalVolume", location FROM search_history WHERE "userId" = %s',
        (who,),
    ).fetchall()
    assert set(history) == {(74000, 74000, "Worldwide")}  # not averaged with invented zeros


def test_head_terms_whose_volumes_sum_past_the_history_column_are_answered_and_recorded(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Head terms such as "youtube" sit near a billion searches a month: three of them sum past
    the int4 columns of the history row, which then keeps the ceiling; nothing fails."""
    use_dataforseo(monkeypatch)
    tag = uuid.uuid4().hex[:8]
    recorded = fixture("search_volume_ok")
    template = recorded["tasks"][0]["result"][0]
    keywords = [f"youtube {tag}", f"facebook {tag}", f"google {tag}"]
    volumes = [1_220_000_000, 1_000_000_000, 1_000_000_000]
    recorded["tasks"][0]["result"] = [
        {**template, "keyword": keyword, "search_volume": volume}
        for keyword, volume in zip(keywords, volumes, strict=True)
    ]
    who = user_id()
    body = {**BODY, "keywords": keywords}
    with dataforseo_upstream() as mock:
        mock.post(url__regex=DATAFORSEO_URL).mock(return_value=HttpxResponse(200, json=recorded))
        answer = search(call, who, body)
    assert answer.status == 200, answer.json
    assert [row["searchVolume"] for row in answer.json["data"]] == volumes
    history = admin_conn.execute(
        'SELECT "avgVolume", "totalVolume" FROM search_history WHERE "userId" = %s', (who,)
    ).fetchall()
    assert history == [(1_073_333_333, 2**31 - 1)]
    assert counters(admin_conn, who)[0] == 3, "counted once, as any search"
    leftover = admin_conn.execute(
        'SELECT count(*) FROM keyword_reservations WHERE "userId" = %s', (who,)
    ).fetchone()
    assert leftover == (0,)


def test_integers_past_a_doubles_precision_are_answered_cached_and_saved_exactly(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON integers beyond 2^53 come back as DataForSEO sent them (a float would round them),
    from the provider, the cache and a saved search, as Google Ads' int64 strings do."""
    use_dataforseo(monkeypatch)
    tag = uuid.uuid4().hex[:8]
    recorded = fixture("search_volume_ok")
    template = recorded["tasks"][0]["result"][0]
    keywords = [f"huge {tag}", f"past double {tag}"]
    huge, past = 2**63 - 1, 2**53 + 1
    recorded["tasks"][0]["result"] = [
        {**template, "keyword": keywords[0], "search_volume": huge,
         "monthly_searches": [{"year": 2026, "month": 1, "search_volume": 10**30}]},
        {**template, "keyword": keywords[1], "search_volume": past, "monthly_searches": []},
    ]  # fmt: skip
    who = user_id()
    body = {**BODY, "keywords": keywords}
    with dataforseo_upstream() as mock:
        mock.post(url__regex=DATAFORSEO_URL).mock(return_value=HttpxResponse(200, json=recorded))
        first = search(call, who, body)
        again = search(call, who, body)
    assert first.status == 200, first.text
    rows = first.json["data"]
    assert [row["searchVolume"] for row in rows] == [huge, past]
    assert rows[0]["trends"] == [{"month": 1, "year": 2026, "volume": 10**30}]
    assert b"9223372036854775807" in first.raw and b"9007199254740993" in first.raw
    assert again.json["cached"] is True and again.json["data"] == rows
    google = google_ads.to_keyword_data(keywords[0], {"avgMonthlySearches": str(huge)})
    assert google["searchVolume"] == rows[0]["searchVolume"]
    saved = call("searches", "POST", "/api/searches", user=who, json_body={
        "name": "Huge", "searchParams": {"keywords": keywords, "matchType": "phrase",
                                         "location": "US"}, "results": rows})  # fmt: skip
    assert saved.status == 201 and saved.json["search"]["results"] == rows


def test_languages_are_sent_as_requested_or_refused_before_anything_is_counted(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    use_dataforseo(monkeypatch)
    who = user_id()
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer_for)
        japanese = search(call, who, {**BODY, "keywords": fresh_keywords(), "language": "ja"})
        taiwan = search(call, who, {**BODY, "keywords": fresh_keywords(), "language": "zh-TW"})
        sent = [json.loads(c.request.content)[0]["language_code"] for c in route.calls]
    assert (japanese.status, taiwan.status) == (200, 200)
    assert sent == ["ja", "zh-TW"]  # the original sent both as "en"
    stranger = user_id()
    refused = search(call, stranger, {**BODY, "language": "zh"})
    assert (refused.status, refused.json["message"]) == (
        400, "Language zh is not available for keyword data",
    )  # fmt: skip
    row = admin_conn.execute("SELECT count(*) FROM users WHERE id = %s", (stranger,)).fetchone()
    assert row == (0,)


def test_an_invisible_bom_inside_a_keyword_is_removed_before_anything_else(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = user_id()
    tag = uuid.uuid4().hex[:8]
    result = search(call, who, {**BODY, "keywords": [f"seo\ufefftools {tag}", "\ufeffkw\ufeff"]})
    assert result.status == 200
    assert [row["keyword"] for row in result.json["data"]] == [f"seotools {tag}", "kw"]
    stored = admin_conn.execute(
        'SELECT keywords FROM search_history WHERE "userId" = %s', (who,)
    ).fetchone()
    assert stored == ([f"seotools {tag}", "kw"],)
    empty = search(call, who, {**BODY, "keywords": ["\ufeff\ufeff"]})
    assert (empty.status, empty.json["message"]) == (400, "Keyword cannot be empty")


def test_the_provider_deadline_is_the_databases_give_up_time_minus_the_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings(
        monkeypatch,
        DATABASE_URL="postgresql://unused@localhost/unused",
        KEYWORDS_MAX_DURATION_S="20",
        PROVIDER_DEADLINE_MARGIN_S="3",
    )

    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 8000

    before = time.monotonic()
    on_lambda = keywords_function.provider_deadline(
        Request({"type": "http", "aws.context": Context()})
    )
    elsewhere = keywords_function.provider_deadline(Request({"type": "http"}))
    after = time.monotonic()
    # Less the database's margin (3 s) too: the give-back or the record after it has 3 s.
    assert before + 2 <= on_lambda <= after + 2
    assert before + 14 <= elsewhere <= after + 14


def test_a_slow_provider_is_cut_at_the_deadline_and_the_reservation_given_back(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    with FakeDataForSEO() as fake:
        use_dataforseo(
            monkeypatch,
            DATAFORSEO_API_BASE_URL=fake.url,
            KEYWORDS_MAX_DURATION_S="7",
            PROVIDER_DEADLINE_MARGIN_S="3",  # 7 - 3 (the database's margin) - 3: 1 s
        )
        fake.trickle(200, fixture("search_volume_ok"), every_s=0.2)
        who = user_id()
        result = search(Caller("asgi", api_env), who, {**BODY, "keywords": fresh_keywords()})
        assert fake.finished_answers == 0
    assert (result.status, result.json["error"]) == (502, "Bad Gateway")
    assert counters(admin_conn, who) == (0, 0)
    assert reservation_rows(admin_conn, who) == 0


def test_a_hanging_provider_on_lambda_answers_502_with_the_keywords_given_back(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Reviewer: on Lambda the provider's deadline was the database's give-up time, so the
    give-back after a provider cut there was refused at once (503, the keywords kept). The
    deadline is the give-up time less the margin: the give-back runs, the client gets 502."""
    with FakeDataForSEO() as fake:
        use_dataforseo(
            monkeypatch,
            DATAFORSEO_API_BASE_URL=fake.url,
            KEYFLASH_TIMEOUT_S="6",
            PROVIDER_DEADLINE_MARGIN_S="1",  # 6 - 3 (the database's margin) - 1: 2 s
        )
        fake.hang()
        who = user_id()
        result = search(Caller("lambda_v2", api_env), who, {**BODY, "keywords": fresh_keywords()})
    assert (result.status, result.json["error"]) == (502, "Bad Gateway"), result.json
    assert counters(admin_conn, who) == (0, 0)
    assert reservation_rows(admin_conn, who) == 0


KILLED_SEARCH = """
import sys
from devkit import events
from functions import keywords

token, body = sys.argv[1], sys.argv[2]
headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
event = events.http_api_v2("POST", "/api/keywords", headers=headers, body=body)
keywords.lambda_handler(event, events.lambda_context("keywords"))
"""


def test_a_search_killed_mid_call_has_its_keywords_given_back_by_the_reconciliation(
    api_env: Keys, admin_conn: psycopg.Connection[Any]
) -> None:
    who = user_id()
    keywords_sent = fresh_keywords()
    with FakeDataForSEO() as fake:
        fake.hang()
        env = {
            **os.environ,
            "KEYWORD_API_PROVIDER": "dataforseo",
            "DATAFORSEO_API_LOGIN": "login",
            "DATAFORSEO_API_PASSWORD": "secret-password",
            "DATAFORSEO_API_BASE_URL": fake.url,
            "DATAFORSEO_REQUESTS_PER_MINUTE": "0",
        }
        token = make_token(api_env, who)
        body = json.dumps({**BODY, "keywords": keywords_sent})
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_SEARCH, token, body],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            arrived = fake.received.wait(60)
            child.kill()  # SIGKILL: no handler, no finally, nothing gives the keywords back
            _, stderr = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert arrived, stderr.decode(errors="replace")[-2000:]
    assert child.returncode == -signal.SIGKILL
    assert fake.requests[0][0]["keywords"] == keywords_sent
    assert counters(admin_conn, who) == (2, 2)  # counted, never recorded, never released
    assert reservation_rows(admin_conn, who) == 1
    history = admin_conn.execute(
        'SELECT count(*) FROM search_history WHERE "userId" = %s', (who,)
    ).fetchone()
    assert history == (0,)

    expires = admin_conn.execute(
        'SELECT "expiresAt" FROM keyword_reservations WHERE "userId" = %s', (who,)
    ).fetchone()
    assert expires is not None
    expiry = expires[0].replace(tzinfo=UTC)
    run_job(reservations_cron.JOB, now=expiry - timedelta(seconds=1))  # not expired yet
    assert (counters(admin_conn, who), reservation_rows(admin_conn, who)) == ((2, 2), 1)
    summary = run_job(reservations_cron.JOB, now=expiry + timedelta(seconds=1))
    assert summary["processed"] >= 1 and summary["keywordsGivenBack"] >= 2
    assert (counters(admin_conn, who), reservation_rows(admin_conn, who)) == ((0, 0), 0)
    run_job(reservations_cron.JOB, now=expiry + timedelta(minutes=10))  # never twice
    assert counters(admin_conn, who) == (0, 0)


def test_recorded_searches_leave_no_reservation_for_the_reconciliation(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    who = user_id()
    assert search(call, who, {**BODY, "keywords": fresh_keywords()}).status == 200
    assert reservation_rows(admin_conn, who) == 0
    run_job(reservations_cron.JOB, now=utcnow() + timedelta(days=1))
    assert counters(admin_conn, who) == (2, 2)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize(("fail_safe", "status"), [("closed", 503), ("open", 200)])
def test_without_redis_the_budget_fails_safe_like_the_rate_limiter(
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    fail_safe: str,
    status: int,
) -> None:
    use_dataforseo(
        monkeypatch,
        DATAFORSEO_REQUESTS_PER_MINUTE="12",
        RATE_LIMIT_FAIL_SAFE=fail_safe,
        UPSTASH_REDIS_REST_URL=f"http://127.0.0.1:{_closed_port()}",
    )
    redis_module.reset_redis()
    who = user_id()
    with dataforseo_upstream() as mock:
        route = mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer_for)
        result = search(call, who, {**BODY, "keywords": fresh_keywords()})
    redis_module.reset_redis()
    assert result.status == status, result.text
    if fail_safe == "closed":  # the account's limit cannot be checked: DataForSEO is spared
        assert (result.json["reason"], result.headers["retry-after"]) == ("provider_busy", "60")
        assert (route.call_count, counters(admin_conn, who)) == (0, (0, 0))
    else:
        assert (route.call_count, counters(admin_conn, who)) == (1, (2, 2))


def test_an_account_rejection_shows_health_our_words_not_the_upstreams(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataForSEO's `status_message` on a 40100 reached the unauthenticated /api/health, under
    a label saying variables were missing (report t1, finding 7)."""
    use_dataforseo(monkeypatch)
    forget_account_state()
    upstream = "<script>alert(1)</script> token=SECRET-UPSTREAM-TEXT"
    envelope = {"status_code": 40100, "status_message": upstream, "tasks": []}
    with dataforseo_upstream() as mock:
        mock.post(url__regex=DATAFORSEO_URL).mock(return_value=HttpxResponse(200, json=envelope))
        result = search(call, user_id(), {**BODY, "keywords": fresh_keywords()})
        health = call("health", "GET", "/api/health").json["checks"]["provider"]
    forget_account_state()
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")
    assert health["healthy"] is False
    assert health["error"] == "Provider not properly configured - the provider rejected the account"
    assert "40100" in health["details"]["configError"]
    assert "SECRET-UPSTREAM-TEXT" not in json.dumps(health) and "<script>" not in json.dumps(health)


def test_a_provider_answer_whose_record_is_refused_is_cached_for_the_retry(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """The provider's answer was paid for: when its record fails (the keywords given back, a
    503), the client's retry is a cache hit, not a second paid call (reviewer B, session 50)."""
    use_dataforseo(monkeypatch)
    who, body = user_id(), {**BODY, "keywords": fresh_keywords()}
    trigger = f"refuse_{who}"
    admin_conn.execute(
        f"""CREATE FUNCTION "{trigger}"() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW."userId" = '{who}' THEN
            RAISE EXCEPTION 'disk full' USING ERRCODE = '53100';
          END IF;
          RETURN NEW;
        END $$"""
    )
    admin_conn.execute(
        f'CREATE TRIGGER "{trigger}" BEFORE INSERT ON search_history '
        f'FOR EACH ROW EXECUTE FUNCTION "{trigger}"()'
    )
    try:
        with dataforseo_upstream() as mock:
            route = mock.post(url__regex=DATAFORSEO_URL).mock(side_effect=answer_for)
            refused = search(call, who, body)
            admin_conn.execute(f'DROP TRIGGER "{trigger}" ON search_history')
            served = search(call, who, body)
    finally:
        admin_conn.execute(f'DROP TRIGGER IF EXISTS "{trigger}" ON search_history')
        admin_conn.execute(f'DROP FUNCTION IF EXISTS "{trigger}"()')
    assert refused.status == 503
    assert served.status == 200 and served.json["cached"] is True and route.call_count == 1
    assert counters(admin_conn, who) == (2, 2)  # only the served search counts
