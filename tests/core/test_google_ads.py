"""The Google Ads provider against a local Google (token endpoint and Ads API) over real HTTP,
answering in Google's documented shapes (tests/fixtures/google_ads)."""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from shared import config
from shared.providers import (
    ProviderConfigurationError,
    ProviderError,
    ProviderInputError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    SearchOptions,
    configuration_error,
    get_provider,
    reset_providers,
)
from shared.providers.breaker import CircuitBreaker, State
from shared.providers.google_ads import (
    API_VERSION,
    MAX_JOINED_CHARS,
    MAX_KEYWORDS,
    GoogleAdsProvider,
    batches,
    retry_after,
)
from shared.providers.languages import available
from tests.support.fake_google_ads import FakeGoogleAds, fixture
from tests.support.secret_forms import logged_values, secret_forms

SECRETS = {
    "client_secret": "GOCSPX-client-secret-value",
    "developer_token": "dev-token-value-123",
    "refresh_token": "1//refresh-token-value",
}
ACCESS_TOKEN = fixture("token")["access_token"]
US = SearchOptions(match_type="phrase", location="United States", language="en-US")
ADS_PATH = f"/{API_VERSION}/customers/1234567890:generateKeywordHistoricalMetrics"
GOOGLE_ENV = (
    "KEYWORD_API_PROVIDER",
    "GOOGLE_ADS_CLIENT_ID",
    "GOOGLE_ADS_CLIENT_SECRET",
    "GOOGLE_ADS_DEVELOPER_TOKEN",
    "GOOGLE_ADS_REFRESH_TOKEN",
    "GOOGLE_ADS_CUSTOMER_ID",
    "GOOGLE_ADS_LOGIN_CUSTOMER_ID",
)


@pytest.fixture(autouse=True)
def provider_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@localhost/unused")
    for name in GOOGLE_ENV:
        monkeypatch.delenv(name, raising=False)
    config.get_settings.cache_clear()
    reset_providers()
    yield
    reset_providers()
    config.get_settings.cache_clear()


@pytest.fixture
def google() -> Iterator[FakeGoogleAds]:
    with FakeGoogleAds() as fake:
        yield fake


def provider(fake: FakeGoogleAds, **overrides: Any) -> GoogleAdsProvider:
    settings: dict[str, Any] = {
        "client_id": "client-id.apps.googleusercontent.com",
        **SECRETS,
        "customer_id": "123-456-7890",
        "login_customer_id": "111-222-3333",
        "base_url": fake.url,
        "token_url": fake.token_url,
        **overrides,
    }
    return GoogleAdsProvider(**settings)


def test_maps_google_metrics_and_sends_the_documented_request(google: FakeGoogleAds) -> None:
    keywords = ["seo tools", "SEO  Tool", "keyword research", "keyword planner alternative",
                "never measured", "seo tools"]  # fmt: skip
    rows = provider(google).keyword_data(keywords, US)

    assert google.paths() == ["/token", ADS_PATH]
    _, token_headers, form = google.calls[0]
    assert token_headers["content-type"] == "application/x-www-form-urlencoded"
    assert form == {
        "grant_type": "refresh_token",
        "client_id": "client-id.apps.googleusercontent.com",
        "client_secret": SECRETS["client_secret"],
        "refresh_token": SECRETS["refresh_token"],
    }
    _, headers, body = google.calls[1]
    assert headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert headers["developer-token"] == SECRETS["developer_token"]
    assert headers["login-customer-id"] == "1112223333"
    assert body == {
        "keywords": ["seo tools", "SEO Tool", "keyword research", "keyword planner alternative",
                     "never measured"],
        "language": "languageConstants/1000",
        "geoTargetConstants": ["geoTargetConstants/2840"],
        "keywordPlanNetwork": "GOOGLE_SEARCH",
    }  # fmt: skip

    seo = {"keyword": "seo tools", "searchVolume": 49500, "cpc": 6.01, "competition": "high",
           "intent": "transactional", "difficulty": 87}  # fmt: skip
    assert rows[0] == seo and rows[5] == seo
    assert rows[1] == {**seo, "keyword": "SEO  Tool"}  # a close variant of "seo tools"
    research = {"keyword": "keyword research", "searchVolume": 22200, "cpc": 3.0,
                "competition": "medium", "intent": "commercial", "difficulty": 41}  # fmt: skip
    assert rows[2] == research
    for row, keyword in ((rows[3], "keyword planner alternative"), (rows[4], "never measured")):
        assert row == {"keyword": keyword, "searchVolume": None, "cpc": None,
                       "competition": None, "intent": None, "noData": True}  # fmt: skip
    assert all("trends" not in row for row in rows)


