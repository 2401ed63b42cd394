"""POST /api/billing/portal (docs/billing.md#billing-portal) against a local fake of the Stripe
API (tests/support/fake_stripe.py) reached by stripe-python over HTTP, on a real Postgres."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from devkit import events
from functions import billing_portal
from shared import config
from shared.http import stripe_sessions
from tests.support.fake_stripe import API_KEY, IN_PROGRESS, FakeStripe, serve
from tests.support.http import STYLES, Caller, Keys, Result, logged
from tests.support.stripe_events import make_pro, make_user, user

PATH = "/api/billing/portal"
PORTAL = "/v1/billing_portal/sessions"
APP_URL = "https://app.keyflash.test"
GENERIC_500 = "An unexpected error occurred"
GENERIC_503 = "Service temporarily unavailable. Please try again later."


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with serve() as fake:
        yield fake


@pytest.fixture
def billing_env(api_env: Keys, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch) -> Keys:
    for name, value in {
        "BILLING_ENABLED": "true",
        "STRIPE_SECRET_KEY": API_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
        "APP_URL": APP_URL,
        "ALLOWED_ORIGINS": "https://other.keyflash.test",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STRIPE_PRICE_PRO", raising=False)  # the portal does not need it
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture(params=STYLES)
def call(request: pytest.FixtureRequest, billing_env: Keys) -> Caller:
    """Overrides the shared fixture: every invocation style, billing configured."""
    return Caller(request.param, billing_env)


@pytest.fixture
def lambda_call(billing_env: Keys) -> Caller:
    return Caller("lambda_v2", billing_env)


def open_portal(call: Caller, user_id: str = "user_a", **headers: str) -> Result:
    return call("billing_portal", "POST", PATH, user=user_id, headers=headers or None)


def test_a_paying_user_gets_a_portal_session_for_their_customer(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    make_pro(stripe_customer_id="cus_paid")
    result = open_portal(call)
    assert result.status == 200, result.text
    [sent] = fake_stripe.created(PORTAL)
    assert sent.params == {"customer": "cus_paid", "return_url": f"{APP_URL}/search"}
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert result.json == {"url": "https://billing.stripe.com/p/session/bps_fake1"}


def test_a_former_customer_may_still_open_the_portal(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """Invoices and payment methods stay reachable after a cancellation."""
    make_user(stripe_customer_id="cus_gone", subscription_status="canceled")
    assert open_portal(lambda_call).status == 200
    assert fake_stripe.created(PORTAL)[0].params["customer"] == "cus_gone"


def test_a_customer_deleted_in_stripe_is_404_in_the_envelope_and_forgotten(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user(stripe_customer_id="cus_gone", subscription_status="canceled")
    fake_stripe.deleted_customers.add("cus_gone")
    result = open_portal(lambda_call)
    assert (result.status, result.json["message"]) == (404, stripe_sessions.NO_CUSTOMER)
    assert result.json["error"] == "Client Error"
    assert user().stripe_customer_id is None
    assert open_portal(lambda_call).status == 404  # no second call to Stripe
    assert len(fake_stripe.requests) == 1


def test_the_return_url_is_on_an_allow_listed_origin_only(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_pro()
    open_portal(lambda_call, origin="https://other.keyflash.test")
    open_portal(lambda_call, origin="https://evil.example.com")
    first, second = fake_stripe.created(PORTAL)
    assert first.params["return_url"] == "https://other.keyflash.test/search"
    assert second.params["return_url"] == f"{APP_URL}/search"


def test_a_user_who_never_paid_gets_404_in_the_envelope(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user()
    result = open_portal(call)
    assert result.status == 404
    assert result.json["message"] == stripe_sessions.NO_CUSTOMER
    assert result.json["error"] == "Client Error" and result.json["statusCode"] == 404
    assert fake_stripe.requests == []


def test_billing_off_is_503(
    call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_ENABLED", "false")
    config.get_settings.cache_clear()
    result = call("billing_portal", "POST", PATH)
    assert result.status == 503 and result.json["message"] == GENERIC_503
    assert fake_stripe.requests == []


def test_not_signed_in_is_401(call: Caller, fake_stripe: FakeStripe) -> None:
    result = call("billing_portal", "POST", PATH)
    assert result.status == 401 and result.json["message"] == "Authentication required"
    assert fake_stripe.requests == []


def test_no_secret_key_is_a_generic_500(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_pro()
    monkeypatch.delenv("STRIPE_SECRET_KEY")
    config.get_settings.cache_clear()
    with caplog.at_level(logging.ERROR, logger="keyflash"):
        result = open_portal(lambda_call)
    assert result.status == 500 and result.json["message"] == GENERIC_500
    [line] = [json.loads(r.message) for r in caplog.records if "stripe_not_configured" in r.message]
    assert line["missing"] == ["STRIPE_SECRET_KEY"]


def test_a_stripe_outage_is_503(lambda_call: Caller, fake_stripe: FakeStripe) -> None:
    make_pro()
    fake_stripe.fail_next(502, "api_error", times=2)  # the first try and its one retry
    result = open_portal(lambda_call)
    assert result.status == 503 and "retry-after" in result.headers


def test_stripe_busy_with_the_key_past_the_time_budget_is_503_logged_without_its_message(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(stripe_sessions, "CONFLICT_WAIT_S", 60.0)  # no time to wait it out
    make_pro()
    fake_stripe.fail_next(409, "idempotency_error", times=2, message=IN_PROGRESS.format(key="k"))
    with caplog.at_level(logging.INFO):
        result = open_portal(lambda_call)
    assert (result.status, result.headers["retry-after"]) == (503, "60"), result.text
    assert result.json["message"] == GENERIC_503
    [line] = logged(caplog, "stripe_request_failed")
    assert (line["error"], line["httpStatus"]) == ("APIError", 409)
    assert all("in-progress" not in r.getMessage() for r in caplog.records)


def test_too_little_time_left_in_the_invocation_is_503_without_calling_stripe(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before Stripe used most of the invocation: Stripe is not asked, the client
    gets our 503 rather than the platform's bare timeout (docs/billing.md)."""
    monkeypatch.setenv("PROVIDER_DEADLINE_MARGIN_S", "3")
    config.get_settings.cache_clear()
    make_pro()
    headers = {"authorization": f"Bearer {lambda_call.token('user_a')}"}
    event = events.http_api_v2("POST", PATH, headers=headers)
    raw = billing_portal.lambda_handler(event, events.lambda_context("billing_portal", 3_500))
    assert raw["statusCode"] == 503, raw
    assert events.response_json(raw)["message"] == GENERIC_503
    assert fake_stripe.requests == []


