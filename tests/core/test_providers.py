"""Keyword providers: Mock, DataForSEO (against recorded-shape responses), the circuit breaker
and the per-container registry. No network: respx answers every DataForSEO request."""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from shared import brief, config
from shared.providers import (
    LOCATIONS,
    KeywordData,
    ProviderConfigurationError,
    ProviderError,
    ProviderInputError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    SearchOptions,
    breaker_stats,
    configuration_error,
    get_provider,
    infer_intent,
    mock_provider,
    normalize_location,
    related_provider,
    reset_providers,
    serp_provider,
    without_data,
)
from shared.providers.base import scrub
from shared.providers.breaker import CircuitBreaker, State
from shared.providers.dataforseo import (
    API_URL,
    RELATED_API_URL,
    SERP_API_URL,
    DataForSEOProvider,
    competition_level,
    language_code,
    location_code,
    to_keyword_data,
)
from shared.providers.mock import RELATED_TEMPLATES, MockProvider, seasonal_factor
from tests.support.fake_dataforseo import FakeDataForSEO
from tests.support.secret_forms import logged_values, secret_forms

FIXTURES = Path(__file__).parents[1] / "fixtures" / "dataforseo"
LOGIN, PASSWORD = "ops@example.com", "s3cret-Pa55word"
US = SearchOptions(match_type="phrase", location="United States", language="en")
WORLDWIDE = SearchOptions(match_type="exact", location="Worldwide", language="en-US")
PROVIDER_ENV = (
    "KEYWORD_API_PROVIDER",
    "MOCK_PROVIDER_SEED",
    "MOCK_PROVIDER_DELAY_MS",
    "DATAFORSEO_API_LOGIN",
    "DATAFORSEO_API_PASSWORD",
    "APP_ENV",
)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class Clock:
    """Injected wall clock: tests move it instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(autouse=True)
def provider_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings with no provider variables, and no cached provider, before and after."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    config.get_settings.cache_clear()
    reset_providers()
    yield
    reset_providers()
    config.get_settings.cache_clear()


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    reset_providers()


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dataforseo(clock: Clock) -> DataForSEOProvider:
    return DataForSEOProvider(LOGIN, PASSWORD, breaker=CircuitBreaker("DataForSEO", now=clock))


def sent_body(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


# --- locations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [
        *LOCATIONS.items(),
        (None, "United States"),
        ("", "United States"),
        ("XX", "United States"),
        (" GB ", "United Kingdom"),
    ],
)
def test_normalize_location(code: str | None, name: str) -> None:
    assert normalize_location(code) == name


def test_locations_cover_the_original_eight() -> None:
    assert LOCATIONS == {
        "US": "United States",
        "GB": "United Kingdom",
        "CA": "Canada",
        "AU": "Australia",
        "DE": "Germany",
        "FR": "France",
        "IN": "India",
        "GL": "Worldwide",
    }


# --- Mock ------------------------------------------------------------------------------------


def test_mock_with_a_seed_is_deterministic_per_keyword() -> None:
    first = MockProvider(seed=42).keyword_data(["seo", "tools", "seo"], US)
    again = MockProvider(seed=42).keyword_data(["seo", "tools", "seo"], US)
    assert first == again
    assert first[0] == first[2]  # the same keyword, the same data
    assert MockProvider(seed=42).keyword_data(["tools"], US) == [first[1]]  # position-free
    assert MockProvider(seed=43).keyword_data(["seo"], US)[0] != first[0]


def test_mock_without_a_seed_is_random() -> None:
    provider = MockProvider()
    assert provider.keyword_data(["seo"], US) != provider.keyword_data(["seo"], US)


def test_mock_without_a_seed_answers_a_keyword_named_twice_once() -> None:
    """One row per position, the same figures in each, as DataForSEO measures each keyword once
    and as the cached answer repeats it (two draws: the miss contradicted itself and the hit
    answered otherwise, report s52 t4 D5)."""
    rows = MockProvider().keyword_data(["beta kwd", "gamma kwd", " beta kwd "], US)
    assert [row["keyword"] for row in rows] == ["beta kwd", "gamma kwd", "beta kwd"]
    assert rows[0] == rows[2]


def test_mock_seed_and_delay_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("shared.providers.mock.time.sleep", slept.append)
    configure(monkeypatch, MOCK_PROVIDER_SEED="7", MOCK_PROVIDER_DELAY_MS="250")
    provider = mock_provider()
    assert provider.keyword_data(["seo"], US) == provider.keyword_data(["seo"], US)
    assert slept == [0.25, 0.25]


def test_mock_does_not_sleep_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("shared.providers.mock.time.sleep", slept.append)
    mock_provider().keyword_data(["seo"] * 200, US)
    assert slept == []


def test_mock_rows_keep_order_length_duplicates_and_the_original_shape() -> None:
    rows = MockProvider(seed=1).keyword_data([" seo ", "tools", "seo", "Seo"], US)
    assert [row["keyword"] for row in rows] == ["seo", "tools", "seo", "Seo"]
    for row in rows:
        assert set(row) == {
            "keyword",
            "searchVolume",
            "difficulty",
            "cpc",
            "competition",
            "intent",
            "trends",
        }
        assert isinstance(row["searchVolume"], int) and 0 <= row["searchVolume"] < 100_000
        assert isinstance(row["difficulty"], int) and 0 <= row["difficulty"] < 100
        assert isinstance(row["cpc"], float) and 0 <= row["cpc"] < 10
        assert row["competition"] in {"low", "medium", "high"}
        assert row["intent"] in {"informational", "commercial", "transactional", "navigational"}
        assert len(row["trends"]) == 12
    json.dumps(rows)  # cacheable as it is


def test_mock_trends_end_with_the_current_month_and_follow_the_formula() -> None:
    provider = MockProvider(seed=3, today=lambda: date(2024, 2, 29))
    for row in provider.keyword_data([f"keyword {i}" for i in range(50)], US):
        trends = row["trends"]
        assert [(t["year"], t["month"]) for t in trends] == [
            *((2023, m) for m in range(3, 13)),
            (2024, 1),
            (2024, 2),
        ]
        base = row["searchVolume"]
        for point in trends:
            factor = seasonal_factor(point["month"])
            assert math.floor(base * factor * 0.9) <= point["volume"] <= base * factor * 1.1
            assert point["volume"] >= 0


def test_mock_seasonality_is_the_original_sine() -> None:
    # 1 + 0.3·sin(month₀/12·2π): January is the baseline, April the peak, October the trough.
    assert seasonal_factor(1) == pytest.approx(1.0)
    assert seasonal_factor(4) == pytest.approx(1.3)
    assert seasonal_factor(10) == pytest.approx(0.7)
    assert all(0.7 - 1e-9 <= seasonal_factor(m) <= 1.3 + 1e-9 for m in range(1, 13))


def test_mock_trends_cross_the_year_boundary() -> None:
    rows = MockProvider(seed=1, today=lambda: date(2025, 1, 1)).keyword_data(["x"], US)
    months = [(t["year"], t["month"]) for t in rows[0]["trends"]]
    assert months[0] == (2024, 2) and months[-1] == (2025, 1)


def test_mock_related_keywords_use_the_twenty_templates() -> None:
    related = MockProvider(seed=5).related_keywords(" seo ", US)
    assert [r["keyword"] for r in related] == [t.format(kw="seo") for t in RELATED_TEMPLATES]
    assert related[0]["keyword"] == "seo guide" and related[4]["keyword"] == "how to seo"
    assert [r["relevance"] for r in related] == [100 - 5 * i for i in range(20)]
    assert all(0 <= r["searchVolume"] < 50_000 and 0 <= r["cpc"] < 5 for r in related)
    assert related == MockProvider(seed=5).related_keywords("seo", US)


# --- intent heuristic ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("volume", "cpc", "competition", "intent"),
    [
        (50_000, 5.01, "high", "transactional"),
        (50_000, 5.0, "high", "commercial"),
        (50_000, 2.01, "medium", "commercial"),
        (50_000, 2.01, "low", "informational"),
        (10_001, 0.99, "low", "informational"),
        (999, 0.5, "low", "navigational"),
        (999, 1.5, "medium", "navigational"),
        (5_000, 1.5, "medium", "informational"),
    ],
)
def test_intent_heuristic(volume: int, cpc: float, competition: Any, intent: str) -> None:
    assert infer_intent(volume, cpc, competition) == intent


# --- DataForSEO: request and mapping ---------------------------------------------------------


def test_dataforseo_maps_a_recorded_response(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_ok")))
    keywords = [
        "seo tools",
        "Keyword Research",
        " best  running shoes ",
        "iphone 12",
        "obscure term",
        "never returned",
        "SEO tools",
    ]
    rows = dataforseo.keyword_data(keywords, WORLDWIDE)

    request = route.calls.last.request
    assert (
        request.headers["Authorization"]
        == "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    )
    assert sent_body(route) == [
        {
            "keywords": [
                "seo tools",
                "Keyword Research",
                "best running shoes",
                "iphone 12",
                "obscure term",
                "never returned",
            ],
            "language_code": "en",  # no location_code: Worldwide (the original sent the US)
            "search_partners": False,
        }
    ]
    assert route.call_count == 1
    assert [row["keyword"] for row in rows] == [k.strip() for k in keywords]

    seo, research, shoes, iphone, obscure, missing, seo_again = rows
    assert seo == seo_again | {"keyword": "seo tools"}
    assert {k: v for k, v in seo.items() if k != "trends"} == {
        "keyword": "seo tools",
        "searchVolume": 74000,
        "cpc": 12.42,
        "competition": "high",  # the level string
        "intent": "transactional",
    }
    assert {k: v for k, v in research.items() if k != "trends"} == {
        "keyword": "Keyword Research",
        "searchVolume": 33100,
        "cpc": 4.1,
        "competition": "medium",
        "intent": "commercial",
    }
    assert shoes["competition"] == "low" and shoes["intent"] == "informational"
    assert iphone["competition"] == "high" and iphone["intent"] == "navigational"
    no_data = {"searchVolume": None, "cpc": None, "competition": None, "intent": None}
    # returned with every metric null, and not returned at all: the same, and said so
    assert obscure == {"keyword": "obscure term", **no_data, "noData": True}
    assert missing == {"keyword": "never returned", **no_data, "noData": True}
    assert all("noData" not in row for row in (seo, research, shoes, iphone))
    assert all("difficulty" not in row for row in rows)  # the endpoint has none: none invented


def test_dataforseo_trends_are_the_last_twelve_months_oldest_first(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    body = fixture("search_volume_ok")
    months = body["tasks"][0]["result"][1]["monthly_searches"]
    months.insert(3, {"year": 2024, "month": None, "search_volume": 1})  # dropped: no month
    upstream.post(API_URL).mock(httpx.Response(200, json=body))
    seo, research, _, iphone = dataforseo.keyword_data(
        ["seo tools", "keyword research", "x", "iphone 12"], US
    )
    months = [(t["year"], t["month"]) for t in seo["trends"]]
    assert months == [*((2023, m) for m in range(11, 13)), *((2024, m) for m in range(1, 11))]
    assert seo["trends"][-1] == {"year": 2024, "month": 10, "volume": 90500}
    assert len(research["trends"]) == 12 and all(t["month"] for t in research["trends"])
    assert [t["volume"] for t in iphone["trends"]][-3:] == [None, 590, 720]  # null stays null


def test_dataforseo_trends_leave_out_years_a_saved_search_refuses(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    """A saved search keeps trends of 2000-2100 (the original's rule): a month outside them is
    left out, so the row saves as answered (s52t7 D3)."""
    body = fixture("search_volume_ok")
    body["tasks"][0]["result"][0]["monthly_searches"] = [
        {"year": 1999, "month": 12, "search_volume": 5},
        {"year": 2000, "month": 1, "search_volume": 6},
        {"year": 2101, "month": 1, "search_volume": 7},
    ]
    upstream.post(API_URL).mock(httpx.Response(200, json=body))
    seo = dataforseo.keyword_data(["seo tools"], US)[0]
    assert seo["trends"] == [{"year": 2000, "month": 1, "volume": 6}]


def test_dataforseo_keeps_a_given_difficulty_including_zero(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    body = fixture("search_volume_ok")
    results = body["tasks"][0]["result"]
    results[0]["keyword_properties"] = {"keyword_difficulty": 0}
    results[1]["keyword_properties"] = {"keyword_difficulty": 57}
    upstream.post(API_URL).mock(httpx.Response(200, json=body))
    rows = dataforseo.keyword_data(["seo tools", "keyword research", "iphone 12"], US)
    assert rows[0]["difficulty"] == 0
    assert rows[1]["difficulty"] == 57
    assert "difficulty" not in rows[2]


def test_dataforseo_reads_the_labs_keyword_info_shape() -> None:
    """DataForSEO Labs nests a keyword's figures in `keyword_info` (its documented item): the
    average volume, cpc and level are read there, not the newest month's volume."""
    item = {
        "keyword": "trail shoes",
        "keyword_info": {
            "se_type": "google",
            "last_updated_time": "2024-11-02 07:12:20 +00:00",
            "competition": 0.84,
            "competition_level": "HIGH",
            "cpc": 1.27,
            "search_volume": 14800,
            "low_top_of_page_bid": 0.44,
            "high_top_of_page_bid": 1.92,
            "categories": [10021, 13418],
            "monthly_searches": [
                {"year": 2024, "month": 10, "search_volume": 9900},
                {"year": 2024, "month": 9, "search_volume": 12100},
            ],
        },
        "keyword_properties": {"se_type": "google", "keyword_difficulty": 41},
    }
    row = to_keyword_data("Trail Shoes", item)
    assert (row["searchVolume"], row["cpc"], row["competition"]) == (14800, 1.27, "high")
    assert row["difficulty"] == 41
    assert [point["volume"] for point in row["trends"]] == [12100, 9900]
    only_months = {"keyword_info": {"monthly_searches": item["keyword_info"]["monthly_searches"]}}
    assert to_keyword_data("x", only_months)["searchVolume"] == 9900  # the original's fallback


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"competition_index": 0}, "low"),
        ({"competition_index": 33}, "low"),  # Google's bands: LOW 0-33
        ({"competition_index": 34}, "medium"),
        ({"competition_index": 66}, "medium"),
        ({"competition_index": 67}, "high"),
        ({"competition_index": 100}, "high"),
        ({"competition_index": 0.9}, "low"),  # not a 0-1 scale
        ({"competition": "low", "competition_index": 100}, "low"),
        ({"competition": "HIGH", "competition_index": 0}, "high"),
        ({"competition": None, "competition_index": None}, None),
        ({"competition": None, "competition_index": 91}, "high"),
        ({"search_volume_info": {"competition_level": "HIGH"}}, "high"),
        ({"keyword_info": {"competition": 0.12, "competition_level": "HIGH"}}, "high"),
        ({"keyword_info": {"competition": 0.95}}, None),  # Labs' 0-1 figure is not the index
        ({}, None),
    ],
)
def test_competition_from_level_or_index(item: dict[str, Any], expected: str | None) -> None:
    assert competition_level(item) == expected


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("United States", 2840),
        ("United Kingdom", 2826),
        ("Canada", 2124),
        ("Australia", 2036),
        ("Germany", 2276),
        ("France", 2250),
        ("India", 2356),
        ("Worldwide", None),  # omitted: DataForSEO documents no code for it
        ("GL", None),
        ("Atlantis", 2840),
    ],
)
def test_location_codes(location: str, code: int | None) -> None:
    assert location_code(location) == code


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("en", "en"),
        ("en-GB", "en"),
        ("es", "es"),
        ("pt-BR", "pt"),
        ("ja", "ja"),  # the original sent every unmapped language as "en"
        ("zh-TW", "zh-TW"),
        ("", "en"),
    ],
)
def test_language_codes(language: str, code: str) -> None:
    assert language_code(language) == code