def test_missing_figures_stay_missing(google: FakeGoogleAds) -> None:
    answer = {"results": [
        {"text": "only volume", "keywordMetrics": {"avgMonthlySearches": "0"}},
        {"text": "one bid", "keywordMetrics": {"avgMonthlySearches": "720", "competition":
            "UNKNOWN", "competitionIndex": "70", "highTopOfPageBidMicros": "2500000"}},
    ]}  # fmt: skip
    google.ads(200, answer)
    rows = provider(google).keyword_data(["only volume", "one bid"], US)
    assert rows[0] == {"keyword": "only volume", "searchVolume": 0, "cpc": None,
                       "competition": None, "intent": None}  # fmt: skip
    assert rows[1] == {"keyword": "one bid", "searchVolume": 720, "cpc": 2.5,
                       "competition": "high", "intent": "commercial", "difficulty": 70}  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"results": None},
        {"results": []},
        {"results": [{"text": "seo tools"}]},  # Google omits keywordMetrics: no data
        {"results": [{"text": "seo tools", "keywordMetrics": None}]},
        {"results": [{"text": "seo tools", "keywordMetrics": {"competition": "LOW"}}]},
        {"results": [{"text": "other", "keywordMetrics": {"avgMonthlySearches": "9"}}]},
    ],
)
def test_metrics_google_does_not_send_are_no_data(google: FakeGoogleAds, answer: Any) -> None:
    google.ads(200, answer)
    ads = provider(google)
    assert ads.keyword_data(["seo tools"], US)[0]["noData"] is True
    assert ads.breaker.stats()["failures"] == 0


BROKEN_ANSWERS = [
    {"results": "oops"},
    {"results": {"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10"}}},
    {"results": [42]},
    {"results": [None]},
    {"results": [{"text": 7}]},
    {"results": [{"text": "seo tools", "closeVariants": "seo tool"}]},
    {"results": [{"text": "x", "closeVariants": ["seo tools", 3]}]},
    {"results": [{"text": "seo tools", "keywordMetrics": "none"}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "lots"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": True}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "\u00b2"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "1" * 5000}}]},
    {"results": [{"text": "seo tools",
                  "keywordMetrics": {"avgMonthlySearches": "9223372036854775808"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": 1e300}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10",
                                                          "competitionIndex": "high"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10",
                                                          "lowTopOfPageBidMicros": [1]}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10",
                                                          "competition": 3}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "-5"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10",
                                                          "lowTopOfPageBidMicros": "-1"}}]},
    {"results": [{"text": "seo tools", "keywordMetrics": {"avgMonthlySearches": "10",
                                                          "highTopOfPageBidMicros": -2}}]},
]  # fmt: skip


