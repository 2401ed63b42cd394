"""`KEYWORD_API_PROVIDER=google-ads` end to end: the keyword search, its languages, Google's
refusals and quotas, `/api/health` and related keywords (501), with a local Google over real
HTTP (tests/support/fake_google_ads.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared import config, providers
from shared.redis import get_redis
from tests.support.fake_google_ads import FakeGoogleAds, fixture
from tests.support.http import Caller

SECRETS = ("GOCSPX-e2e-client-secret", "e2e-developer-token", "1//e2e-refresh-token")


@pytest.fixture
def google(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGoogleAds]:
    """Google Ads configured against a local Google; no rejection left by another test."""
    with FakeGoogleAds() as fake:
        env = {
            "KEYWORD_API_PROVIDER": "google-ads",
            "GOOGLE_ADS_CLIENT_ID": "e2e.apps.googleusercontent.com",
            "GOOGLE_ADS_CLIENT_SECRET": SECRETS[0],
            "GOOGLE_ADS_DEVELOPER_TOKEN": SECRETS[1],
            "GOOGLE_ADS_REFRESH_TOKEN": SECRETS[2],
            "GOOGLE_ADS_CUSTOMER_ID": "123-456-7890",
            "GOOGLE_ADS_API_BASE_URL": fake.url,
            "GOOGLE_ADS_TOKEN_URL": fake.token_url,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        forget_rejection()
        config.get_settings.cache_clear()
        providers.reset_providers()
        yield fake
    forget_rejection()
    providers.reset_providers()


def forget_rejection() -> None:
    client = get_redis()
    assert client is not None
    client.delete("provider-rejected:google-ads")


def user_id() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def search(call: Caller, keywords: list[str], **body: Any) -> Any:
    payload = {"keywords": keywords, "matchType": "phrase", "location": "DE", **body}
    return call("keywords", "POST", "/api/keywords", user=user_id(), json_body=payload)


def measured(keyword: str) -> dict[str, Any]:
    """Google's answer for one keyword (the recorded result, renamed)."""
    answer = fixture("historical_metrics")
    return {"results": [{**answer["results"][1], "text": keyword}]}


def test_a_search_is_served_and_cached_with_google_ads_figures(
    call: Caller, google: FakeGoogleAds
) -> None:
    keyword = f"keyword research {uuid.uuid4().hex[:8]}"
    google.ads(200, measured(keyword))
    first = search(call, [keyword, f"unmeasured {uuid.uuid4().hex[:8]}"], language="de")
    again = search(call, [keyword, first.json["data"][1]["keyword"]], language="de")
    assert first.status == 200, first.text
    body = first.json
    assert (body["provider"], body["mockData"], body["cached"]) == ("Google Ads", False, False)
    assert body["data"][0] == {
        "keyword": keyword, "searchVolume": 22200, "cpc": 3.0, "competition": "medium",
        "intent": "commercial", "difficulty": 41,
    }  # fmt: skip
    assert body["data"][1]["noData"] is True and body["data"][1]["searchVolume"] is None
    sent = google.calls[-1][2]
    assert sent["geoTargetConstants"] == ["geoTargetConstants/2276"]
    assert sent["language"] == "languageConstants/1001"
    assert (again.status, again.json["cached"], again.json["provider"]) == (200, True, "Google Ads")
    assert google.paths().count("/token") == 1 and len(google.calls) == 2


@pytest.mark.parametrize("language", ["ja", "pt-BR", "en-AU"])
def test_languages_google_ads_has_no_constant_for_are_400(
    call: Caller, google: FakeGoogleAds, language: str
) -> None:
    result = search(call, ["seo tools"], language=language)
    assert result.status == 400
    assert f"Language {language} is not available for keyword data" in result.text
    assert google.calls == []


def test_googles_quota_error_is_503_busy_with_its_retry_delay(
    call: Caller, google: FakeGoogleAds
) -> None:
    google.ads(429, fixture("resource_exhausted"))
    result = search(call, [f"seo tools {uuid.uuid4().hex[:8]}"])
    assert (result.status, result.json["reason"]) == (503, "provider_busy")
    assert result.headers["retry-after"] == "27"


def test_an_outage_is_502_without_googles_text(call: Caller, google: FakeGoogleAds) -> None:
    google.ads(500, fixture("internal"))
    result = search(call, [f"seo tools {uuid.uuid4().hex[:8]}"])
    assert result.status == 502
    assert "Internal error encountered" not in result.text