@pytest.mark.parametrize("language", ["zh", "xx", "xx-US"])
def test_unlisted_languages_are_never_sent(language: str) -> None:
    with pytest.raises(ProviderInputError):
        language_code(language)


def test_worldwide_request_omits_the_location_and_reads_null_codes(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_ok")))
    rows = dataforseo.keyword_data(["seo tools"], SearchOptions("phrase", "Worldwide", "de"))
    assert sent_body(route) == [
        {"keywords": ["seo tools"], "language_code": "de", "search_partners": False}
    ]
    assert rows[0]["searchVolume"] == 74000
    germany = dataforseo.keyword_data(["seo tools"], SearchOptions("phrase", "Germany", "de"))
    assert sent_body(route)[0]["location_code"] == 2276 and germany[0]["searchVolume"] == 74000


def test_dataforseo_does_not_send_keywords_beyond_the_endpoint_limits(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_ok")))
    too_long, too_many_words = "k" * 81, " ".join(["w"] * 11)
    refused = ["seo, tools", "caf\u00e9 (paris)", "rocket \U0001f680", "a\u2015b", "x\ufeffy"]
    rows = dataforseo.keyword_data([too_long, "seo tools", too_many_words, *refused], US)
    assert sent_body(route)[0]["keywords"] == ["seo tools"]
    assert rows[0] == {"keyword": too_long, **without_data(too_long)}
    assert rows[1]["searchVolume"] == 74000
    assert rows[2]["keyword"] == too_many_words and rows[2]["noData"] is True
    assert [row["keyword"] for row in rows[3:]] == refused
    assert all(row.get("noData") for row in rows[3:])

    route.reset()
    assert dataforseo.keyword_data([too_long], US)[0]["searchVolume"] is None
    assert route.call_count == 0  # nothing worth paying for


# --- DataForSEO: whose failure is it ---------------------------------------------------------


def task_status(code: int, message: str) -> dict[str, Any]:
    body: dict[str, Any] = fixture("search_volume_task_error")
    body["tasks"][0].update(status_code=code, status_message=message)
    return body


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        pytest.param(
            httpx.Response(200, json=fixture("search_volume_task_error")),
            ProviderInputError,
            id="40501-invalid-field",
        ),
        pytest.param(
            httpx.Response(401, json=fixture("unauthorized")),
            ProviderConfigurationError,
            id="http-401",
        ),
        pytest.param(
            httpx.Response(402, json=fixture("payment_required")),
            ProviderConfigurationError,
            id="http-402",
        ),
        pytest.param(
            httpx.Response(200, json=fixture("payment_required")),
            ProviderConfigurationError,
            id="40200-envelope",
        ),
        pytest.param(
            httpx.Response(200, json=task_status(40203, "The cost limit has been exceeded.")),
            ProviderConfigurationError,
            id="40203-cost-limit",
        ),
        pytest.param(
            httpx.Response(429, text="Too Many Requests"), ProviderRateLimitedError, id="http-429"
        ),
        pytest.param(
            httpx.Response(200, json=fixture("search_volume_rate_limited")),
            ProviderRateLimitedError,
            id="40202-rate-limit",
        ),
        pytest.param(
            httpx.Response(200, json=fixture("search_volume_duplicate_limit")),
            ProviderRateLimitedError,
            id="40205-duplicate-task-limit",
        ),
    ],
)
def test_failures_that_are_not_outages_never_open_the_breaker(
    upstream: respx.MockRouter,
    dataforseo: DataForSEOProvider,
    response: httpx.Response,
    kind: type[ProviderError],
) -> None:
    route = upstream.post(API_URL).mock(response)
    for _ in range(8):  # beyond the breaker's threshold of 5
        with pytest.raises(kind) as raised:
            dataforseo.keyword_data(["seo tools"], US)
        assert raised.value.outage is False
    assert route.call_count == 8  # every call reached the upstream: the circuit stayed closed
    assert dataforseo.breaker.stats() == {"state": "CLOSED", "failures": 0, "successes": 0}
    if kind is ProviderRateLimitedError:
        assert isinstance(raised.value, ProviderRateLimitedError)
        duplicate = "duplicate" in response.text  # the limit is per hour, the rate per minute
        assert raised.value.retry_after == (3600 if duplicate else 60)