@pytest.mark.parametrize("answer", BROKEN_ANSWERS)
def test_an_answer_not_in_googles_shape_is_a_broken_answer_not_no_data(
    google: FakeGoogleAds, answer: Any
) -> None:
    """A wrong shape or type is not "Google has no data": read so, it would be answered,
    charged and cached for days (s472 case 16). It is an outage, as DataForSEO's."""
    google.ads(200, answer)
    ads = provider(google)
    with pytest.raises(ProviderError, match="not in Google's shape") as raised:
        ads.keyword_data(["seo tools"], US)
    assert type(raised.value) is ProviderError and raised.value.outage
    assert ads.breaker.stats()["failures"] == 1


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_body_holding_what_json_has_not_is_a_non_json_body(
    google: FakeGoogleAds, token: str
) -> None:
    """Parsed as strictly as DataForSEO's (one parser): not "no data" nor a wrong type."""
    text = json.dumps(fixture("historical_metrics")).replace("{", f'{{"bad": {token}, ', 1)
    google.ads(200, text.encode())
    ads = provider(google)
    with pytest.raises(ProviderError, match="non-JSON") as raised:
        ads.keyword_data(["seo tools"], US)
    assert type(raised.value) is ProviderError and raised.value.outage
    assert ads.breaker.stats()["failures"] == 1


@pytest.mark.parametrize(
    ("location", "language", "geo", "constant"),
    [
        ("Worldwide", "en", [], 1000),
        ("United Kingdom", "en-GB", ["geoTargetConstants/2826"], 1000),
        ("Germany", "de", ["geoTargetConstants/2276"], 1001),
        ("France", "fr", ["geoTargetConstants/2250"], 1002),
        ("India", "es", ["geoTargetConstants/2356"], 1003),
    ],
)
def test_locations_and_languages_become_google_constants(
    google: FakeGoogleAds, location: str, language: str, geo: list[str], constant: int
) -> None:
    provider(google).keyword_data(["seo tools"], SearchOptions("exact", location, language))
    body = google.calls[-1][2]
    assert body["geoTargetConstants"] == geo
    assert body["language"] == f"languageConstants/{constant}"


@pytest.mark.parametrize("language", ["ja", "pt-BR", "en-AU", "es-MX"])
def test_other_languages_are_refused_before_anything_is_sent(
    google: FakeGoogleAds, language: str
) -> None:
    assert available(language, "google-ads") is False
    with pytest.raises(ProviderInputError):
        provider(google).keyword_data(["seo tools"], SearchOptions("phrase", "Canada", language))
    assert google.calls == []


def test_the_access_token_is_reused_until_shortly_before_it_expires(
    google: FakeGoogleAds,
) -> None:
    ads = provider(google)
    for _ in range(3):
        ads.keyword_data(["seo tools"], US)
    assert google.paths().count("/token") == 1
    google.token(200, {**fixture("token"), "expires_in": 30})  # within the 60 s margin
    fresh = provider(google)
    fresh.keyword_data(["seo tools"], US)
    fresh.keyword_data(["seo tools"], US)
    assert google.paths().count("/token") == 3


def test_long_lists_go_in_batches_within_the_originals_limits(google: FakeGoogleAds) -> None:
    keywords = [f"{'k' * 71} word {index:03d}" for index in range(200)]
    assert all(len(keyword) == 80 for keyword in keywords)
    rows = provider(google).keyword_data(keywords, US)
    sent = [body["keywords"] for path, _, body in google.calls if path == ADS_PATH]
    assert [keyword for batch in sent for keyword in batch] == keywords
    assert all(len(batch) <= MAX_KEYWORDS for batch in sent)
    assert all(len(",".join(batch)) <= MAX_JOINED_CHARS for batch in sent)
    assert len(sent) == 3 and len(rows) == 200


def test_batches_split_on_the_keyword_count_too() -> None:
    assert [len(batch) for batch in batches([f"k{i}" for i in range(450)])] == [200, 200, 50]
    assert batches([]) == []


