"""POST /api/checkout (docs/original-app.md#post-apicheckout, docs/billing.md#checkout) against a
local fake of the Stripe API (tests/support/fake_stripe.py) reached by stripe-python over HTTP,
on a real Postgres; the round trip ends with a signed webhook delivery making the user PRO."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from devkit import events
from functions import checkout
from shared import accounts, config, db
from shared.clock import utcnow
from shared.http import stripe_sessions
from shared.models import UserTier
from shared.models.api_usage import ApiUsage
from shared.repositories import users
from tests.support.fake_stripe import API_KEY, IN_PROGRESS, PRICE, FakeStripe, serve
from tests.support.http import STYLES, Caller, Keys, Result, logged
from tests.support.stripe_events import SECRET, deliver, make_pro, make_user, stripe_event, user

PATH = "/api/checkout"
SESSIONS = "/v1/checkout/sessions"
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
        "STRIPE_PRICE_PRO": PRICE,
        "STRIPE_API_BASE": fake_stripe.url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "APP_URL": APP_URL,
        "ALLOWED_ORIGINS": "https://other.keyflash.test",
    }.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture(params=STYLES)
def call(request: pytest.FixtureRequest, billing_env: Keys) -> Caller:
    """Overrides the shared fixture: every invocation style, billing configured."""
    return Caller(request.param, billing_env)


@pytest.fixture
def lambda_call(billing_env: Keys) -> Caller:
    return Caller("lambda_v2", billing_env)


def start(call: Caller, user_id: str = "user_a", **headers: str) -> Result:
    return call("checkout", "POST", PATH, user=user_id, headers=headers or None)


# --- the contract ---------------------------------------------------------------------------


def test_a_session_url_for_the_pro_price_with_the_user_in_both_metadata(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user(email="ada@example.com")
    result = call("checkout", "POST", PATH, user="user_a")
    assert result.status == 200, result.text
    [sent] = fake_stripe.created(SESSIONS)
    session = fake_stripe.sessions[next(iter(fake_stripe.sessions))]
    assert result.json == {"url": session["url"]}
    assert result.headers["cache-control"].startswith("private, no-cache, no-store")
    assert sent.params == {
        "mode": "subscription",
        "line_items[0][price]": PRICE,
        "line_items[0][quantity]": "1",
        "success_url": f"{APP_URL}/search?upgraded=true",
        "cancel_url": f"{APP_URL}/search?canceled=true",
        "allow_promotion_codes": "true",
        "client_reference_id": "user_a",
        "metadata[clerkUserId]": "user_a",
        "subscription_data[metadata][product]": "keyflash-pro",
        "subscription_data[metadata][clerkUserId]": "user_a",
        "customer_email": "ada@example.com",
        "expires_at": sent.params["expires_at"],  # test_a_session_expires_in_about_half_an_hour
    }
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["stripe-version"] == "2026-01-28.clover"
    assert sent.headers["idempotency-key"].startswith("kf-checkout-")


@pytest.mark.parametrize("pasted", [f"{API_KEY}\n", f'"{API_KEY}"'])
def test_a_secret_key_pasted_with_a_newline_or_its_quotes_reaches_stripe(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    """As copied from a terminal or a .env file: not a 503 "Stripe unreachable" forever."""
    monkeypatch.setenv("STRIPE_SECRET_KEY", pasted)
    config.get_settings.cache_clear()
    make_user()
    result = start(lambda_call)
    assert result.status == 200, result.text


def test_a_session_expires_in_about_half_an_hour(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """Not Stripe's default 24 hours: a second tab's session cannot stay payable for a day
    (docs/billing.md#checkout). Stripe's minimum is 30 minutes; the fake refuses less."""
    make_user()
    before = time.time()
    assert start(lambda_call).status == 200
    after = time.time()
    [sent] = fake_stripe.created(SESSIONS)
    assert before + 31 * 60 < int(sent.params["expires_at"]) <= after + 32 * 60


def test_an_existing_customer_is_reused_instead_of_the_email(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user(stripe_customer_id="cus_old", subscription_status="canceled")
    assert start(lambda_call).status == 200
    [sent] = fake_stripe.created(SESSIONS)
    assert sent.params["customer"] == "cus_old"
    assert "customer_email" not in sent.params


def test_a_customer_deleted_in_stripe_is_forgotten_and_checkout_makes_a_new_one(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user(
        email="ada@example.com", stripe_customer_id="cus_gone", subscription_status="canceled"
    )
    fake_stripe.deleted_customers.add("cus_gone")
    result = start(lambda_call)
    assert result.status == 200, result.text
    assert user().stripe_customer_id is None
    assert start(lambda_call).status == 200  # straight to a new customer now
    sent = [
        (r.params.get("customer"), r.params.get("customer_email")) for r in fake_stripe.requests
    ]
    assert sent == [("cus_gone", None), (None, "ada@example.com"), (None, "ada@example.com")]


def test_the_placeholder_email_is_never_sent_to_stripe(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """A token without an email claim provisions `{id}@keyflash.local` (original-app.md#d19)."""
    assert start(lambda_call, "user_noemail").status == 200
    [sent] = fake_stripe.created(SESSIONS)
    assert "customer_email" not in sent.params and "customer" not in sent.params
    assert sent.params["metadata[clerkUserId]"] == "user_noemail"


def test_redirects_go_to_an_allow_listed_origin_only(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user()
    start(lambda_call, origin="https://other.keyflash.test")
    start(lambda_call, origin="https://evil.example.com")
    first, second = fake_stripe.created(SESSIONS)
    assert first.params["success_url"] == "https://other.keyflash.test/search?upgraded=true"
    assert second.params["success_url"] == f"{APP_URL}/search?upgraded=true"
    assert second.params["cancel_url"] == f"{APP_URL}/search?canceled=true"


def test_billing_off_is_503_before_anything_else(
    call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BILLING_ENABLED", "false")
    config.get_settings.cache_clear()
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = call("checkout", "POST", PATH)  # not even signed in
    assert result.status == 503
    assert result.json["message"] == GENERIC_503
    assert fake_stripe.requests == []
    [line] = logged(caplog, "request_failed")
    assert (line["requestId"], line["status"], line["reason"]) == (
        result.headers["x-request-id"],
        503,
        "billing is disabled",
    )


def test_not_signed_in_is_401(call: Caller, fake_stripe: FakeStripe) -> None:
    result = call("checkout", "POST", PATH)
    assert result.status == 401
    assert result.json["message"] == "Authentication required"
    assert result.json["error"] == "Client Error"
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tier": UserTier.ENTERPRISE}, checkout.ENTERPRISE_PLAN),
        ({"subscription_status": "active"}, checkout.ALREADY_SUBSCRIBED),
        ({"subscription_status": "trialing"}, checkout.ALREADY_SUBSCRIBED),
        ({"subscription_status": "past_due"}, checkout.ALREADY_SUBSCRIBED),
    ],
)
def test_a_paying_or_enterprise_user_gets_409_not_a_second_subscription(
    lambda_call: Caller, fake_stripe: FakeStripe, changes: dict[str, object], message: str
) -> None:
    make_pro(**changes)
    result = start(lambda_call)
    assert result.status == 409
    assert result.json["message"] == message
    assert fake_stripe.requests == []


def test_a_pro_user_whose_subscription_lapsed_may_subscribe_again(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    make_pro(subscription_status="incomplete")
    assert start(lambda_call).status == 200
    assert fake_stripe.created(SESSIONS)[0].params["customer"] == "cus_1"


@pytest.mark.parametrize("missing", ["STRIPE_SECRET_KEY", "STRIPE_PRICE_PRO"])
def test_stripe_misconfigured_is_a_generic_500_and_the_log_names_the_setting(
    call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    missing: str,
) -> None:
    monkeypatch.delenv(missing)
    config.get_settings.cache_clear()
    with caplog.at_level(logging.ERROR, logger="keyflash"):
        result = start(call)
    assert result.status == 500
    assert result.json["message"] == GENERIC_500
    [line] = [json.loads(r.message) for r in caplog.records if "stripe_not_configured" in r.message]
    assert line["missing"] == [missing]
    assert line["requestId"] == result.headers["x-request-id"]
    assert fake_stripe.requests == []


def test_a_wrong_key_is_a_generic_500_and_never_logged(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "sk_test_wrong_key_that_must_not_leak"
    monkeypatch.setenv("STRIPE_SECRET_KEY", wrong)
    config.get_settings.cache_clear()
    with caplog.at_level(logging.INFO):
        result = start(lambda_call)
    assert result.status == 500
    assert wrong not in result.text
    assert all(wrong not in r.getMessage() for r in caplog.records)
    [line] = [json.loads(r.message) for r in caplog.records if "stripe_request_failed" in r.message]
    assert line["error"] == "AuthenticationError" and line["httpStatus"] == 401


@pytest.mark.parametrize(
    ("status", "error_type", "answer"),
    [(500, "api_error", 503), (429, "rate_limit_error", 503), (400, "invalid_request_error", 500)],
)
def test_stripe_failures_map_to_503_when_transient_else_500(
    lambda_call: Caller, fake_stripe: FakeStripe, status: int, error_type: str, answer: int
) -> None:
    make_user()
    fake_stripe.fail_next(status, error_type, times=2)  # the first try and its one retry
    result = start(lambda_call)
    assert result.status == answer
    assert result.json["message"] in (GENERIC_500, GENERIC_503)


def test_stripe_unreachable_is_503_logged_under_the_request_id(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_user()
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:9")  # discard: nothing listens
    config.get_settings.cache_clear()
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = start(lambda_call)
    assert result.status == 503
    assert "retry-after" in result.headers
    [line] = logged(caplog, "stripe_request_failed")
    assert line["error"] == "APIConnectionError"
    assert line["requestId"] == result.headers["x-request-id"]


def test_a_user_erased_elsewhere_since_provisioning_checks_out_as_a_fresh_account(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """This container remembers provisioning user_a; another one erased the row since."""
    make_user(stripe_customer_id="cus_before")
    assert start(lambda_call).status == 200
    db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    again = start(lambda_call)
    assert again.status == 200, again.text
    assert "customer" not in fake_stripe.created(SESSIONS)[-1].params
    assert user().stripe_customer_id is None


def test_checkout_is_rate_limited_but_not_metered_and_writes_its_usage_row(
    lambda_call: Caller, fake_stripe: FakeStripe
) -> None:
    """docs/keyword-search.md#order-of-operations-and-quotas: only the keyword search counts."""
    make_user()
    assert start(lambda_call).status == 200
    checked_out = user()
    assert (checked_out.keyword_searches_this_month, checked_out.keyword_searches_total) == (0, 0)
    rows = db.run(
        lambda conn: conn.session.scalars(
            select(ApiUsage).where(ApiUsage.user_id == "user_a")
        ).all()
    )
    assert [(r.endpoint, r.method, r.status_code) for r in rows] == [("/api/checkout", "POST", 200)]


# --- a double click makes one session -------------------------------------------------------


def test_two_quick_calls_make_one_session(lambda_call: Caller, fake_stripe: FakeStripe) -> None:
    make_user()
    first, second = start(lambda_call), start(lambda_call)
    assert first.json == second.json
    assert len(fake_stripe.requests) == 2 and len(fake_stripe.sessions) == 1
    assert len(fake_stripe.created(SESSIONS)) == 1


def test_a_double_click_while_stripe_still_creates_the_session_waits_for_it(
    lambda_call: Caller, fake_stripe: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    """The second click reaches Stripe while the first is in progress: Stripe answers its key
    409 "another in-progress request" (to the SDK's try and its retry here), and the route
    asks again after a pause and gets the first session, not a 500 (docs/billing.md#checkout)."""
    make_user()
    hold = fake_stripe.hold_next_create(release_after=2)
    with ThreadPoolExecutor(max_workers=1) as pool, caplog.at_level(logging.INFO):
        first = pool.submit(start, lambda_call)
        assert hold.arrived.wait(30)
        second = start(lambda_call)
        clicked = first.result(timeout=60)
    assert (clicked.status, second.status) == (200, 200), second.text
    assert clicked.json == second.json
    assert len(fake_stripe.created(SESSIONS)) == 1
    # created, then 409s (the SDK's try and retry; more if the held create is slow to finish
    # after its release, on a loaded machine), then the replay of the first session
    paths = [r.path for r in fake_stripe.requests]
    assert set(paths) == {SESSIONS} and len(paths) >= 4
    busy = logged(caplog, "stripe_request_in_progress")
    assert busy and {line["operation"] for line in busy} == {"checkout.sessions.create"}
    assert all("in-progress" not in r.getMessage() for r in caplog.records)


def test_a_retry_meeting_our_own_attempt_still_in_progress_waits_for_it(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe slower than the per-attempt timeout: the SDK's retry, with the same key, meets
    the first attempt still being processed (409); the route waits for it: one session, 200."""
    monkeypatch.setattr(stripe_sessions, "TIMEOUT_S", 0.5)
    stripe_sessions.client.cache_clear()
    make_user()
    fake_stripe.hold_next_create(release_after=1)
    result = start(lambda_call)
    assert result.status == 200, result.text
    [session] = fake_stripe.sessions.values()
    assert result.json == {"url": session["url"]}
    keys = {r.headers["idempotency-key"] for r in fake_stripe.requests}
    assert len(keys) == 1 and len(fake_stripe.requests) >= 3


def test_stripe_busy_with_the_key_past_the_time_budget_is_503_logged_without_its_message(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(stripe_sessions, "CONFLICT_WAIT_S", 60.0)  # no time to wait it out
    make_user()
    fake_stripe.fail_next(
        409, "idempotency_error", times=2, message=IN_PROGRESS.format(key="kf-checkout-x")
    )
    with caplog.at_level(logging.INFO):
        result = start(lambda_call)
    assert result.status == 503, result.text
    assert result.json["message"] == GENERIC_503
    assert result.headers["retry-after"] == "60"
    assert len(fake_stripe.requests) == 2  # the SDK's try and its one retry
    [line] = logged(caplog, "stripe_request_failed")
    assert (line["error"], line["httpStatus"]) == ("APIError", 409)
    assert all("in-progress" not in r.getMessage() for r in caplog.records)


def start_with_time_left(call: Caller, remaining_ms: int) -> tuple[int, Any]:
    """POST /api/checkout as Lambda runs it with `remaining_ms` left in the invocation."""
    headers = {"authorization": f"Bearer {call.token('user_a')}"}
    event = events.http_api_v2("POST", PATH, headers=headers)
    raw = checkout.lambda_handler(event, events.lambda_context("checkout", remaining_ms))
    return raw["statusCode"], events.response_json(raw)


def test_too_little_time_left_in_the_invocation_is_503_without_calling_stripe(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Less time left than the usage write's margin and one short attempt: Stripe is not
    asked, the client gets our 503 rather than the platform's bare timeout."""
    monkeypatch.setenv("PROVIDER_DEADLINE_MARGIN_S", "3")
    config.get_settings.cache_clear()
    make_user()
    status, body = start_with_time_left(lambda_call, 3_500)
    assert status == 503, body
    assert body["message"] == GENERIC_503
    assert fake_stripe.requests == []


def test_a_deleted_customers_second_create_keeps_to_the_invocations_time(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With less time left than an attempt and the SDK's retry take, each create (the deleted
    customer's first and the new customer's) is one attempt with a timeout that fits; the
    second, held by a slow Stripe, times out into our 503 instead of being retried and waited
    out past the function's end."""
    monkeypatch.setenv("PROVIDER_DEADLINE_MARGIN_S", "3")
    config.get_settings.cache_clear()
    monkeypatch.setattr(stripe_sessions, "TIMEOUT_S", 2.0)  # a full attempt: 4.5 s
    stripe_sessions.client.cache_clear()
    make_user(stripe_customer_id="cus_gone", subscription_status="canceled")
    fake_stripe.fail_next(
        400, "invalid_request_error", code="resource_missing", param="customer"
    )  # deleted in Stripe
    hold = fake_stripe.hold_next_create(release_after=1_000)  # then Stripe is slow
    try:
        # 4.4 s for Stripe (10.4 less the database's margin and PROVIDER_DEADLINE_MARGIN_S,
        # 3 s each): the second create is sent alone while 1 to 4.5 s are left, so the
        # checks before it may take up to 3.4 s on a loaded machine
        status, body = start_with_time_left(lambda_call, 10_400)
    finally:
        hold.release()
    assert status == 503, body
    assert body["message"] == GENERIC_503
    assert user().stripe_customer_id is None
    assert [r.params.get("customer") for r in fake_stripe.requests] == ["cus_gone", None]


def test_a_key_reused_with_other_parameters_is_the_generic_500_without_a_retry(
    lambda_call: Caller, fake_stripe: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    """Stripe's 400 `idempotency_error` is a bug of ours (the key covers the parameters), not
    Stripe being busy: a refusal (docs/billing.md#checkout), never waited out."""
    make_user()
    fake_stripe.fail_next(400, "idempotency_error", message="Keys for idempotent requests ...")
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = start(lambda_call)
    assert result.status == 500 and result.json["message"] == GENERIC_500
    assert len(fake_stripe.requests) == 1
    [line] = logged(caplog, "stripe_request_failed")
    assert (line["error"], line["httpStatus"]) == ("IdempotencyError", 400)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ({"url": None}, "null"),
        ({"url": ""}, "str"),
        ({"url": "javascript:alert(1)"}, "str"),
        ({"url": 123}, "int"),
        ({"url": ["https://x.test"]}, "list"),
        ({}, "missing"),
    ],
)
def test_a_session_without_a_usable_url_is_503_not_200(
    lambda_call: Caller,
    fake_stripe: FakeStripe,
    caplog: pytest.LogCaptureFixture,
    url: dict[str, Any],
    kind: str,
) -> None:
    """Our OpenAPI promises `url` as a string: an answer without one is Stripe failing."""
    make_user()
    fake_stripe.reply_next(200, {"id": "cs_bad", "object": "checkout.session", **url})
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = start(lambda_call)
    assert result.status == 503, result.text
    assert result.json["message"] == GENERIC_503 and "retry-after" in result.headers
    [line] = logged(caplog, "stripe_session_without_url")
    assert (line["operation"], line["url"]) == ("checkout.sessions.create", kind)
    assert line["requestId"] == result.headers["x-request-id"]
    assert line["stripeRequestId"].startswith("req_fake")


@pytest.mark.parametrize(
    "body", [b'{"id": "cs_cut", "object": "checkout.session", "url": "https://chec', b"<html>"]
)
def test_a_success_answer_stripe_cannot_have_meant_is_503_not_500(
    lambda_call: Caller, fake_stripe: FakeStripe, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    """A 200 whose body is not JSON (cut short by a proxy, a captive page) is Stripe failing,
    as a 5xx is: retry later, not our refusal."""
    make_user()
    fake_stripe.reply_next(200, body)
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = start(lambda_call)
    assert result.status == 503, result.text
    assert result.json["message"] == GENERIC_503 and "retry-after" in result.headers
    [line] = logged(caplog, "stripe_request_failed")
    assert (line["error"], line["httpStatus"]) == ("APIError", 200)
    assert "cs_cut" not in caplog.text


def test_the_idempotency_key_separates_users_windows_and_parameters() -> None:
    params = {"mode": "subscription", "success_url": "https://a/search?upgraded=true"}
    window = stripe_sessions.CHECKOUT_WINDOW_S

    def key_of(subject: str, params: dict[str, Any], now: float) -> str:
        return stripe_sessions.idempotency_key("kf-checkout-", subject, params, now)

    key = key_of("user_a", params, 1000 * window)
    assert key == key_of("user_a", params, 1000 * window + window - 1)
    assert key != key_of("user_b", params, 1000 * window)
    assert key != key_of("user_a", params, 1001 * window)
    other = {**params, "success_url": "https://b/search?upgraded=true"}
    assert key != key_of("user_a", other, 1000 * window)
    assert key != stripe_sessions.idempotency_key(
        "kf-org-checkout-", "user_a", params, 1000 * window
    )


# --- rate limit: 10 per hour per user, failing closed ---------------------------------------


def test_ten_per_hour_per_user_then_the_original_429(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    config.get_settings.cache_clear()
    first, other = (f"user_{uuid.uuid4().hex[:12]}" for _ in range(2))  # fresh counters
    answers = [start(lambda_call, first).status for _ in range(10)]
    refused = start(lambda_call, first)
    assert answers == [200] * 10
    assert refused.status == 429
    assert refused.json["error"] == "Client Error"
    assert refused.json["message"] == checkout.RATE_LIMITED
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert start(lambda_call, other).status == 200


def test_the_limit_fails_closed_even_when_the_fail_safe_is_open(
    lambda_call: Caller, fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("RATE_LIMIT_FAIL_SAFE", "open")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")  # nothing listens
    config.get_settings.cache_clear()
    from shared import redis

    redis.reset_redis()
    make_user()
    result = start(lambda_call)
    assert result.status == 429
    assert result.headers["retry-after"] == "60"
    assert fake_stripe.requests == []


# --- checkout → signed webhook → PRO, end to end --------------------------------------------


def test_checkout_then_the_signed_webhook_makes_the_user_pro(
    call: Caller, fake_stripe: FakeStripe
) -> None:
    make_user(email="ada@example.com", trial_ends_at=utcnow() + timedelta(days=2))
    url = call("checkout", "POST", PATH, user="user_a").json["url"]
    [session_id] = fake_stripe.sessions
    assert url.endswith(session_id)
    # The user pays on Stripe's page; Stripe creates the customer and subscription and sends
    # the session, with the metadata our checkout set, to the webhook.
    completed = fake_stripe.complete(session_id, customer="cus_new", subscription="sub_new")
    delivered = deliver(call, stripe_event("checkout.session.completed", completed))
    assert delivered.status == 200, delivered.text
    upgraded = user()
    assert upgraded.tier is UserTier.PRO
    assert upgraded.subscription_status == "active"
    assert (upgraded.stripe_customer_id, upgraded.stripe_subscription_id) == ("cus_new", "sub_new")
    # Paying now: a second checkout is refused, and the portal opens on the new customer.
    again = call("checkout", "POST", PATH, user="user_a")
    assert again.status == 409 and again.json["message"] == checkout.ALREADY_SUBSCRIBED
    portal = call("billing_portal", "POST", "/api/billing/portal", user="user_a")
    assert portal.status == 200, portal.text
    [sent] = fake_stripe.created("/v1/billing_portal/sessions")
    assert sent.params["customer"] == "cus_new"
    row = db.run(lambda conn: users.get(conn, "user_a"))
    assert row is not None and row.tier is UserTier.PRO