def test_no_search_results_is_no_data_a_success_for_the_breaker(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    """40102 "No Search Results.": the request's own keyword matched nothing (DataForSEO's help
    center); every call answers as for an empty result, however often."""
    for url in (API_URL, RELATED_API_URL, SERP_API_URL):
        upstream.post(url).mock(httpx.Response(200, json=fixture("serp_no_results")))
    for _ in range(3):
        assert dataforseo.keyword_data(["qzxv wkjh", "zzqx"], US) == [
            without_data("qzxv wkjh"), without_data("zzqx")
        ]  # fmt: skip
        assert dataforseo.related_keywords("qzxv wkjh", US) == []
        assert dataforseo.organic_serp("qzxv wkjh", US) is None
    assert dataforseo.breaker.stats() == {"state": "CLOSED", "failures": 0, "successes": 0}


def test_the_deadline_is_total_so_a_trickled_body_cannot_outlast_it(clock: Clock) -> None:
    """Each byte arrives well within any per-step timeout; only a total deadline stops it."""
    with FakeDataForSEO() as fake:
        provider = DataForSEOProvider(
            LOGIN, PASSWORD, base_url=fake.url, breaker=CircuitBreaker("DataForSEO", now=clock)
        )
        fake.answer(200, fixture("search_volume_ok"))
        quick = SearchOptions("phrase", "Worldwide", "en", deadline=time.monotonic() + 30)
        assert provider.keyword_data(["seo tools"], quick)[0]["searchVolume"] == 74000

        fake.trickle(200, fixture("search_volume_ok"), every_s=0.2)  # ~20 minutes in all
        options = SearchOptions("phrase", "Worldwide", "en", deadline=time.monotonic() + 1.0)
        with pytest.raises(ProviderError, match="did not answer within") as raised:
            provider.keyword_data(["seo tools"], options)
        assert raised.value.outage  # a provider too slow to answer is the provider's failure
        assert fake.finished_answers == 1  # the trickled answer never completed
        assert provider.breaker.stats()["failures"] == 1


def test_a_passed_deadline_calls_nothing(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_ok")))
    late = SearchOptions("phrase", "United States", "en", deadline=time.monotonic() - 1)
    with pytest.raises(ProviderError, match="no time left"):
        dataforseo.keyword_data(["seo tools"], late)
    assert route.call_count == 0


# --- DataForSEO: failures --------------------------------------------------------------------


def envelope_with(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = fixture("search_volume_ok")
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(httpx.Response(200, json=fixture("search_volume_internal_error")), id="api"),
        pytest.param(httpx.Response(500, text="upstream exploded"), id="http-500"),
        pytest.param(httpx.Response(200, text="<html>gateway</html>"), id="non-json"),
        pytest.param(httpx.Response(200, json=[1, 2]), id="json-array"),
        pytest.param(
            httpx.Response(200, json=envelope_with(status_code=None)), id="no-status-code"
        ),
        pytest.param(httpx.Response(200, json=envelope_with(tasks=[])), id="no-task"),
    ],
)
def test_dataforseo_failures_raise_provider_error(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, response: httpx.Response
) -> None:
    upstream.post(API_URL).mock(response)
    with pytest.raises(ProviderError) as raised:
        dataforseo.keyword_data(["seo tools"], US)
    assert type(raised.value) is ProviderError and raised.value.outage


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("no")]
)
def test_dataforseo_transport_failures_raise_provider_error(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, error: Exception
) -> None:
    upstream.post(API_URL).mock(side_effect=error)
    with pytest.raises(ProviderError):
        dataforseo.keyword_data(["seo tools"], US)