@pytest.mark.parametrize(
    ("where", "status", "body"),
    [
        ("token", 400, fixture("invalid_grant")),
        ("token", 401, {"error": "invalid_client"}),
        ("ads", 401, fixture("unauthenticated")),
        ("ads", 403, fixture("developer_token_not_approved")),
    ],
)
def test_rejected_credentials_are_configuration_and_never_open_the_breaker(
    google: FakeGoogleAds, where: str, status: int, body: Any
) -> None:
    (google.token if where == "token" else google.ads)(status, body)
    ads = provider(google)
    for _ in range(6):
        with pytest.raises(ProviderConfigurationError, match=f"answered {status}|HTTP {status}"):
            ads.keyword_data(["seo tools"], US)
    assert ads.breaker.state is State.CLOSED


def test_a_401_from_the_api_drops_the_cached_token(google: FakeGoogleAds) -> None:
    ads = provider(google)
    ads.keyword_data(["seo tools"], US)
    google.ads(401, fixture("unauthenticated"))
    with pytest.raises(ProviderConfigurationError):
        ads.keyword_data(["seo tools"], US)
    google.ads(200, fixture("historical_metrics"))
    ads.keyword_data(["seo tools"], US)
    assert google.paths().count("/token") == 2


def test_quota_errors_are_rate_limiting_with_googles_wait(google: FakeGoogleAds) -> None:
    ads = provider(google)
    google.ads(429, fixture("resource_exhausted"))
    with pytest.raises(ProviderRateLimitedError) as raised:
        ads.keyword_data(["seo tools"], US)
    assert raised.value.retry_after == 27
    google.ads(429, fixture("resource_exhausted"), headers={"Retry-After": "9"})
    with pytest.raises(ProviderRateLimitedError) as raised:
        ads.keyword_data(["seo tools"], US)
    assert raised.value.retry_after == 9
    plain = copy.deepcopy(fixture("internal"))
    plain["error"].update(code=429, status="RESOURCE_EXHAUSTED")
    google.ads(429, plain)
    with pytest.raises(ProviderRateLimitedError) as raised:
        ads.keyword_data(["seo tools"], US)
    assert raised.value.retry_after == 60
    assert ads.breaker.state is State.CLOSED


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("2.500s", 3), ("0.2s", 1), ("27s", 27), ("9" * 5000 + "s", 60), ("99999999999s", 86_400)],
)
def test_googles_retry_delay_is_rounded_up_to_whole_seconds(
    google: FakeGoogleAds, delay: str, seconds: int
) -> None:
    """Rounded down, a client obeying `Retry-After` retries before Google's delay is over
    (s472 case 04)."""
    answer = copy.deepcopy(fixture("resource_exhausted"))
    answer["error"]["details"][0]["errors"][0]["details"]["quotaErrorDetails"]["retryDelay"] = delay
    google.ads(429, answer)
    with pytest.raises(ProviderRateLimitedError) as raised:
        provider(google).keyword_data(["seo tools"], US)
    assert raised.value.retry_after == seconds


NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("9", 9),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90),  # RFC 9110 IMF-fixdate
        ("Sunday, 06-Dec-26 12:02:00 GMT", 120),  # the obsolete RFC 850 form
        ("Sun Dec  6 12:00:30 2026", 30),  # asctime
        (format_datetime(NOW + timedelta(milliseconds=500), usegmt=True), 1),  # never 0
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 1),  # past: now, so 1
        ("soon", 27),  # not a Retry-After: the quota error's delay
        ("-5", 27),
        ("0", 1),  # "now", but never 0
        ("9" * 5000, 27),  # no int64: not a delay (and int() of it would raise)
        ("99999999999999", 86_400),  # at most a day
        ("Fri, 31 Dec 9999 23:59:59 GMT", 86_400),
    ],
)
def test_a_retry_after_header_is_seconds_or_an_http_date(header: str, seconds: int) -> None:
    response = httpx.Response(
        429, headers={"Retry-After": header}, json=fixture("resource_exhausted")
    )
    assert retry_after(response, now=NOW) == seconds