def test_a_broken_answer_is_502_given_back_and_not_cached(
    call: Caller, google: FakeGoogleAds, admin_conn: psycopg.Connection[Any]
) -> None:
    """A 200 not in Google's shape is a broken answer, as DataForSEO's: not 7 days of cached,
    charged no-data rows (s472 case 16)."""
    who, keyword = user_id(), f"keyword research {uuid.uuid4().hex[:8]}"
    payload = {"keywords": [keyword], "matchType": "phrase", "location": "DE"}
    google.ads(200, {"results": [{"text": keyword, "keywordMetrics": {"avgMonthlySearches":
                                                                      "lots"}}]})  # fmt: skip
    failed = call("keywords", "POST", "/api/keywords", user=who, json_body=payload)
    google.ads(200, measured(keyword))
    served = call("keywords", "POST", "/api/keywords", user=who, json_body=payload)
    assert (failed.status, failed.json["error"]) == (502, "Bad Gateway")
    assert "lots" not in failed.text
    assert served.status == 200 and served.json["cached"] is False
    assert served.json["data"][0]["searchVolume"] == 22200
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s', (who,)
    ).fetchone()
    assert row == (1, 1)  # only the served search counts


def test_a_rejected_developer_token_is_configuration_shown_by_health(
    call: Caller, google: FakeGoogleAds
) -> None:
    google.ads(403, fixture("developer_token_not_approved"))
    result = search(call, [f"seo tools {uuid.uuid4().hex[:8]}"])
    health = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")
    assert health["healthy"] is False
    assert health["details"]["name"] == "Google Ads"
    assert "Google Ads API answered 403" in health["details"]["configError"]
    assert "GOOGLE_ADS_DEVELOPER_TOKEN" in health["details"]["configError"]
    shown = json.dumps(health) + result.text
    assert not any(secret in shown for secret in SECRETS)


def test_health_keeps_showing_the_breaker_while_the_account_is_rejected(
    call: Caller, google: FakeGoogleAds
) -> None:
    """A rejection is shown for 5 minutes; the breaker's state must not vanish meanwhile
    (s472 case 15)."""
    google.ads(403, fixture("developer_token_not_approved"))
    search(call, [f"seo tools {uuid.uuid4().hex[:8]}"])
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider["healthy"] is False
    assert provider["error"].endswith("the provider rejected the account")
    assert "Google Ads API answered 403" in provider["details"]["configError"]
    assert provider["details"]["circuitBreaker"] == {
        "healthy": True, "state": "CLOSED", "failures": 0, "successes": 0,
    }  # fmt: skip
    google.ads(500, fixture("internal"))
    for _ in range(5):
        assert search(call, [f"seo tools {uuid.uuid4().hex[:8]}"]).status == 502
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider["error"].endswith("the provider rejected the account")
    assert provider["details"]["circuitBreaker"]["state"] == "OPEN"
    assert provider["details"]["circuitBreaker"]["healthy"] is False
    assert "Circuit breaker is OPEN" in provider["details"]["circuitBreakerError"]


def test_a_configured_google_ads_is_healthy_and_shows_its_breaker(
    call: Caller, google: FakeGoogleAds
) -> None:
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider["healthy"] is True
    assert provider["details"]["name"] == "Google Ads"
    assert provider["details"]["circuitBreaker"]["state"] == "CLOSED"
    assert google.calls == []  # health never calls Google


def test_google_ads_without_credentials_is_unhealthy_naming_them(
    call: Caller, google: FakeGoogleAds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_ADS_REFRESH_TOKEN")
    monkeypatch.delenv("GOOGLE_ADS_DEVELOPER_TOKEN")
    config.get_settings.cache_clear()
    providers.reset_providers()
    provider = call("health", "GET", "/api/health").json["checks"]["provider"]
    assert provider == {
        "healthy": False,
        "error": "Provider not properly configured - missing required environment variables",
        "details": {
            "provider": "google-ads",
            "name": "Google Ads",
            "configError": "Google Ads provider missing configuration: "
            "GOOGLE_ADS_DEVELOPER_TOKEN, GOOGLE_ADS_REFRESH_TOKEN. "
            "Please set these environment variables.",
        },
    }
    result = search(call, [f"seo tools {uuid.uuid4().hex[:8]}"])
    assert (result.status, result.json["reason"]) == (503, "provider_not_configured")


def test_related_keywords_are_501_as_in_the_original(call: Caller, google: FakeGoogleAds) -> None:
    result = call(
        "keywords_related", "POST", "/api/keywords/related", user=user_id(),
        json_body={"keyword": f"espresso {uuid.uuid4().hex[:8]}"},
    )  # fmt: skip
    assert result.status == 501
    assert result.json["reason"] == "related_keywords_not_supported"
    assert google.calls == []
