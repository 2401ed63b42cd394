"""POST /api/keywords/related (docs/original-app.md#post-apikeywordsrelated;
docs/related-and-briefs.md) through the Lambda handler and HTTP, DataForSEO over respx."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx

from functions import keywords_related
from shared import cache, config, providers
from shared.providers import account
from shared.providers.dataforseo import API_URL as SEARCH_VOLUME_URL
from shared.providers.dataforseo import RELATED_API_URL
from shared.providers.mock import RELATED_TEMPLATES
from shared.redis import get_redis
from tests.support.http import Caller, Keys

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FIXTURES = Path(__file__).parents[1] / "fixtures" / "dataforseo"


@pytest.fixture(autouse=True)
def fresh_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_PROVIDER_SEED", "7")
    monkeypatch.setenv("DATAFORSEO_REQUESTS_PER_MINUTE", "0")
    config.get_settings.cache_clear()
    providers.reset_providers()


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    providers.reset_providers()


@contextmanager
def dataforseo_upstream() -> Iterator[respx.MockRouter]:
    """respx for DataForSEO only: the Upstash emulator (on loopback) is reached for real."""
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        yield mock


def use_dataforseo(monkeypatch: pytest.MonkeyPatch) -> None:
    settings(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN="login",
        DATAFORSEO_API_PASSWORD="secret-password",
    )


def user_id() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def seed() -> str:
    """A keyword no earlier test cached (the emulator lives for the whole session)."""
    return f"espresso {uuid.uuid4().hex[:10]}"


def related(call: Caller, user: str | None, body: Any, **kw: Any) -> Any:
    return call(
        "keywords_related", "POST", "/api/keywords/related", user=user, json_body=body, **kw
    )


# --- contract ------------------------------------------------------------------------------


def test_miss_then_hit_caches_the_full_list_and_limit_trims_the_answer(call: Caller) -> None:
    who, keyword = user_id(), seed()
    first = related(call, who, {"keyword": f"  {keyword} ", "limit": 5})
    assert first.status == 200, first.text
    body = first.json
    assert set(body) == {
        "seedKeyword", "relatedKeywords", "cached", "cacheHealthy", "timestamp", "provider",
    }  # fmt: skip
    assert (body["seedKeyword"], body["cached"], body["cacheHealthy"], body["provider"]) == (
        keyword, False, True, "Mock",
    )  # fmt: skip
    assert TIMESTAMP.match(body["timestamp"])
    assert [row["keyword"] for row in body["relatedKeywords"]] == [
        template.format(kw=keyword) for template in RELATED_TEMPLATES[:5]
    ]
    assert [row["relevance"] for row in body["relatedKeywords"]] == [100, 95, 90, 85, 80]
    assert "x-ratelimit-remaining" in first.headers and "x-ratelimit-reset" in first.headers

    again = related(call, who, {"keyword": keyword.upper()})  # the key lower-cases the keyword
    assert again.status == 200
    assert again.json["cached"] is True and "cacheHealthy" not in again.json
    assert again.json["provider"] == "Mock"
    assert len(again.json["relatedKeywords"]) == 20  # the full list was cached
    assert again.json["relatedKeywords"][:5] == body["relatedKeywords"]
    stored = get_redis().get(cache.related_key(keyword, "United States", "en", "mock"))  # type: ignore[union-attr]
    assert stored is not None and len(json.loads(stored)["data"]) == 20


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"keyword": "   "}, "Keyword cannot be empty"),
        ({"keyword": "x" * 101}, "Keyword too long (max 100 chars)"),
        (
            {"keyword": "seo; DROP TABLE"},
            "Keyword must contain only letters, numbers, spaces, hyphens, and underscores",
        ),
        (
            {"keyword": "seo", "location": "XX"},
            "Location must be one of US, GB, CA, AU, DE, FR, IN, or GL for Global",
        ),
        (
            {"keyword": "seo", "language": "EN"},
            "Language must be valid language code (e.g., en, en-US)",
        ),
        ({"keyword": "seo", "language": "zh"}, "Language zh is not available for keyword data"),
        ({"keyword": "seo", "limit": 0}, "Limit must be between 1 and 50"),
        ({"keyword": "seo", "limit": 51}, "Limit must be between 1 and 50"),
    ],
)
def test_body_rules_answer_the_original_messages(
    call: Caller, body: dict[str, Any], message: str
) -> None:
    result = related(call, user_id(), body)
    assert (result.status, result.json["error"], result.json["message"]) == (
        400, "Validation Error", message,
    )  # fmt: skip


def test_a_limit_that_is_not_an_integer_is_400(call: Caller) -> None:
    for limit in ("5", 2.5, True):
        result = related(call, user_id(), {"keyword": "seo", "limit": limit})
        assert result.status == 400 and result.json["error"] == "Validation Error"
    whole = related(call, user_id(), {"keyword": "seo", "limit": 5.0})  # JSON's 5
    assert whole.status == 200 and len(whole.json["relatedKeywords"]) == 5, whole.text


def test_auth_comes_first_then_405_for_get(call: Caller) -> None:
    anonymous = related(call, None, {"keyword": ""})  # no body check before auth
    assert (anonymous.status, anonymous.json["message"]) == (401, "Authentication required")
    got = call("keywords_related", "GET", "/api/keywords/related")
    assert got.status == 405
    assert got.json["message"] == "Use POST to get related keywords"
    assert got.headers["allow"] == "OPTIONS, POST"


def test_the_keyword_search_route_is_not_this_one(call: Caller) -> None:
    """/api/keywords and /api/keywords/related are two functions; neither serves the other."""
    other = call("keywords", "POST", "/api/keywords/related", user=user_id(),
                 json_body={"keyword": "seo"})  # fmt: skip
    assert other.status == 404
    back = call("keywords_related", "POST", "/api/keywords", user=user_id(), json_body={})
    assert back.status == 404


# --- rate limit ----------------------------------------------------------------------------


def test_its_own_hourly_limit_after_auth_and_before_the_body(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, RATE_LIMIT_ENABLED="true", RELATED_KEYWORDS_RATE_LIMIT_PER_HOUR="2",
             RATE_LIMIT_REQUESTS_PER_HOUR="1")  # fmt: skip
    who = user_id()
    assert related(call, who, {"keyword": ""}).status == 400  # invalid bodies spend it too
    ok = related(call, who, {"keyword": seed()})
    assert ok.status == 200 and ok.headers["x-ratelimit-limit"] == "2"
    refused = related(call, who, {"keyword": seed()})
    assert refused.status == 429
    assert refused.json["error"] == "Rate Limit Exceeded"
    assert refused.json["message"].endswith("seconds. Limit: 2 requests/hour.")
    assert refused.headers["x-ratelimit-remaining"] == "0" and "retry-after" in refused.headers
    assert related(call, user_id(), {"keyword": seed()}).status == 200  # per user
    keywords = call("keywords", "POST", "/api/keywords", user=who,
                    json_body={"keywords": [seed()], "matchType": "phrase"})  # fmt: skip
    assert keywords.status == 200  # the keyword search's own counter is untouched


@pytest.mark.parametrize(("configured", "limit"), [("500", 100), ("0", 30), ("-4", 30), ("7", 7)])
def test_the_limit_is_capped_at_100_and_defaults_to_30(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, configured: str, limit: int
) -> None:
    settings(monkeypatch, RELATED_KEYWORDS_RATE_LIMIT_PER_HOUR=configured)
    assert keywords_related.hourly_limit() == limit


# --- cache, privacy, metering --------------------------------------------------------------


def test_privacy_mode_reads_and_writes_no_cache(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, PRIVACY_MODE="true")
    who, keyword = user_id(), seed()
    for _ in range(2):
        result = related(call, who, {"keyword": keyword})
        assert result.status == 200
        assert (result.json["cached"], result.json["cacheHealthy"]) == (False, False)
    assert get_redis().get(cache.related_key(keyword, "United States", "en", "mock")) is None  # type: ignore[union-attr]


def test_not_metered_but_a_usage_row_per_call(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    settings(monkeypatch, BILLING_ENABLED="true", TRIAL_KEYWORD_LIMIT="0")
    who = user_id()
    assert related(call, who, {"keyword": seed()}).status == 200  # no quota applies
    assert related(call, who, {"keyword": "bad;"}).status == 400
    usage = admin_conn.execute(
        'SELECT endpoint, method, "statusCode" FROM api_usage WHERE "userId" = %s'
        ' ORDER BY "timestamp"',
        (who,),
    ).fetchall()
    assert usage == [("/api/keywords/related", "POST", 200), ("/api/keywords/related", "POST", 400)]
    counted = admin_conn.execute(
        'SELECT coalesce(sum("keywordSearchesThisMonth"), 0) FROM users WHERE id = %s', (who,)
    ).fetchone()
    assert counted == (0,)


# --- providers -----------------------------------------------------------------------------


def test_a_provider_without_related_keywords_is_501(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, KEYWORD_API_PROVIDER="google-ads")  # keyword data only
    result = related(call, user_id(), {"keyword": seed()})
    assert result.status == 501
    assert result.json["reason"] == "related_keywords_not_supported"


def test_unknown_provider_is_503_not_configured(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings(monkeypatch, KEYWORD_API_PROVIDER="bing")
    result = related(call, user_id(), {"keyword": seed()})
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")


def test_dataforseo_keyword_ideas(call: Caller, monkeypatch: pytest.MonkeyPatch) -> None:
    use_dataforseo(monkeypatch)
    fixture = json.loads((FIXTURES / "keywords_for_keywords_ok.json").read_text())
    keyword = "SEO  Tools"
    get_redis().delete(cache.related_key(keyword, "United Kingdom", "en-GB", "dataforseo"))  # type: ignore[union-attr]
    with dataforseo_upstream() as upstream:
        route = upstream.post(RELATED_API_URL).mock(httpx.Response(200, json=fixture))
        body = {"keyword": keyword, "location": "GB", "language": "en-GB"}
        result = related(call, user_id(), body)
        again = related(call, user_id(), body)
    assert result.status == 200, result.text
    assert route.call_count == 1 and again.json["cached"] is True
    sent = json.loads(route.calls[0].request.content)
    assert sent == [
        {
            "keywords": ["SEO Tools"],
            "language_code": "en",
            "include_seed_keyword": False,
            "sort_by": "relevance",
            "location_code": 2826,
        }
    ]
    rows = result.json["relatedKeywords"]
    assert result.json["provider"] == "DataForSEO" and len(rows) == 20
    # The seed (any case) is left out; relevance counts every result's position.
    assert [(r["keyword"], r["relevance"]) for r in rows[:4]] == [
        ("free seo tools", 97), ("seo checker", 91), ("seo audit tool", 88),
        ("rank tracker obscure", 85),
    ]  # fmt: skip
    assert rows[0] | {"trends": None} == {
        "keyword": "free seo tools", "searchVolume": 22200, "cpc": 3.1, "competition": "medium",
        "intent": "commercial", "relevance": 97, "trends": None,
    }  # fmt: skip
    assert rows[3] == {
        "keyword": "rank tracker obscure", "searchVolume": None, "cpc": None,
        "competition": None, "intent": None, "noData": True, "relevance": 85,
    }  # fmt: skip


def idea(keyword: str, volume: int | None = None) -> dict[str, Any]:
    """One keywords_for_keywords item as DataForSEO documents it."""
    return {"keyword": keyword, "search_volume": volume, "competition": "LOW",
            "competition_index": 10, "cpc": 0.5, "monthly_searches": []}  # fmt: skip


def ideas_answer(items: list[Any]) -> httpx.Response:
    """The recorded answer with `items` as its result, as JSON escapes (a lone surrogate too)."""
    answer = json.loads((FIXTURES / "keywords_for_keywords_ok.json").read_text())
    answer["tasks"][0]["result"] = items
    return httpx.Response(200, content=json.dumps(answer).encode(),
                          headers={"Content-Type": "application/json"})  # fmt: skip


def test_ideas_that_are_one_keyword_are_one_row_the_providers_first(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Variants in case or spacing are one keyword (matched as the keyword search matches):
    the first, the most relevant in DataForSEO's order, is kept with its own figures (s49t4 F1)."""
    use_dataforseo(monkeypatch)
    keyword = seed()
    items = [idea(f"{keyword} tips", 10), idea(f"{keyword.upper()} TIPS", 20),
             idea(f"{keyword}  tips ", 30), idea(f"{keyword} other", 40)]  # fmt: skip
    with dataforseo_upstream() as upstream:
        upstream.post(RELATED_API_URL).mock(ideas_answer(items))
        result = related(call, user_id(), {"keyword": keyword})
    assert result.status == 200, result.text
    assert [
        (r["keyword"], r["searchVolume"], r["relevance"]) for r in result.json["relatedKeywords"]
    ] == [(f"{keyword} tips", 10, 100), (f"{keyword} other", 40, 91)]