ENDPOINTS = {API_URL: "search_volume_ok", RELATED_API_URL: "keywords_for_keywords_ok",
             SERP_API_URL: "serp_organic_ok"}  # fmt: skip
ABSENT = object()


def with_result(url: str, result: Any) -> dict[str, Any]:
    """`url`'s recorded success (envelope and task 20000) with `result` in place of its own."""
    body: dict[str, Any] = fixture(ENDPOINTS[url])
    if result is ABSENT:
        del body["tasks"][0]["result"]
    else:
        body["tasks"][0]["result"] = result
    return body


def ask(provider: DataForSEOProvider, url: str) -> Any:
    if url == API_URL:
        return provider.keyword_data(["seo tools", "keyword research"], US)
    if url == RELATED_API_URL:
        return provider.related_keywords("seo tools", US)
    return provider.organic_serp("seo tools", US)


@pytest.mark.parametrize("url", list(ENDPOINTS))
@pytest.mark.parametrize(
    "result",
    [
        pytest.param({"keyword": "seo tools", "search_volume": 1000}, id="object"),
        pytest.param("seo tools", id="string"),
        pytest.param(7, id="number"),
        pytest.param(True, id="boolean"),
        pytest.param(["seo tools"], id="array-of-strings"),
        pytest.param([{"keyword": "seo tools"}, 1], id="array-with-a-number"),
        pytest.param([{"items": {"type": "organic"}}], id="items-an-object"),
        pytest.param([{"items": "organic"}], id="items-a-string"),
        pytest.param([{"items": [{"type": "organic"}, "x"]}], id="items-with-a-string"),
    ],
)
def test_a_success_whose_result_is_not_an_array_of_objects_is_an_outage(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, url: str, result: Any
) -> None:
    """DataForSEO documents `result` as an array of objects (its own client's models: a list of
    result objects, or null), and a results page's `items` likewise; anything else is a broken
    answer, never "no data" (which would be cached and charged)."""
    upstream.post(url).mock(httpx.Response(200, json=with_result(url, result)))
    with pytest.raises(ProviderError, match="result") as raised:
        ask(dataforseo, url)
    assert type(raised.value) is ProviderError and raised.value.outage
    assert dataforseo.breaker.stats()["failures"] == 1