def test_a_retry_meeting_our_own_attempt_still_in_progress_gets_a_session(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe slower than the per-attempt timeout: the SDK's retry reuses the key it added and
    gets 409; asked again (a portal session changes nothing), the route answers 200."""
    monkeypatch.setattr(stripe_sessions, "TIMEOUT_S", 0.5)
    stripe_sessions.client.cache_clear()
    make_pro()
    fake_stripe.hold_next_create(release_after=1)
    result = open_portal(lambda_call)
    assert result.status == 200, result.text
    assert result.json["url"].startswith("https://billing.stripe.com/")


@pytest.mark.parametrize("url", [{"url": None}, {"url": ""}, {"url": 123}, {}])
def test_a_session_without_a_usable_url_is_503_not_200(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    caplog: pytest.LogCaptureFixture,
    url: dict[str, object],
) -> None:
    make_pro()
    fake_stripe.reply_next(200, {"id": "bps_bad", "object": "billing_portal.session", **url})
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = open_portal(lambda_call)
    assert result.status == 503 and result.json["message"] == GENERIC_503, result.text
    [line] = logged(caplog, "stripe_session_without_url")
    assert line["operation"] == "billing_portal.sessions.create"


def test_ten_per_hour_per_user_failing_closed(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    config.get_settings.cache_clear()
    user_id = f"user_{uuid.uuid4().hex[:12]}"  # a fresh counter
    make_pro(user_id)
    answers = [open_portal(lambda_call, user_id).status for _ in range(10)]
    refused = open_portal(lambda_call, user_id)
    assert answers == [200] * 10
    assert refused.status == 429 and refused.json["message"] == billing_portal.RATE_LIMITED
    assert refused.headers["x-ratelimit-remaining"] == "0"
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", "open")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")  # nothing listens
    config.get_settings.cache_clear()
    from shared import redis

    redis.reset_redis()
    make_pro("user_other", stripe_customer_id="cus_other", stripe_subscription_id="sub_other")
    assert open_portal(lambda_call, "user_other").status == 429  # closed, whatever the fail-safe