def test_provider_text_is_made_storable_so_the_rows_save_as_answered(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataForSEO's text is made storable where it is read (NUL removed, a lone surrogate
    U+FFFD): answered, cached and saved alike; an idea left blank is dropped (s49t4 F2)."""
    use_dataforseo(monkeypatch)
    keyword, who = seed(), user_id()
    items = [idea(f"{keyword} ok", 10), idea("bad\x00idea", 20), idea("\x00 ", 30),
             idea("half \ud83d", 40), idea(f"{keyword}\x00 OK", 50)]  # fmt: skip
    with dataforseo_upstream() as upstream:
        upstream.post(RELATED_API_URL).mock(ideas_answer(items))
        result = related(call, who, {"keyword": keyword})
        again = related(call, who, {"keyword": keyword})
    assert result.status == 200, result.text
    rows = result.json["relatedKeywords"]
    assert [r["keyword"] for r in rows] == [f"{keyword} ok", "badidea", "half \ufffd"]
    assert again.json["cached"] is True and again.json["relatedKeywords"] == rows
    saved = call("searches", "POST", "/api/searches", user=who, json_body={
        "name": "Ideas", "searchParams": {"keywords": [keyword], "matchType": "phrase",
                                          "location": "US"}, "results": rows})  # fmt: skip
    assert saved.status == 201, saved.text
    assert saved.json["search"]["results"] == rows


def test_rows_a_saved_search_would_refuse_are_never_answered(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved search keeps a row's keyword of 1-200 JS units (trimmed as JS does) and trends of
    2000-2100 (the original's rule): an idea beyond it is dropped, a month outside it left out,
    so every answered row saves as answered (s52t7 D3)."""
    use_dataforseo(monkeypatch)
    keyword, who = seed(), user_id()
    months = [{"year": 1999, "month": 1, "search_volume": 5},
              {"year": 2026, "month": 1, "search_volume": 7},
              {"year": 2101, "month": 1, "search_volume": 9}]  # fmt: skip
    items = [idea("k" * 201, 10), idea("\U0001f600" * 101, 20), idea("\ufeff", 30),
             idea("k" * 200, 40),
             {**idea(f"{keyword} trend", 50), "monthly_searches": months}]  # fmt: skip
    with dataforseo_upstream() as upstream:
        upstream.post(RELATED_API_URL).mock(ideas_answer(items))
        result = related(call, who, {"keyword": keyword})
    assert result.status == 200, result.text
    rows = result.json["relatedKeywords"]
    assert [(r["keyword"], r["relevance"]) for r in rows] == [("k" * 200, 91),
                                                             (f"{keyword} trend", 88)]  # fmt: skip
    assert rows[1]["trends"] == [{"year": 2026, "month": 1, "volume": 7}]
    saved = call("searches", "POST", "/api/searches", user=who, json_body={
        "name": "Ideas", "searchParams": {"keywords": [keyword], "matchType": "phrase",
                                          "location": "US"}, "results": rows})  # fmt: skip
    assert saved.status == 201, saved.text
    assert saved.json["search"]["results"] == rows