@pytest.mark.parametrize("url", [API_URL, RELATED_API_URL])
@pytest.mark.parametrize(
    "item",
    [
        pytest.param({"search_volume": -5}, id="volume"),
        pytest.param({"search_volume": 500, "cpc": -1.5}, id="cpc"),
        pytest.param(
            {"search_volume": 500, "monthly_searches": [{"year": 2026, "month": 1,
                                                         "search_volume": -3}]},
            id="monthly-volume",
        ),
        pytest.param({"keyword_info": {"search_volume": -1}}, id="labs-volume"),
        pytest.param({"keyword_info": {"search_volume": 9, "cpc": -0.1}}, id="labs-cpc"),
        pytest.param(
            {"keyword_info": {"monthly_searches": [{"year": 2026, "month": 1,
                                                    "search_volume": -3}]}},
            id="labs-monthly-volume",
        ),
    ],
)  # fmt: skip
def test_a_negative_volume_or_cpc_is_a_broken_answer(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, url: str, item: dict[str, Any]
) -> None:
    """No search is made a negative number of times: the figure is broken, not a measured 0
    (it was answered, cached and halved the history's average: s52t7 D2), as Google Ads'."""
    result = [{"keyword": "seo tools", **item}]
    upstream.post(url).mock(httpx.Response(200, json=with_result(url, result)))
    with pytest.raises(ProviderError, match="negative") as raised:
        ask(dataforseo, url)
    assert type(raised.value) is ProviderError and raised.value.outage
    assert dataforseo.breaker.stats()["failures"] == 1


@pytest.mark.parametrize("url", list(ENDPOINTS))
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_a_body_holding_what_json_has_not_is_a_non_json_body(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, url: str, token: str
) -> None:
    """`NaN`, `Infinity` and a number past a double's range are not JSON (RFC 8259), though
    Python's parser takes them: read so, a volume of NaN became "no data", answered, charged and
    cached for a week (s52t7 D1). A non-JSON body is an outage, on every endpoint."""
    text = json.dumps(fixture(ENDPOINTS[url])).replace('"cost":', f'"bad": {token}, "cost":', 1)
    upstream.post(url).mock(httpx.Response(200, text=text))
    with pytest.raises(ProviderError, match="non-JSON") as raised:
        ask(dataforseo, url)
    assert type(raised.value) is ProviderError and raised.value.outage
    assert dataforseo.breaker.stats()["failures"] == 1