def test_outages_open_the_breaker_and_it_then_calls_nothing(google: FakeGoogleAds) -> None:
    google.ads(500, fixture("internal"))
    ads = provider(google, breaker=CircuitBreaker("Google Ads"))
    for _ in range(5):
        with pytest.raises(ProviderError) as raised:
            ads.keyword_data(["seo tools"], US)
        assert type(raised.value) is ProviderError
    calls = len(google.calls)
    with pytest.raises(ProviderUnavailableError):
        ads.keyword_data(["seo tools"], US)
    assert len(google.calls) == calls and ads.breaker.state is State.OPEN


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, ProviderInputError),
        (200, ["not", "an", "object"], ProviderError),
        (503, {"error": {"code": 503, "status": "UNAVAILABLE"}}, ProviderError),
    ],
)
def test_other_answers_are_classified(
    google: FakeGoogleAds, status: int, body: Any, error: type[ProviderError]
) -> None:
    google.ads(status, body)
    with pytest.raises(error) as raised:
        provider(google).keyword_data(["seo tools"], US)
    assert type(raised.value) is error


def test_a_token_answer_without_a_token_is_an_outage(google: FakeGoogleAds) -> None:
    google.token(200, {"token_type": "Bearer"})
    with pytest.raises(ProviderError, match="without access_token") as raised:
        provider(google).keyword_data(["seo tools"], US)
    assert raised.value.outage


def test_an_unreachable_google_is_an_outage() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    ads = GoogleAdsProvider(
        client_id="id", customer_id="1234567890", token_url=f"http://127.0.0.1:{port}/token",
        base_url=f"http://127.0.0.1:{port}", **SECRETS,
    )  # fmt: skip
    with pytest.raises(ProviderError, match="Google request failed") as raised:
        ads.keyword_data(["seo tools"], US)
    assert raised.value.outage


def test_a_passed_deadline_calls_nothing_and_counts_nothing(google: FakeGoogleAds) -> None:
    late = SearchOptions("phrase", "United States", "en", deadline=0.0)
    ads = provider(google)
    with pytest.raises(ProviderError, match="no time left"):
        ads.keyword_data(["seo tools"], late)
    assert google.calls == [] and ads.breaker.stats()["failures"] == 0


def test_the_deadline_is_total_so_a_trickled_body_cannot_outlast_it(
    google: FakeGoogleAds,
) -> None:
    ads = provider(google)
    quick = SearchOptions("phrase", "Worldwide", "en", deadline=time.monotonic() + 30)
    assert ads.keyword_data(["seo tools"], quick)[0]["searchVolume"] == 49500
    google.ads(200, fixture("historical_metrics"), every_s=0.2)  # minutes in all
    options = SearchOptions("phrase", "Worldwide", "en", deadline=time.monotonic() + 1.0)
    with pytest.raises(ProviderError, match="Google Ads did not answer within") as raised:
        ads.keyword_data(["seo tools"], options)
    assert raised.value.outage and ads.breaker.stats()["failures"] == 1


def test_logs_never_carry_the_secrets(
    google: FakeGoogleAds, caplog: pytest.LogCaptureFixture
) -> None:
    echo = {"error": {"code": 403, "message": f"token {ACCESS_TOKEN} and {SECRETS}"}}
    ads = provider(google)
    ads.keyword_data(["seo tools"], US)
    google.ads(403, echo)
    with caplog.at_level(logging.DEBUG, logger="keyflash"), pytest.raises(ProviderError) as raised:
        ads.keyword_data(["seo tools"], US)
    assert "provider_configuration" in caplog.text and "403" in caplog.text
    for secret in (ACCESS_TOKEN, *SECRETS.values()):
        assert secret not in caplog.text and secret not in str(raised.value)


