"""A cached entry the route could not answer with is a logged miss (docs/cache-and-rate-limits.md):
whatever sits under a keyword, related-keywords or brief key (another writer, an older release,
an operator's typo) is checked against the shape the route answers before it is served; one that
fails is logged without its content, answered from the provider and overwritten with that answer.
Driven through each function's `app`, with Redis behind the Upstash emulator."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx

from shared import cache, config, providers
from shared.providers.dataforseo import SERP_API_URL
from shared.providers.mock import MockProvider
from shared.redis import get_redis
from tests.support.http import Caller, Keys

SERP_FIXTURE = Path(__file__).parents[1] / "fixtures" / "dataforseo" / "serp_organic_ok.json"


@pytest.fixture(autouse=True)
def mock_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYWORD_API_PROVIDER", "DATAFORSEO_API_LOGIN", "DATAFORSEO_API_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config.get_settings.cache_clear()
    providers.reset_providers()


@pytest.fixture
def http(api_env: Keys) -> Caller:
    return Caller("asgi", api_env)


def tag() -> str:
    return uuid.uuid4().hex[:10]


def plant(key: str, raw: str) -> None:
    """Write `raw` under `key` as another writer would (not through our cache module)."""
    client = get_redis()
    assert client is not None
    client.set(key, raw, ex=600)


def stored(key: str) -> Any:
    client = get_redis()
    assert client is not None
    raw = client.get(key)
    return None if raw is None else json.loads(raw)


def invalid_entry_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.message for r in caplog.records if "cache_entry_invalid" in r.message]


def row(keyword: str) -> dict[str, Any]:
    return {"keyword": keyword, "searchVolume": 10, "cpc": 1.5, "competition": "low",
            "intent": "informational"}  # fmt: skip


# --- keyword search ------------------------------------------------------------------------

KEYWORD_ENTRIES = {
    "rows that are not objects": lambda kws: {"data": [1, 2]},
    "no rows": lambda kws: {"data": []},
    "too few rows": lambda kws: {"data": [row(kws[0])], "metadata": {"provider": "Mock"}},
    "a row without its metrics": lambda kws: {"data": [{"keyword": kws[0]}, row(kws[1])]},
    "a null keyword": lambda kws: {"data": [{**row(kws[0]), "keyword": None}, row(kws[1])]},
    "another keyword's row": lambda kws: {"data": [row(kws[0]), row("not asked for")]},
    "a metric of the wrong type": lambda kws: {
        "data": [{**row(kws[0]), "searchVolume": "NaN"}, row(kws[1])]
    },
    "no metadata": lambda kws: {"data": [row(kws[0]), row(kws[1])]},
    "a provider that is not a name": lambda kws: {
        "data": [row(kws[0]), row(kws[1])],
        "metadata": {"provider": 7},
    },
    # Typed right, but no provider answers so (report s52 t4 D4):
    "a negative search volume": lambda kws: entry_of(
        [{**row(kws[0]), "searchVolume": -5}, row(kws[1])]
    ),
    "a thirteenth month": lambda kws: entry_of(
        [{**row(kws[0]), "trends": [{"month": 13, "year": 2026, "volume": 1}]}, row(kws[1])]
    ),
    "no data with figures": lambda kws: entry_of([{**row(kws[0]), "noData": True}, row(kws[1])]),
    "another provider's rows under this provider's key": lambda kws: entry_of(
        [row(kws[0]), row(kws[1])], provider="DataForSEO"
    ),
}


def entry_of(rows: list[dict[str, Any]], provider: str = "Mock") -> dict[str, Any]:
    return {"data": rows, "metadata": {"cachedAt": "2026-01-01T00:00:00.000Z",
                                       "provider": provider}}  # fmt: skip


def search(http: Caller, keywords: list[str], user: str | None = None) -> Any:
    body = {"keywords": keywords, "matchType": "phrase", "location": "US"}
    return http("keywords", "POST", "/api/keywords", user=user or f"user_{tag()}", json_body=body)


def answered_fresh(result: Any, keywords: list[str], key: str) -> None:
    """The provider answered, every requested keyword once, and replaced the entry."""
    assert result.status == 200, result.text
    body = result.json
    assert (body["cached"], body["cacheHealthy"], body["provider"]) == (False, True, "Mock")
    assert [r["keyword"] for r in body["data"]] == keywords
    assert all(isinstance(r["searchVolume"], int) for r in body["data"])
    assert stored(key)["data"] == body["data"]


@pytest.mark.parametrize("entry", KEYWORD_ENTRIES.values(), ids=KEYWORD_ENTRIES.keys())
def test_a_keyword_entry_of_another_shape_is_a_logged_miss_and_replaced(
    entry: Any, http: Caller, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    keywords = [f"seo tools {tag()}", f"keyword research {tag()}"]
    key = cache.provider_keyword_key(keywords, "United States", "en", "phrase", "mock")
    plant(key, json.dumps(entry(keywords)))
    who = f"user_{tag()}"
    with caplog.at_level(logging.WARNING, logger="keyflash"):
        result = search(http, keywords, who)
    answered_fresh(result, keywords, key)
    [line] = invalid_entry_logs(caplog)
    assert json.loads(line)["kind"] == "kw"
    assert not any(keyword in line for keyword in keywords)  # no search terms in the log
    counted = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", (SELECT count(*) FROM keyword_reservations r'
        ' WHERE r."userId" = u.id), (SELECT count(*) FROM search_history h'
        ' WHERE h."userId" = u.id) FROM users u WHERE u.id = %s',
        (who,),
    ).fetchone()
    assert counted == (2, 0, 1)  # counted once, recorded, nothing left reserved


@pytest.mark.parametrize(
    "raw",
    [
        '{"data":[{"keyword":"K0","searchVolume":1,"cpc":NaN,"competition":"low","intent":null},'
        '{"keyword":"K1","searchVolume":1,"cpc":1,"competition":"low","intent":null}],'
        '"metadata":{"provider":"Mock"}}',
        '{"data":[{"keyword":"K0","searchVolume":1,"cpc":1e400,"competition":"low","intent":null},'
        '{"keyword":"K1","searchVolume":1,"cpc":1,"competition":"low","intent":null}],'
        '"metadata":{"provider":"Mock"}}',
    ],
    ids=["NaN", "past a double"],
)
def test_a_number_json_cannot_carry_is_a_miss_not_a_500(
    raw: str, http: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    keywords = [f"seo tools {tag()}", f"keyword research {tag()}"]
    key = cache.provider_keyword_key(keywords, "United States", "en", "phrase", "mock")
    plant(key, raw.replace("K0", keywords[0]).replace("K1", keywords[1]))
    result = search(http, keywords)
    answered_fresh(result, keywords, key)


def test_a_valid_entry_is_still_served_in_the_requests_order(http: Caller) -> None:
    keywords = [f"seo tools {tag()}", f"keyword research {tag()}", f"seo tools {tag()}"]
    key = cache.provider_keyword_key(keywords, "United States", "en", "phrase", "mock")
    rows = [row(k) for k in reversed(keywords)]
    plant(key, json.dumps({"data": rows, "metadata": {"cachedAt": "x", "ttl": 1,
                                                      "provider": "Mock"}}))  # fmt: skip
    result = search(http, keywords)
    assert result.status == 200, result.text
    assert (result.json["cached"], result.json["provider"]) == (True, "Mock")
    assert result.json["data"] == [row(k) for k in keywords]


def test_a_keyword_named_twice_has_the_same_figures_on_the_miss_and_the_hit(http: Caller) -> None:
    """The unseeded mock drew each position apart: the miss contradicted itself and the hit,
    which repeats the one cached row, answered otherwise (report s52 t4 D5)."""
    beta = f"beta kwd {tag()}"
    keywords = [beta, f"gamma kwd {tag()}", beta]
    miss, hit = search(http, keywords), search(http, keywords)
    assert (miss.json["cached"], hit.json["cached"]) == (False, True)
    assert miss.json["data"][0] == miss.json["data"][2]
    assert hit.json["data"] == miss.json["data"]


def test_any_failure_after_the_reservation_gives_the_keywords_back(
    http: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the provider's errors: an unexpected one (a 500) leaves nothing reserved for
    the reconcile cron to find minutes later."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug between the reservation and the record")

    monkeypatch.setattr(MockProvider, "keyword_data", broken)
    who = f"user_{tag()}"
    result = search(http, [f"seo {tag()}"], who)
    assert result.status == 500
    counted = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal", (SELECT count(*) FROM'
        ' keyword_reservations r WHERE r."userId" = u.id) FROM users u WHERE u.id = %s',
        (who,),
    ).fetchone()
    assert counted == (0, 0, 0)


# --- related keywords ----------------------------------------------------------------------

RELATED_ENTRIES = {
    "rows that are not objects": lambda seed: {"data": [1, 2], "metadata": {"provider": "Mock"}},
    "a null keyword": lambda seed: {"data": [{"keyword": None}], "metadata": {"provider": "Mock"}},
    "a relevance that is not a number": lambda seed: {
        "data": [{**row("x"), "relevance": "a"}],
        "metadata": {"provider": "Mock"},
    },
    "no relevance": lambda seed: {"data": [row("x")], "metadata": {"provider": "Mock"}},
    "no metadata": lambda seed: {"data": [{**row("x"), "relevance": 90}]},
    # Typed right, but no provider answers so (report s52 t4 D4):
    "a negative search volume": lambda seed: entry_of(
        [{**row(f"{seed} guide"), "searchVolume": -5, "relevance": 90}]
    ),
    "the seed as an idea": lambda seed: entry_of([{**row(seed.upper()), "relevance": 90}]),
    "more ideas than a provider gives": lambda seed: entry_of(
        [{**row(f"{seed} {n}"), "relevance": 90} for n in range(21)]
    ),
    "an idea holding NUL": lambda seed: entry_of([{**row("a\u0000b"), "relevance": 90}]),
    "another provider's ideas under this provider's key": lambda seed: entry_of(
        [{**row(f"{seed} guide"), "relevance": 90}], provider="DataForSEO"
    ),
}


@pytest.mark.parametrize("entry", RELATED_ENTRIES.values(), ids=RELATED_ENTRIES.keys())
def test_a_related_entry_of_another_shape_is_a_logged_miss_and_replaced(
    entry: Any, http: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    seed = f"seo tools {tag()}"
    key = cache.related_key(seed, "United States", "en", "mock")
    plant(key, json.dumps(entry(seed)))
    with caplog.at_level(logging.WARNING, logger="keyflash"):
        result = http("keywords_related", "POST", "/api/keywords/related", user=f"user_{tag()}",
                      json_body={"keyword": seed, "limit": 2})  # fmt: skip
    assert result.status == 200, result.text
    body = result.json
    assert (body["cached"], body["cacheHealthy"], body["provider"]) == (False, True, "Mock")
    assert len(body["relatedKeywords"]) == 2
    assert all(seed in r["keyword"] and isinstance(r["relevance"], int)
               for r in body["relatedKeywords"])  # fmt: skip
    assert stored(key)["data"][:2] == body["relatedKeywords"]
    [line] = invalid_entry_logs(caplog)
    assert json.loads(line)["kind"] == "related" and seed not in line


# --- content briefs ------------------------------------------------------------------------

BRIEF_ENTRIES = {
    "an empty object": {},
    "another route's entry": {"data": [1, 2]},
    "a keyword that is not text": {"keyword": 1},
}


@pytest.mark.parametrize("entry", BRIEF_ENTRIES.values(), ids=BRIEF_ENTRIES.keys())
def test_a_brief_entry_of_another_shape_is_a_logged_miss(
    entry: Any, http: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    keyword = f"seo tools {tag()}"
    plant(cache.brief_key(keyword, "US", "en"), json.dumps(entry))
    with caplog.at_level(logging.WARNING, logger="keyflash"):
        result = http("content_brief", "POST", "/api/content-brief", user=f"user_{tag()}",
                      json_body={"keyword": keyword})  # fmt: skip
    assert result.status == 200, result.text
    made = result.json["brief"]
    assert result.json["cached"] is False
    assert (made["keyword"], made["provider"], len(made["serpResults"])) == (keyword, "Mock", 5)
    [line] = invalid_entry_logs(caplog)
    assert json.loads(line)["kind"] == "brief" and keyword not in line


def test_a_live_brief_replaces_an_entry_of_another_shape(
    http: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFORSEO_API_LOGIN", "login")
    monkeypatch.setenv("DATAFORSEO_API_PASSWORD", "secret")
    config.get_settings.cache_clear()
    providers.reset_providers()
    keyword = f"seo tools {tag()}"
    key = cache.brief_key(keyword, "US", "en")
    plant(key, json.dumps({"brief": {"data": [1, 2]}}))
    with respx.mock(assert_all_called=False) as upstream:
        upstream.route(host__regex=r"^(127\.0\.0\.1|localhost)$").pass_through()
        upstream.post(SERP_API_URL).mock(
            httpx.Response(200, json=json.loads(SERP_FIXTURE.read_text()))
        )
        first = http("content_brief", "POST", "/api/content-brief", user=f"user_{tag()}",
                     json_body={"keyword": keyword})  # fmt: skip
        again = http("content_brief", "POST", "/api/content-brief", user=f"user_{tag()}",
                     json_body={"keyword": keyword})  # fmt: skip
    assert (first.status, first.json["cached"], first.json["brief"]["provider"]) == (
        200, False, "DataForSEO",
    )  # fmt: skip
    assert stored(key) == first.json["brief"]
    assert (again.json["cached"], again.json["brief"]) == (True, first.json["brief"])


def test_a_brief_holding_half_an_emoji_is_served_with_u_fffd(http: Caller) -> None:
    """`brief:` keys are shared with the TypeScript app, whose strings may hold an unpaired
    surrogate (half an emoji, escaped in its JSON). The cached brief is served with U+FFFD in
    its place, as UTF-8 can carry, never a 500."""
    keyword = f"seo tools {tag()}"
    made = http("content_brief", "POST", "/api/content-brief", user=f"user_{tag()}",
                json_body={"keyword": keyword}).json["brief"]  # fmt: skip
    made["serpResults"][0]["title"] = "Trail 🚀\ud83d"
    plant(cache.brief_key(keyword, "US", "en"), json.dumps(made))
    result = http("content_brief", "POST", "/api/content-brief", user=f"user_{tag()}",
                  json_body={"keyword": keyword})  # fmt: skip
    assert result.status == 200, result.text
    assert result.json["cached"] is True
    assert result.json["brief"] == {
        **made, "serpResults": [{**made["serpResults"][0], "title": "Trail 🚀\ufffd"},
                                *made["serpResults"][1:]],
    }  # fmt: skip