@pytest.mark.parametrize("url", list(ENDPOINTS))
@pytest.mark.parametrize(
    "result",
    [
        pytest.param(None, id="null"),
        pytest.param(ABSENT, id="absent"),
        pytest.param([], id="empty"),
        pytest.param([None], id="null-element"),
        pytest.param([{"items": None}], id="items-null"),
        pytest.param([{"items": []}], id="items-empty"),
    ],
)
def test_a_success_with_nothing_in_its_result_is_no_data(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, url: str, result: Any
) -> None:
    """The shapes DataForSEO's client reads as "nothing": a null or empty `result`, null
    elements, a results page whose `items` are null or empty. A success for the breaker."""
    upstream.post(url).mock(httpx.Response(200, json=with_result(url, result)))
    answer = ask(dataforseo, url)
    if url == API_URL:
        assert answer == [without_data("seo tools"), without_data("keyword research")]
    elif url == RELATED_API_URL:
        assert answer == []
    else:
        assert brief.parse_serp(answer) == {"results": [], "questions": [], "totalResults": 0}
    assert dataforseo.breaker.stats()["failures"] == 0


def test_dataforseo_task_error_names_the_code_for_the_logs(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_task_error")))
    with pytest.raises(ProviderError, match="40501"):
        dataforseo.keyword_data(["seo tools"], US)


def test_dataforseo_logs_never_carry_credentials(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, caplog: pytest.LogCaptureFixture
) -> None:
    echo = f"bad credentials for {LOGIN}:{PASSWORD}"
    upstream.post(API_URL).mock(httpx.Response(403, text=echo))
    with caplog.at_level(logging.DEBUG, logger="keyflash"), pytest.raises(ProviderError) as raised:
        dataforseo.keyword_data(["seo tools"], US)
    assert "provider_request" in caplog.text and "403" in caplog.text
    assert PASSWORD not in caplog.text and LOGIN not in caplog.text
    assert PASSWORD not in str(raised.value)


# Credentials whose encodings differ from them: `@`, `/`, `+`, a space, a quote, a non-ASCII letter.
ODD_LOGIN, ODD_PASSWORD = "ops+seo@example.com", 'pa/ss+w\u00f6rd "x" 1'
ODD_TOKEN = base64.b64encode(f"{ODD_LOGIN}:{ODD_PASSWORD}".encode()).decode()


def test_the_scrubber_removes_every_derived_form_of_a_secret() -> None:
    forms = secret_forms(ODD_LOGIN, ODD_PASSWORD, ODD_TOKEN)
    text = " ".join(f"<{form}>" for form in forms)
    assert scrub(text, (ODD_LOGIN, ODD_PASSWORD, ODD_TOKEN)) == " ".join(["<***>"] * len(forms))
    for form in forms:  # alone, a form without `\\u` meets the patterns without those forms
        assert scrub(f"<{form}>", (ODD_LOGIN, ODD_PASSWORD, ODD_TOKEN)) == "<***>", form
    assert scrub("nothing secret", ("", "  ")) == "nothing secret"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda echo: httpx.Response(502, text=echo), id="http-502-text"),
        pytest.param(
            lambda echo: httpx.Response(200, json=task_status(50000, echo)), id="task-50000"
        ),
        pytest.param(
            lambda echo: httpx.Response(200, json=task_status(40100, echo)), id="task-40100"
        ),
        pytest.param(lambda echo: httpx.Response(200, text="<html>" + echo), id="non-json"),
    ],
)
def test_dataforseo_logs_carry_no_form_of_the_credentials(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, answer: Any
) -> None:
    """The Basic token is the credentials (base64 of `login:password`); DataForSEO's text may
    quote it, or the login and password URL-encoded or JSON-escaped."""
    provider = DataForSEOProvider(
        ODD_LOGIN, ODD_PASSWORD, breaker=CircuitBreaker("DataForSEO", failure_threshold=1000)
    )
    route = upstream.post(API_URL)
    assert ODD_TOKEN.endswith("=")
    for form in secret_forms(ODD_LOGIN, ODD_PASSWORD, ODD_TOKEN, ODD_TOKEN.rstrip("=")):
        caplog.clear()
        route.mock(answer(f"upstream said Basic {form}."))
        with (
            caplog.at_level(logging.DEBUG, logger="keyflash"),
            pytest.raises(ProviderError) as raised,
        ):
            provider.keyword_data(["seo tools"], US)
        logged = logged_values(caplog)
        assert "provider_request" in logged and "upstream said Basic ***." in logged, form
        assert form not in logged and form not in caplog.text, form
        assert form not in str(raised.value), form
    assert route.calls.last.request.headers["authorization"] == f"Basic {ODD_TOKEN}"


def test_dataforseo_uses_a_30_second_timeout() -> None:
    from shared.providers import dataforseo as module

    client = module.http_client()
    assert client is module.http_client()  # one per container
    assert client.timeout == httpx.Timeout(30.0)


@pytest.mark.parametrize(
    ("login", "password", "missing"),
    [
        (None, None, "DATAFORSEO_API_LOGIN, DATAFORSEO_API_PASSWORD"),
        (LOGIN, "", "DATAFORSEO_API_PASSWORD"),
        ("  ", PASSWORD, "DATAFORSEO_API_LOGIN"),
    ],
)
def test_dataforseo_without_credentials_is_a_configuration_error(
    upstream: respx.MockRouter, login: str | None, password: str | None, missing: str
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(200, json=fixture("search_volume_ok")))
    provider = DataForSEOProvider(login, password)
    with pytest.raises(ProviderConfigurationError, match=f"missing configuration: {missing}\\."):
        provider.keyword_data(["seo tools"], US)
    assert route.call_count == 0
    assert provider.breaker.stats()["failures"] == 0  # not an upstream failure