def test_the_access_token_a_401_drops_is_still_scrubbed(
    google: FakeGoogleAds, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 drops the cached token, but Google's text may quote it, and it may still be valid
    (a 401 is not always a dead token): neither the 401's line nor the next token request's
    refusal quoting it may carry it (s472 case 13)."""
    echo = f"Bearer {ACCESS_TOKEN} rejected; developer-token {SECRETS['developer_token']}"
    ads = provider(google)
    ads.keyword_data(["seo tools"], US)
    google.ads(401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": echo}})
    google.token(400, {"error": "invalid_grant", "error_description": echo})
    with caplog.at_level(logging.DEBUG, logger="keyflash"):
        for _ in range(2):  # the API's 401, then the token endpoint's 400
            with pytest.raises(ProviderConfigurationError) as raised:
                ads.keyword_data(["seo tools"], US)
            assert ACCESS_TOKEN not in str(raised.value)
    logged = logged_values(caplog)
    assert "answered 401: " in logged and "refused the refresh token (HTTP 400: " in logged
    assert "Bearer *** rejected; developer-token ***" in logged
    assert ACCESS_TOKEN not in logged and ACCESS_TOKEN not in caplog.text
    assert google.paths().count("/token") == 2


@pytest.mark.parametrize("where", ["token", "ads"])
def test_logs_carry_no_form_of_the_secrets(
    google: FakeGoogleAds, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """The refresh token and client secret go URL-encoded in the token request's form body,
    which an OAuth error may quote; JSON may escape a `/` as `\\/`."""
    ads = provider(google)
    secrets = list(SECRETS.values())
    if where == "ads":
        ads.keyword_data(["seo tools"], US)  # the access token is known and cached
        secrets.append(ACCESS_TOKEN)
    for form in secret_forms(*secrets):
        caplog.clear()
        echo = f'{{"error": "invalid_request", "error_description": "got {form}."}}'.encode()
        if where == "token":
            google.token(400, echo)
        else:
            google.ads(403, echo)
        with (
            caplog.at_level(logging.DEBUG, logger="keyflash"),
            pytest.raises(ProviderConfigurationError) as raised,
        ):
            ads.keyword_data(["seo tools"], US)
        logged = logged_values(caplog)
        assert "provider_configuration" in logged and "got ***." in logged, form
        assert form not in logged and form not in caplog.text, form
        assert form not in str(raised.value), form


def test_configured_google_ads_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYWORD_API_PROVIDER", "google-ads")
    monkeypatch.setenv("GOOGLE_ADS_CLIENT_ID", "id")
    monkeypatch.setenv("GOOGLE_ADS_CUSTOMER_ID", "12-34")
    config.get_settings.cache_clear()
    reset_providers()
    assert (get_provider().key, get_provider().name) == ("google-ads", "Google Ads")
    expected = (
        "Google Ads provider missing configuration: GOOGLE_ADS_CLIENT_SECRET, "
        "GOOGLE_ADS_DEVELOPER_TOKEN, GOOGLE_ADS_REFRESH_TOKEN. Please set these environment "
        "variables."
    )
    assert configuration_error() == expected
    with pytest.raises(ProviderConfigurationError) as raised:
        get_provider().keyword_data(["seo tools"], US)
    assert str(raised.value) == expected


def test_a_customer_id_that_is_not_digits_is_configuration(google: FakeGoogleAds) -> None:
    with pytest.raises(ProviderConfigurationError, match=r"GOOGLE_ADS_CUSTOMER_ID \(10 digits\)"):
        provider(google, customer_id="my-account").keyword_data(["seo tools"], US)
    assert google.calls == []


def test_a_keyword_named_like_a_quota_error_is_just_a_keyword(google: FakeGoogleAds) -> None:
    metrics = {"avgMonthlySearches": "10"}
    google.ads(200, {"results": [{"text": "RESOURCE_EXHAUSTED", "keywordMetrics": metrics}]})
    rows = provider(google).keyword_data(["RESOURCE_EXHAUSTED"], US)
    assert rows[0]["searchVolume"] == 10