def test_dataforseo_failures_open_the_circuit(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_dataforseo(monkeypatch)
    with dataforseo_upstream() as upstream:
        route = upstream.post(RELATED_API_URL).mock(httpx.Response(500, text="boom login"))
        answers = [related(call, user_id(), {"keyword": seed()}) for _ in range(6)]
    assert [a.status for a in answers[:5]] == [502] * 5
    assert all("boom" not in a.text for a in answers)
    assert answers[5].status == 503 and answers[5].json["reason"] == "provider_circuit_open"
    assert int(answers[5].headers["retry-after"]) > 0
    assert route.call_count == 5


def test_its_breaker_is_its_own_as_in_its_own_container(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deployed, each function is its own container with its own breaker; in one process
    (`keyflash dev`, these tests) the keyword search's failures must not open this function's
    circuit, nor its failures the search's (s44t3 F2)."""
    use_dataforseo(monkeypatch)
    searches = {"keywords": [seed()], "matchType": "phrase"}
    with dataforseo_upstream() as upstream:
        volume = upstream.post(SEARCH_VOLUME_URL).mock(httpx.Response(500, text="down"))
        ideas = upstream.post(RELATED_API_URL).mock(httpx.Response(500, text="down"))
        searched = [
            call("keywords", "POST", "/api/keywords", user=user_id(), json_body=searches)
            for _ in range(4)
        ]
        answers = [related(call, user_id(), {"keyword": seed()}) for _ in range(2)]
        fifth = call("keywords", "POST", "/api/keywords", user=user_id(), json_body=searches)
    assert [r.status for r in searched] == [502] * 4
    assert [a.status for a in answers] == [502, 502] and ideas.call_count == 2
    assert fifth.status == 502 and volume.call_count == 5


def test_a_seed_without_results_is_an_empty_list_never_a_breaker_failure(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataForSEO's 40102 "No Search Results." is the seed's own rarity, not an outage."""
    use_dataforseo(monkeypatch)
    nothing = json.loads((FIXTURES / "serp_no_results.json").read_text())
    with dataforseo_upstream() as upstream:
        route = upstream.post(RELATED_API_URL).mock(httpx.Response(200, json=nothing))
        answers = [related(call, user_id(), {"keyword": seed()}) for _ in range(6)]
    assert [(a.status, a.json["relatedKeywords"]) for a in answers] == [(200, [])] * 6
    assert route.call_count == 6
    assert providers.related_provider().breaker.stats()["failures"] == 0  # type: ignore[attr-defined]


def test_a_success_whose_result_is_malformed_is_502_and_not_cached(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status 20000 with a `result` that is not an array of objects is a broken answer, not a
    seed without ideas: nothing is cached (s44t3 F3)."""
    use_dataforseo(monkeypatch)
    keyword = seed()
    ideas = json.loads((FIXTURES / "keywords_for_keywords_ok.json").read_text())
    broken = copy.deepcopy(ideas)
    broken["tasks"][0]["result"] = {"keyword": f"{keyword} idea", "search_volume": 10}
    with dataforseo_upstream() as upstream:
        route = upstream.post(RELATED_API_URL).mock(httpx.Response(200, json=broken))
        failed = related(call, user_id(), {"keyword": keyword})
        route.mock(httpx.Response(200, json=ideas))
        served = related(call, user_id(), {"keyword": keyword})
    assert (failed.status, failed.json["error"]) == (502, "Bad Gateway")
    assert served.status == 200 and served.json["cached"] is False
    assert len(served.json["relatedKeywords"]) == 20 and route.call_count == 2


def test_dataforseo_rejected_account_is_503_not_configured(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_dataforseo(monkeypatch)
    with dataforseo_upstream() as upstream:
        upstream.post(RELATED_API_URL).mock(httpx.Response(401, json={"status_code": 40100}))
        result = related(call, user_id(), {"keyword": seed()})
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")


def test_ideas_spend_the_account_budget_the_keyword_search_spends(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both are Google Ads Live calls: one budget per DataForSEO account, in Redis."""
    use_dataforseo(monkeypatch)
    settings(monkeypatch, DATAFORSEO_REQUESTS_PER_MINUTE="1", RATE_LIMIT_ENABLED="true")
    get_redis().delete(account.key("dataforseo"))  # type: ignore[union-attr]
    volume = json.loads((FIXTURES / "search_volume_ok.json").read_text())
    with dataforseo_upstream() as upstream:
        upstream.post(SEARCH_VOLUME_URL).mock(httpx.Response(200, json=volume))
        ideas = upstream.post(RELATED_API_URL).mock(httpx.Response(200, json={}))
        searched = call("keywords", "POST", "/api/keywords", user=user_id(),
                        json_body={"keywords": [seed()], "matchType": "phrase"})  # fmt: skip
        refused = related(call, user_id(), {"keyword": seed()})
    assert searched.status == 200, searched.text
    assert (refused.status, refused.json["reason"]) == (503, "provider_busy")
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert ideas.call_count == 0
    # The rate-limit check before it counted this request: the 503 says so.
    assert (refused.headers["x-ratelimit-limit"], refused.headers["x-ratelimit-remaining"]) == (
        "30", "29",
    )  # fmt: skip
    assert "x-ratelimit-reset" in refused.headers