def test_configured_dataforseo_without_credentials(
    monkeypatch: pytest.MonkeyPatch, upstream: respx.MockRouter
) -> None:
    configure(monkeypatch, KEYWORD_API_PROVIDER="DataForSEO")
    provider = get_provider()
    assert (provider.key, provider.name) == ("dataforseo", "DataForSEO")
    assert configuration_error() == (
        "DataForSEO provider missing configuration: DATAFORSEO_API_LOGIN, "
        "DATAFORSEO_API_PASSWORD. Please set these environment variables."
    )
    with pytest.raises(ProviderConfigurationError):
        provider.keyword_data(["seo"], US)


# --- circuit breaker -------------------------------------------------------------------------


def fail_times(provider: DataForSEOProvider, clock: Clock, count: int, every: float) -> None:
    """`count` upstream failures, `every` seconds apart (the clock ends at the last one)."""
    for i in range(count):
        if i:
            clock.advance(every)
        with pytest.raises(ProviderError) as raised:
            provider.keyword_data(["seo tools"], US)
        assert not isinstance(raised.value, ProviderUnavailableError)


def test_breaker_opens_after_five_failures_within_the_window(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, clock: Clock
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(500))
    fail_times(dataforseo, clock, 4, every=10)
    assert dataforseo.breaker.state is State.CLOSED
    clock.advance(10)
    fail_times(dataforseo, clock, 1, every=0)  # the fifth, 40 s after the first
    assert dataforseo.breaker.stats() == {
        "state": "OPEN",
        "failures": 5,
        "successes": 0,
        "nextAttemptTime": round((clock.t + 60) * 1000),
    }

    clock.advance(20)
    for _ in range(3):
        with pytest.raises(ProviderUnavailableError) as raised:
            dataforseo.keyword_data(["seo tools"], US)
        assert raised.value.retry_after == 40
    assert route.call_count == 5  # the open circuit did not call upstream


def test_breaker_ignores_five_failures_spread_over_more_than_a_minute(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, clock: Clock
) -> None:
    route = upstream.post(API_URL).mock(httpx.Response(500))
    fail_times(dataforseo, clock, 5, every=15.01)  # the first has left the window by the fifth
    assert dataforseo.breaker.state is State.CLOSED
    assert dataforseo.breaker.stats()["failures"] == 4
    fail_times(dataforseo, clock, 1, every=0)
    assert route.call_count == 6


def test_breaker_opens_for_an_upstream_failing_every_other_call(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, clock: Clock
) -> None:
    """A success in between does not clear the failures: 5 within 60 s open it (report t1,
    finding 6: the original's reset kept it closed for an upstream failing every other call)."""
    route = upstream.post(API_URL)
    for _ in range(4):
        route.mock(httpx.Response(500))
        fail_times(dataforseo, clock, 1, every=1)
        route.mock(httpx.Response(200, json=fixture("search_volume_ok")))
        dataforseo.keyword_data(["seo tools"], US)
        clock.advance(10)  # the fifth failure comes 41 s after the first
    assert dataforseo.breaker.stats()["failures"] == 4
    route.mock(httpx.Response(500))
    fail_times(dataforseo, clock, 1, every=1)
    assert dataforseo.breaker.state is State.OPEN


def test_breaker_half_opens_after_a_minute_and_closes_after_two_successes(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, clock: Clock
) -> None:
    route = upstream.post(API_URL)
    route.mock(httpx.Response(500))
    fail_times(dataforseo, clock, 5, every=0)
    clock.advance(59.5)
    with pytest.raises(ProviderUnavailableError) as raised:
        dataforseo.keyword_data(["seo tools"], US)
    assert raised.value.retry_after == 1

    route.mock(httpx.Response(200, json=fixture("search_volume_ok")))
    clock.advance(0.5)  # exactly 60 s after opening
    assert dataforseo.keyword_data(["seo tools"], US)[0]["searchVolume"] == 74000
    # The failures have left the 60 s window by now; one success is not yet enough to close.
    assert dataforseo.breaker.stats() == {"state": "HALF_OPEN", "failures": 0, "successes": 1}
    dataforseo.keyword_data(["seo tools"], US)
    assert dataforseo.breaker.stats() == {"state": "CLOSED", "failures": 0, "successes": 0}
    assert route.call_count == 7


def test_breaker_reopens_at_once_on_a_half_open_failure(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider, clock: Clock
) -> None:
    route = upstream.post(API_URL)
    route.mock(httpx.Response(500))
    fail_times(dataforseo, clock, 5, every=0)
    clock.advance(61)  # the window has emptied too: one failure must be enough
    route.mock(httpx.Response(200, json=fixture("search_volume_ok")))
    dataforseo.keyword_data(["seo tools"], US)
    assert dataforseo.breaker.state is State.HALF_OPEN
    route.mock(side_effect=httpx.ReadTimeout("slow"))
    fail_times(dataforseo, clock, 1, every=0)
    assert dataforseo.breaker.stats()["state"] == "OPEN"
    with pytest.raises(ProviderUnavailableError) as raised:
        dataforseo.keyword_data(["seo tools"], US)
    assert raised.value.retry_after == 60
    assert route.call_count == 7


def test_breaker_unit_contract(clock: Clock) -> None:
    breaker = CircuitBreaker("unit", now=clock)

    def boom() -> None:
        raise RuntimeError("down")

    for _ in range(5):
        with pytest.raises(RuntimeError):
            breaker.call(boom)
    assert not breaker.is_healthy
    calls: list[int] = []
    with pytest.raises(ProviderUnavailableError):
        breaker.call(lambda: calls.append(1))
    assert calls == []
    breaker.reset()
    assert breaker.call(lambda: 42) == 42
    assert breaker.stats() == {"state": "CLOSED", "failures": 0, "successes": 0}


# --- registry --------------------------------------------------------------------------------


def test_default_provider_is_mock_and_cached() -> None:
    provider = get_provider()
    assert (provider.key, provider.name) == ("mock", "Mock")
    assert get_provider() is provider is mock_provider()
    assert breaker_stats() is None
    assert configuration_error() is None


def test_mock_provider_stays_mock_whatever_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, KEYWORD_API_PROVIDER="dataforseo")
    assert mock_provider().key == "mock"
    assert get_provider().key == "dataforseo"


@pytest.mark.parametrize("name", ["bing", "Mock2", "google_ads"])
def test_unknown_provider_never_falls_back_to_mock(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    configure(monkeypatch, KEYWORD_API_PROVIDER=name)
    with pytest.raises(ProviderConfigurationError, match="is not supported; use one of mock"):
        get_provider()
    assert "is not supported" in (configuration_error() or "")
    assert mock_provider().key == "mock"  # trial users keep their Mock


def test_unknown_provider_is_an_error_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        monkeypatch,
        APP_ENV="production",
        RATE_LIMIT_HMAC_SECRET="x" * 32,
        KEYWORD_API_PROVIDER="bing",
    )
    with pytest.raises(ProviderConfigurationError, match="'bing' is not supported"):
        get_provider()
    assert "not supported" in (configuration_error() or "")
    assert breaker_stats() is None


def test_the_breaker_persists_across_get_provider_calls(
    monkeypatch: pytest.MonkeyPatch, upstream: respx.MockRouter
) -> None:
    configure(
        monkeypatch,
        KEYWORD_API_PROVIDER="dataforseo",
        DATAFORSEO_API_LOGIN=LOGIN,
        DATAFORSEO_API_PASSWORD=PASSWORD,
        DATAFORSEO_REQUESTS_PER_MINUTE="0",  # no shared budget here (no Redis)
    )
    route = upstream.post(API_URL).mock(httpx.Response(502))
    first = get_provider()
    assert breaker_stats() == {"state": "CLOSED", "failures": 0, "successes": 0}
    for _ in range(5):  # one "invocation" each
        with pytest.raises(ProviderError):
            get_provider().keyword_data(["seo tools"], US)
    assert get_provider() is first
    with pytest.raises(ProviderUnavailableError):
        get_provider().keyword_data(["seo tools"], US)
    assert route.call_count == 5
    stats = breaker_stats()
    assert stats is not None and stats["state"] == "OPEN" and stats["failures"] == 5

    reset_providers()
    assert get_provider() is not first
    assert breaker_stats() == {"state": "CLOSED", "failures": 0, "successes": 0}


def test_importing_providers_does_not_import_httpx() -> None:
    code = (
        "import sys, shared.providers as p; "
        "assert 'httpx' not in sys.modules, 'httpx'; "
        "assert 'shared.providers.dataforseo' not in sys.modules"
    )
    root = Path(__file__).parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_rows_are_typed_dicts_the_endpoint_can_cache() -> None:
    row: KeywordData = mock_provider().keyword_data(["seo"], US)[0]
    assert json.loads(json.dumps(row)) == copy.deepcopy(row)


# --- DataForSEO: keyword ideas and results pages -------------------------------------------


def test_dataforseo_ideas_for_a_seed_it_would_refuse_are_empty_without_a_call(
    upstream: respx.MockRouter, dataforseo: DataForSEOProvider
) -> None:
    route = upstream.post(RELATED_API_URL).mock(httpx.Response(500))
    assert dataforseo.related_keywords(" ".join(["word"] * 11), US) == []
    assert dataforseo.related_keywords("x" * 81, US) == []
    assert route.call_count == 0


def test_dataforseo_ideas_and_results_pages_need_credentials(upstream: respx.MockRouter) -> None:
    provider = DataForSEOProvider(None, "")
    with pytest.raises(ProviderConfigurationError, match="DATAFORSEO_API_LOGIN"):
        provider.related_keywords("seo", US)
    with pytest.raises(ProviderConfigurationError, match="DATAFORSEO_API_PASSWORD"):
        provider.organic_serp("seo", US)


def test_related_keywords_have_their_own_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """As each function's own container has deployed; other providers are the configured one."""
    configure(monkeypatch, KEYWORD_API_PROVIDER="dataforseo", DATAFORSEO_API_LOGIN=LOGIN,
              DATAFORSEO_API_PASSWORD=PASSWORD, DATAFORSEO_REQUESTS_PER_MINUTE="7")  # fmt: skip
    ideas = related_provider()
    assert isinstance(ideas, DataForSEOProvider) and ideas is related_provider()
    assert ideas.breaker is not getattr(get_provider(), "breaker", None)
    assert ideas.breaker.name == "DataForSEO related keywords"
    assert ideas.requests_per_minute == 7  # the account's one budget, as the search's
    configure(monkeypatch, KEYWORD_API_PROVIDER="mock")
    assert related_provider() is get_provider()


def test_the_results_page_has_its_own_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, KEYWORD_API_PROVIDER="dataforseo", DATAFORSEO_API_LOGIN=LOGIN,
              DATAFORSEO_API_PASSWORD=PASSWORD)  # fmt: skip
    serp = serp_provider()
    assert serp is serp_provider()  # one per container
    assert serp.breaker is not getattr(get_provider(), "breaker", None)
    assert serp.breaker.name == "DataForSEO SERP" and serp.requests_per_minute == 0
