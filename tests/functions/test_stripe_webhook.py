"""POST /api/webhooks/stripe (docs/original-app.md#post-apiwebhooksstripe, #stripe-webhook-handling,
#d4, #d5, #d11) on a real Postgres, both lanes.

Deliveries are signed with stripe-python's own helper (`WebhookSignature.
generate_signature_header`), so the function verifies exactly what Stripe would send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from devkit import events
from shared import accounts, billing, config, db, stripe_objects
from shared.clock import utcnow
from shared.db import DatabaseUnavailableError
from shared.errors import QuotaExceededError
from shared.models import UserTier
from shared.models.erased_billing_customers import ErasedBillingCustomer
from shared.models.webhook_events import WebhookEvent
from shared.quotas import Limits, usage_view
from shared.repositories import subscriptions, users, webhook_events
from shared.stripe_objects import StripeEvent
from tests.support.http import STYLES, Caller, Keys, logged
from tests.support.processes import RowLock
from tests.support.stripe_events import (
    PATH,
    SECRET,
    T0,
    checkout,
    deliver,
    invoice,
    make_pro,
    make_user,
    sign,
    stripe_event,
    subscription,
    user,
)

PRICE_PRO = "price_pro"  # tests.support.stripe_events.subscription's default price
GENERIC_500 = "An unexpected error occurred"
GENERIC_503 = "Service temporarily unavailable. Please try again later."


@pytest.fixture
def stripe_env(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("STRIPE_PRICE_PRO", PRICE_PRO)
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture(params=STYLES)
def call(request: pytest.FixtureRequest, stripe_env: Keys) -> Caller:
    """Overrides the shared fixture: all three invocation styles, configured for billing."""
    return Caller(request.param, stripe_env)


@pytest.fixture
def lambda_call(stripe_env: Keys) -> Caller:
    """One style is enough where the effect, not the transport, is under test."""
    return Caller("lambda_v2", stripe_env)


def ledger(event_id: str) -> WebhookEvent | None:
    return db.run(lambda conn: webhook_events.get(conn, event_id))


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- the contract: order of checks, status codes, bodies, headers ---------------------------


def test_billing_off_is_503_and_nothing_is_recorded(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_ENABLED", "false")
    config.get_settings.cache_clear()
    event = stripe_event("checkout.session.completed", checkout())
    result = deliver(call, event)
    assert result.status == 503
    assert result.json["message"] == GENERIC_503 and result.headers["retry-after"] == "60"
    assert ledger(event["id"]) is None


def test_a_missing_secret_is_a_503_whose_log_names_the_setting(
    call: Caller, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment without the secret is not ready for events: 503 (Stripe retries it once the
    setting is there), the generic text, and the log says which setting, never a value."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "")
    config.get_settings.cache_clear()
    event = stripe_event("checkout.session.completed", checkout())
    with caplog.at_level(logging.ERROR, logger="keyflash"):
        result = deliver(call, event)
    assert (result.status, result.json["message"]) == (503, GENERIC_503)
    assert (result.json["error"], result.headers["retry-after"]) == ("Service Unavailable", "60")
    named = "stripe_webhook_not_configured"
    [line] = [json.loads(r.message) for r in caplog.records if named in r.message]
    assert line["missing"] == ["STRIPE_WEBHOOK_SECRET"]
    assert line["requestId"] == result.headers["x-request-id"]
    assert ledger(event["id"]) is None


def test_missing_signature_is_400(call: Caller) -> None:
    body = json.dumps(stripe_event("checkout.session.completed", checkout()))
    result = call("webhooks_stripe", "POST", PATH, body=body,
                  headers={"content-type": "application/json"})  # fmt: skip
    assert (result.status, result.json["message"]) == (400, "Missing signature")
    assert result.json["error"] == "Client Error"


@pytest.mark.parametrize(
    "tamper",
    ["wrong-secret", "altered-body", "reserialised-body", "garbage-header", "no-v1"],
)
def test_a_signature_that_does_not_match_the_raw_body_is_400(
    lambda_call: Caller, tamper: str
) -> None:
    make_user()
    event = stripe_event("checkout.session.completed", checkout())
    body = json.dumps(event)
    header = sign(body)
    if tamper == "wrong-secret":
        header = sign(body, secret="whsec_someone_else")
    elif tamper == "altered-body":
        body = body.replace("cus_1", "cus_2")
    elif tamper == "reserialised-body":  # same JSON, other bytes: Stripe signs the bytes
        body = json.dumps(event, indent=2)
    elif tamper == "garbage-header":
        header = "definitely not a signature"
    elif tamper == "no-v1":
        header = header.split(",")[0]
    headers = {"content-type": "application/json", "stripe-signature": header}
    result = lambda_call("webhooks_stripe", "POST", PATH, body=body, headers=headers)
    assert (result.status, result.json["message"]) == (400, "Invalid signature")
    assert ledger(event["id"]) is None and user().tier is UserTier.FREE


def test_signature_tolerance_is_300_seconds(lambda_call: Caller) -> None:
    make_user()
    stale = stripe_event("checkout.session.completed", checkout())
    result = deliver(lambda_call, stale, timestamp=int(time.time()) - 301)
    assert (result.status, result.json["message"]) == (400, "Invalid signature")
    assert ledger(stale["id"]) is None
    fresh = stripe_event("checkout.session.completed", checkout())
    assert deliver(lambda_call, fresh, timestamp=int(time.time()) - 290).status == 200


def test_a_signed_body_that_is_not_an_event_is_400(lambda_call: Caller) -> None:
    result = deliver(lambda_call, {"object": "event", "type": "x", "data": {}})  # no id
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")


@pytest.mark.parametrize(
    "data",
    [None, {}, {"object": None}, {"object": "sub_1"}, {"object": []}, "data"],
    ids=["no-data", "no-object", "null", "string", "array", "data-string"],
)
def test_a_signed_event_without_its_object_is_400_invalid_payload_and_not_recorded(
    lambda_call: Caller, data: Any
) -> None:
    """Every Stripe event carries `data.object`: without it, it is not an event (no retry)."""
    event = stripe_event("customer.subscription.created", {})
    if data is None:
        del event["data"]
    else:
        event["data"] = data
    result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")
    assert ledger(event["id"]) is None


@pytest.mark.parametrize(
    "body",
    ["[1, 2]", '"event"', "null", "not json", '{"id": NaN}', "[" * 100_000 + "]" * 100_000],
    ids=["array", "string", "null", "not-json", "nan", "deep"],
)
def test_a_signed_body_that_is_not_a_json_object_is_400_invalid_payload(
    lambda_call: Caller, body: str
) -> None:
    headers = {"content-type": "application/json", "stripe-signature": sign(body)}
    result = lambda_call("webhooks_stripe", "POST", PATH, body=body, headers=headers)
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")


@pytest.mark.parametrize(
    "change",
    [
        {"created": 10**12},  # milliseconds: past year 9999 as seconds
        {"created": 10**20},
        {"id": "evt_nul_\u0000"},
        {"type": "checkout.session.completed\u0000"},
        {"id": "evt_\ud800"},  # a lone surrogate, as JSON's escape writes one
    ],
)
def test_a_signed_event_postgres_cannot_hold_is_400_and_not_recorded(
    lambda_call: Caller, change: dict[str, Any]
) -> None:
    event = {**stripe_event("checkout.session.completed", checkout()), **change}
    result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")
    if "id" not in change:
        assert ledger(event["id"]) is None


def test_a_signed_object_postgres_cannot_hold_is_400_and_not_recorded(lambda_call: Caller) -> None:
    session = checkout()
    session["client_reference_id"] = "user_\u0000"
    event = stripe_event("checkout.session.completed", session)
    result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")
    assert ledger(event["id"]) is None


def test_processed_event_answers_received_with_only_platform_headers(call: Caller) -> None:
    make_user()
    result = deliver(call, stripe_event("checkout.session.completed", checkout()))
    assert (result.status, result.json) == (200, {"received": True})
    assert result.headers["api-version"] == "v1"
    assert "cache-control" not in result.headers  # the original's webhook 200 sets none


@pytest.mark.parametrize("pasted", [f"{SECRET}\n", f'"{SECRET}"', f" '{SECRET}'\r\n"])
def test_a_secret_pasted_with_a_newline_or_its_quotes_verifies_genuine_events(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    """As copied from a terminal or a .env file: not every genuine event a 400."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", pasted)
    config.get_settings.cache_clear()
    result = deliver(lambda_call, stripe_event("customer.created", {"id": "cus_pasted"}))
    assert (result.status, result.json) == (200, {"received": True}), result.text


def test_replayed_event_is_a_duplicate_and_changes_nothing(call: Caller) -> None:
    make_user()
    event = stripe_event("checkout.session.completed", checkout())
    assert deliver(call, event).json == {"received": True}
    db.run(lambda conn: users.update_user(conn, "user_a", subscription_status="tampered"))
    again = deliver(call, event)
    assert (again.status, again.json) == (200, {"received": True, "duplicate": True})
    assert user().subscription_status == "tampered"  # not applied a second time
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts) == (True, 1)


def test_unknown_type_is_acknowledged_and_recorded_without_its_data(call: Caller) -> None:
    event = stripe_event("customer.created", {"id": "cus_9", "email": "pii@example.com"})
    result = deliver(call, event)
    assert (result.status, result.json) == (200, {"received": True})
    row = ledger(event["id"])
    assert row is not None and row.processed and row.type == "customer.created"
    assert row.payload == {"id": event["id"], "type": "customer.created", "created": T0}
    assert deliver(call, event).json == {"received": True, "duplicate": True}


# --- checkout.session.completed -------------------------------------------------------------


def test_checkout_upgrades_the_user_named_in_metadata(lambda_call: Caller) -> None:
    make_user(trial_ends_at=utcnow() + timedelta(days=3))
    db.run(lambda conn: users.increment_usage(conn, "user_a", 120))
    event = stripe_event("checkout.session.completed", checkout(email="other@example.com"))
    assert deliver(lambda_call, event).status == 200
    upgraded = user()
    assert upgraded.tier is UserTier.PRO
    assert (upgraded.stripe_customer_id, upgraded.stripe_subscription_id) == ("cus_1", "sub_1")
    assert upgraded.subscription_status == "active"
    assert upgraded.subscription_event_at is None  # checkout is no state of the subscription
    assert upgraded.keyword_searches_this_month == 0  # a fresh monthly counter, as originally
    assert upgraded.keyword_searches_total == 120
    row = ledger(event["id"])
    assert row is not None and row.processed and row.error is None
    stored = row.payload or {}
    # Only what billing reads is kept: no name, no address.
    assert stored["data"]["object"] == {
        "id": "cs_test_1",
        "mode": "subscription",
        "customer": "cus_1",
        "subscription": "sub_1",
        "metadata": {"clerkUserId": "user_a"},
        "customer_email": "other@example.com",
        "customer_details": {"email": "other@example.com"},
        "payment_status": "paid",
    }


def test_checkout_falls_back_to_the_email_case_insensitively(lambda_call: Caller) -> None:
    make_user("user_b", "Buyer@Example.com")
    event = stripe_event(
        "checkout.session.completed",
        checkout(clerk_user_id=None, email="buyer@EXAMPLE.com", customer="cus_b", sub_id="sub_b"),
    )
    assert deliver(lambda_call, event).status == 200
    assert (user("user_b").tier, user("user_b").stripe_customer_id) == (UserTier.PRO, "cus_b")


def test_checkout_with_expanded_customer_and_subscription_objects(lambda_call: Caller) -> None:
    make_user()
    obj = checkout(customer=None, sub_id=None)
    obj["customer"] = {"id": "cus_x", "object": "customer", "email": "a@example.com"}
    obj["subscription"] = {"id": "sub_x", "object": "subscription", "status": "active"}
    assert deliver(lambda_call, stripe_event("checkout.session.completed", obj)).status == 200
    assert (user().stripe_customer_id, user().stripe_subscription_id) == ("cus_x", "sub_x")


@pytest.mark.parametrize(
    "obj",
    [checkout(sub_id=None, mode="payment"), checkout(customer=None)],
    ids=["one-off-payment", "no-customer"],
)
def test_checkout_without_a_live_subscription_changes_nothing(
    lambda_call: Caller, obj: dict[str, Any]
) -> None:
    make_user()
    event = stripe_event("checkout.session.completed", obj)
    assert deliver(lambda_call, event).json == {"received": True}
    assert user().tier is UserTier.FREE and user().stripe_customer_id is None
    row = ledger(event["id"])
    assert row is not None and row.processed


@pytest.mark.parametrize(
    ("kind", "payment_status"),
    [
        ("checkout.session.completed", "unpaid"),
        ("checkout.session.async_payment_failed", "unpaid"),
    ],
    ids=["payment-pending", "payment-failed"],
)
def test_a_checkout_not_paid_links_the_customer_only(
    lambda_call: Caller, kind: str, payment_status: str
) -> None:
    make_user()
    obj = checkout(clerk_user_id=None, client_reference_id="user_a", payment_status=payment_status)
    assert deliver(lambda_call, stripe_event(kind, obj)).json == {"received": True}
    linked = user()
    assert (linked.tier, linked.stripe_customer_id) == (UserTier.FREE, "cus_1")
    assert (linked.stripe_subscription_id, linked.subscription_status) == (None, None)


def test_a_delayed_payment_that_succeeds_upgrades_like_a_paid_checkout(
    lambda_call: Caller,
) -> None:
    make_user()
    obj = checkout(clerk_user_id=None, client_reference_id="user_a")
    event = stripe_event("checkout.session.async_payment_succeeded", obj)
    assert deliver(lambda_call, event).json == {"received": True}
    paid = user()
    assert (paid.tier, paid.subscription_status, paid.stripe_subscription_id) == (
        UserTier.PRO,
        "active",
        "sub_1",
    )


def test_a_free_checkout_is_provisionally_trialing(lambda_call: Caller) -> None:
    make_user()
    obj = checkout(payment_status="no_payment_required")
    deliver(lambda_call, stripe_event("checkout.session.completed", obj))
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "trialing")


# --- customer.subscription.* ----------------------------------------------------------------

NOW_PLUS_3D = timedelta(days=3)


@pytest.mark.parametrize(
    ("status", "tier"),
    [
        ("active", UserTier.PRO),
        ("trialing", UserTier.PRO),
        ("past_due", UserTier.PRO),
        ("unpaid", UserTier.FREE),
        ("canceled", UserTier.FREE),
        ("incomplete_expired", UserTier.FREE),
        ("paused", UserTier.FREE),
    ],
)
def test_subscription_updated_maps_every_status_to_one_tier(
    lambda_call: Caller, status: str, tier: UserTier
) -> None:
    trial_end = utcnow() + NOW_PLUS_3D  # a trial still running (e.g. upgraded during it)
    make_pro(trial_ends_at=trial_end, subscription_status="past_due")
    before = utcnow()
    event = stripe_event("customer.subscription.updated", subscription(status))
    assert deliver(lambda_call, event).json == {"received": True}
    after = utcnow()
    changed = user()
    assert (changed.tier, changed.subscription_status) == (tier, status)  # unpaid stays unpaid
    assert changed.subscription_plan == "Pro monthly"
    assert changed.subscription_ends_at == moment(T0 + 30 * 86400)
    assert changed.subscription_event_at == moment(T0)
    assert changed.trial_ends_at is not None
    if tier is UserTier.FREE:  # the trial is over now: no fresh trial after a downgrade
        assert before <= changed.trial_ends_at <= after
    else:
        assert changed.trial_ends_at == trial_end


def test_downgrade_keeps_a_trial_that_already_ended(lambda_call: Caller) -> None:
    ended = utcnow() - timedelta(days=40)
    make_pro(trial_ends_at=ended)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", subscription("canceled")))
    assert (user().tier, user().trial_ends_at) == (UserTier.FREE, ended)


def test_unknown_statuses_change_nothing(lambda_call: Caller) -> None:
    make_pro()
    event = stripe_event("customer.subscription.updated", subscription("some_future_status"))
    assert deliver(lambda_call, event).json == {"received": True}
    row = ledger(event["id"])
    assert row is not None and row.processed
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "active")
    assert user().subscription_event_at is None


def test_incomplete_is_stored_without_changing_the_tier(lambda_call: Caller) -> None:
    make_user(stripe_customer_id="cus_1")
    event = stripe_event("customer.subscription.created", subscription("incomplete"))
    assert deliver(lambda_call, event).json == {"received": True}
    assert (user().tier, user().subscription_status) == (UserTier.FREE, "incomplete")
    assert user().stripe_subscription_id == "sub_1"


def test_subscription_deleted_downgrades_with_the_end_time(lambda_call: Caller) -> None:
    make_pro()
    obj = subscription("canceled", ended_at=T0 + 5, canceled_at=T0)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", obj, created=T0 + 5))
    gone = user()
    assert (gone.tier, gone.subscription_status) == (UserTier.FREE, "canceled")
    assert gone.subscription_ends_at == moment(T0 + 5)  # ended_at wins over the period end
    assert gone.stripe_subscription_id == "sub_1" and gone.stripe_customer_id == "cus_1"


def test_subscription_created_finds_the_user_by_metadata_and_links_the_customer(
    lambda_call: Caller,
) -> None:
    make_user()  # checkout has not arrived yet: no customer id stored
    price = {"id": "price_9", "nickname": None, "lookup_key": "pro_yearly"}
    obj = subscription(
        "active", customer="cus_new", clerk_user_id="user_a", basil=False, price=price
    )
    assert deliver(lambda_call, stripe_event("customer.subscription.created", obj)).status == 200
    linked = user()
    assert (linked.tier, linked.stripe_customer_id) == (UserTier.PRO, "cus_new")
    assert linked.subscription_plan == "pro_yearly"  # nickname, else lookup_key, else id
    assert linked.subscription_ends_at == moment(T0 + 30 * 86400)  # pre-basil top-level field


MONTH_END, YEAR_END = T0 + 30 * 86400, T0 + 365 * 86400


def with_yearly_add_on(obj: dict[str, Any]) -> dict[str, Any]:
    """A mixed-interval subscription (basil): a yearly add-on listed before the PRO item."""
    add_on = {"id": "si_2", "price": {"id": "price_addon", "nickname": "Add-on yearly"},
              "current_period_end": YEAR_END}  # fmt: skip
    obj["items"]["data"].insert(0, add_on)
    return obj


def test_the_period_end_is_the_pro_items_not_a_later_add_ons(lambda_call: Caller) -> None:
    """`subscriptionEndsAt` (and /api/me's `endsAt`) is the PRO plan's period, whichever item
    renews last; the invoice's PRO line likewise."""
    make_pro()
    obj = with_yearly_add_on(subscription("active", period_end=MONTH_END,
                                          cancel_at_period_end=True))  # fmt: skip
    deliver(lambda_call, stripe_event("customer.subscription.updated", obj))
    assert user().subscription_ends_at == moment(MONTH_END)
    paid = invoice(period_end=MONTH_END + 30 * 86400)
    paid["lines"]["data"] = [
        {"period": {"start": T0, "end": end}, "pricing": {"price_details": {"price": price}}}
        for price, end in (("price_addon", YEAR_END + 86400), (PRICE_PRO, MONTH_END + 30 * 86400))
    ]
    deliver(lambda_call, stripe_event("invoice.paid", paid, created=T0 + 1))
    assert user().subscription_ends_at == moment(MONTH_END + 30 * 86400)


def test_without_an_item_on_our_price_the_period_end_is_the_latest_items(
    lambda_call: Caller,
) -> None:
    """Ours by its metadata only (STRIPE_PRICE_PRO changed since): no item is the PRO one."""
    make_pro()
    obj = with_yearly_add_on(subscription("active", price={"id": "price_old_pro"}))
    deliver(lambda_call, stripe_event("customer.subscription.updated", obj))
    assert user().subscription_ends_at == moment(YEAR_END)


def test_plan_falls_back_to_the_price_id(lambda_call: Caller) -> None:
    make_pro()
    obj = subscription("active", price={"id": "price_only", "nickname": None, "lookup_key": None})
    deliver(lambda_call, stripe_event("customer.subscription.updated", obj))
    assert user().subscription_plan == "price_only"


@pytest.mark.parametrize("basil", [True, False])
@pytest.mark.parametrize("price", ["price_addon", None], ids=["add-on-line", "no-price"])
def test_an_invoice_without_a_pro_line_changes_the_status_not_the_period_end(
    lambda_call: Caller, basil: bool, price: str | None
) -> None:
    """An add-on added mid-cycle is billed alone (a proration invoice with only its line): its
    year is not the PRO period, which only the PRO line (or the subscription) says. The invoice
    still says the subscription is paid."""
    make_pro()
    obj = with_yearly_add_on(subscription("past_due", period_end=MONTH_END))
    deliver(lambda_call, stripe_event("customer.subscription.updated", obj))
    proration = invoice(period_end=YEAR_END, basil=basil, price=price)
    ours = {"product": "keyflash-pro"}  # the subscription's metadata, as Stripe copies it
    if basil:
        proration["parent"]["subscription_details"]["metadata"] = ours
    else:
        proration["subscription_details"] = {"metadata": ours}
    event = stripe_event("invoice.paid", proration, created=T0 + 1)
    assert deliver(lambda_call, event).status == 200
    paid = user()
    assert (paid.tier, paid.subscription_status) == (UserTier.PRO, "active")
    assert paid.subscription_ends_at == moment(MONTH_END)


def test_the_plan_is_the_pro_items_not_a_first_add_ons(lambda_call: Caller) -> None:
    """`subscriptionPlan` follows the same item as the period end."""
    make_pro()
    obj = with_yearly_add_on(subscription("active", period_end=MONTH_END))
    deliver(lambda_call, stripe_event("customer.subscription.updated", obj))
    assert user().subscription_plan == "Pro monthly"


def plan_only(obj: dict[str, Any], plan_id: str) -> dict[str, Any]:
    """Before the Prices API (API versions of 2019 and earlier) an item names its `plan` only."""
    for item in obj["items"]["data"]:
        del item["price"]
        item["plan"] = {"id": plan_id, "object": "plan", "nickname": "Legacy plan"}
    obj["metadata"] = {}
    return obj


def test_a_plan_only_subscription_of_another_product_never_touches_the_user(
    lambda_call: Caller,
) -> None:
    """A legacy item's plan id is its price id (Stripe reads one as the other): judged alike."""
    make_user()
    ours = subscription("active", clerk_user_id="user_a", created=T0 - 900)
    deliver(lambda_call, stripe_event("customer.subscription.created", ours, created=T0 - 900))
    before = state()
    theirs = plan_only(subscription("active", sub_id="sub_b", created=T0), "price_other")
    deliver(lambda_call, stripe_event("customer.subscription.created", theirs, created=T0))
    ended = plan_only(subscription("canceled", sub_id="sub_b", created=T0), "price_other")
    deliver(lambda_call, stripe_event("customer.subscription.deleted", ended, created=T0 + 10))
    assert state() == before and before[:3] == (UserTier.PRO, "active", "sub_1")


def test_a_plan_only_subscription_on_our_price_is_ours(lambda_call: Caller) -> None:
    make_user(stripe_customer_id="cus_1")
    obj = plan_only(subscription("active", period_end=MONTH_END), PRICE_PRO)
    deliver(lambda_call, stripe_event("customer.subscription.created", obj))
    found = user()
    assert (found.tier, found.stripe_subscription_id) == (UserTier.PRO, "sub_1")
    assert (found.subscription_plan, found.subscription_ends_at) == (
        "Legacy plan",
        moment(MONTH_END),
    )


def test_a_plan_only_invoice_of_another_product_grants_nothing(lambda_call: Caller) -> None:
    make_user(stripe_customer_id="cus_1")
    theirs = invoice(sub_id="sub_b", basil=False, price=None)
    theirs["lines"]["data"][0]["plan"] = {"id": "price_other", "object": "plan"}
    assert deliver(lambda_call, stripe_event("invoice.paid", theirs)).status == 200
    assert (user().tier, user().stripe_subscription_id) == (UserTier.FREE, None)


def test_enterprise_users_keep_their_tier(lambda_call: Caller) -> None:
    make_pro(tier=UserTier.ENTERPRISE)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", subscription("canceled")))
    assert (user().tier, user().subscription_status) == (UserTier.ENTERPRISE, "canceled")


def test_pro_to_pro_keeps_the_monthly_counter(lambda_call: Caller) -> None:
    make_pro()
    db.run(lambda conn: users.increment_usage(conn, "user_a", 40))
    deliver(lambda_call, stripe_event("customer.subscription.updated", subscription("past_due")))
    deliver(
        lambda_call,
        stripe_event("customer.subscription.updated", subscription("active"), created=T0 + 1),
    )
    assert user().keyword_searches_this_month == 40


# --- the monthly counter when PRO comes back (on a fixed clock) -------------------------------

LIMITS = Limits(trial=300, pro=1000, enterprise=10_000)
DECEMBER = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 10, 13, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def process_at(when: datetime, kind: str, obj: dict[str, Any]) -> billing.Outcome:
    """An event Stripe creates at `when`, processed at once: the fixed clock for both."""
    event = stripe_event(kind, obj, created=int(when.timestamp()))
    return billing.process(StripeEvent.from_payload(event), now=when)


def search(count: int, when: datetime) -> int:
    """A personal search of `count` keywords at `when`, counted by the statement the keyword
    route runs (quota enforced); returns the month's usage after it."""
    usage = db.run(
        lambda conn: users.reserve_keywords(
            conn, "user_a", "a@example.com", count, limits=LIMITS, enforce=True, now=when
        )
    )
    return usage.this_month


def trial_user(since: datetime, used: int = 0) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com", now=since))
    if used:
        search(used, since + timedelta(hours=1))


def pays(when: datetime, sub_id: str = "sub_1", customer: str = "cus_1") -> None:
    """A paid checkout of `sub_id` and the subscription's creation, at `when`."""
    created = int(when.timestamp())
    session = checkout(sub_id=sub_id, customer=customer, created=created)
    process_at(when, "checkout.session.completed", session)
    obj = subscription(
        "active", sub_id=sub_id, customer=customer, clerk_user_id="user_a", created=created
    )
    process_at(when, "customer.subscription.created", obj)


def pro_with_usage(since: datetime, used: int) -> None:
    """user_a, in trial with 100 used, pays at `since` and then searches `used` as PRO."""
    trial_user(since - 2 * DAY, used=100)
    pays(since)
    assert search(used, since + timedelta(hours=2)) == used


@pytest.mark.parametrize("lapse", ["unpaid-then-paid", "canceled-then-resubscribed"])
def test_back_to_pro_in_the_same_month_keeps_the_months_usage(stripe_env: Keys, lapse: str) -> None:
    """PRO → FREE → PRO within one UTC month: the counter already holds this month's PRO usage,
    so the month's limit still counts it (as the original's `usage:{id}:{YYYY-MM}` key did)."""
    pro_with_usage(DECEMBER, 800)
    if lapse == "unpaid-then-paid":  # Stripe's dunning gave up, then the same invoice is paid
        process_at(DECEMBER + 2 * DAY, "customer.subscription.updated", subscription("unpaid"))
    else:
        process_at(DECEMBER + 2 * DAY, "customer.subscription.deleted", subscription("canceled"))
    lapsed = user()
    assert (lapsed.tier, lapsed.subscription_event_at) == (UserTier.FREE, DECEMBER + 2 * DAY)
    back_at = DECEMBER + 3 * DAY
    if lapse == "unpaid-then-paid":
        process_at(back_at, "invoice.paid", invoice())
    else:
        pays(back_at, sub_id="sub_2")
    back = user()
    assert (back.tier, back.subscription_status) == (UserTier.PRO, "active")
    assert back.keyword_searches_this_month == 800
    view = usage_view(back, LIMITS, back_at)
    assert (view.used, view.remaining) == (800, 200)
    assert search(200, back_at) == 1000
    with pytest.raises(QuotaExceededError):
        search(1, back_at)
    assert user().keyword_searches_total == 100 + 1000


@pytest.mark.parametrize("history", ["trial", "lapsed-last-month", "lapsed-last-month-reset"])
def test_upgrading_starts_a_fresh_monthly_counter_when_it_holds_no_pro_usage_of_this_month(
    stripe_env: Keys, history: str
) -> None:
    """A trial's first upgrade (its counter is the trial's), and a return after a lapse in an
    earlier month (lazily reset, or by the `reset_monthly_usage` cron), get the whole month."""
    if history == "trial":
        trial_user(DECEMBER - 2 * DAY, used=120)
        pays(DECEMBER - DAY)
    else:
        pro_with_usage(NOVEMBER, 800)
        process_at(NOVEMBER + 5 * DAY, "customer.subscription.updated", subscription("unpaid"))
        if history == "lapsed-last-month-reset":
            db.run(
                lambda conn: users.reset_stale_monthly_usage(
                    conn, after_id=None, limit=10, now=DECEMBER - 3 * DAY
                )
            )
        process_at(DECEMBER - DAY, "invoice.paid", invoice())
    upgraded = user()
    assert upgraded.tier is UserTier.PRO
    view = usage_view(upgraded, LIMITS, DECEMBER)
    assert (view.used, view.remaining) == (0, 1000)
    assert search(1000, DECEMBER) == 1000
    with pytest.raises(QuotaExceededError):
        search(1, DECEMBER)


# --- customer.deleted -----------------------------------------------------------------------


def deleted_customer(customer: str = "cus_1") -> dict[str, Any]:
    return {"id": customer, "object": "customer", "deleted": True}


@pytest.mark.parametrize("updated_since", [False, True])
def test_a_lapse_by_customer_deleted_is_dated_by_the_subscriptions_last_event(
    stripe_env: Keys, updated_since: bool
) -> None:
    """`customer.deleted` stamps no time: the counter is kept only when an event of the
    subscription after the counter's reset shows it PRO then; else it starts fresh, as before."""
    pro_with_usage(DECEMBER, 800)  # its creation event precedes the checkout's reset (1 ms)
    if updated_since:
        obj = subscription("active", cancel_at_period_end=True)
        process_at(DECEMBER + DAY, "customer.subscription.updated", obj)
    process_at(DECEMBER + 2 * DAY, "customer.deleted", deleted_customer())
    assert (user().tier, user().subscription_status) == (UserTier.FREE, "canceled")
    pays(DECEMBER + 3 * DAY, sub_id="sub_2", customer="cus_2")
    assert user().tier is UserTier.PRO
    assert user().keyword_searches_this_month == (800 if updated_since else 0)


def test_customer_deleted_forgets_the_customer_and_ends_its_subscription(call: Caller) -> None:
    """Stripe cancels a deleted customer's subscriptions at once; their own
    `customer.subscription.deleted`, arriving after, changes nothing and links nothing."""
    make_pro()
    event = stripe_event("customer.deleted", deleted_customer(), created=T0 + 10)
    assert deliver(call, event).json == {"received": True}
    row = user()
    assert (row.stripe_customer_id, row.tier, row.subscription_status) == (
        None,
        UserTier.FREE,
        "canceled",
    )
    assert deliver(call, event).json == {"received": True, "duplicate": True}
    ended = subscription("canceled", clerk_user_id="user_a", ended_at=T0 + 10)
    late = stripe_event("customer.subscription.deleted", ended, created=T0 + 10)
    assert deliver(call, late).status == 200
    assert (user().stripe_customer_id, user().subscription_status) == (None, "canceled")


def test_customer_deleted_after_its_subscription_ended_unlinks_it(lambda_call: Caller) -> None:
    make_pro()
    ended = subscription("canceled", clerk_user_id="user_a", ended_at=T0 + 5)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", ended, created=T0 + 5))
    event = stripe_event("customer.deleted", deleted_customer(), created=T0 + 5)
    assert deliver(lambda_call, event).status == 200
    row = user()
    assert (row.stripe_customer_id, row.tier, row.subscription_status) == (
        None,
        UserTier.FREE,
        "canceled",
    )
    assert row.subscription_ends_at == moment(T0 + 5)  # the subscription's own end kept


def test_customer_deleted_leaves_a_subscription_on_another_customer_alive(
    lambda_call: Caller,
) -> None:
    """The account keeps its old customer while its current subscription is paid through a
    customer another account holds (docs/billing.md#a-stripe-customer-shared-by-two-accounts).
    Stripe deleting the old customer cancels nothing on the other. Was: the current
    subscription ended `canceled` (final), so its later renewals never applied again."""
    make_user("user_y", "y@example.com", stripe_customer_id="cus_2")
    make_user()
    ended = subscription("canceled", clerk_user_id="user_a", created=T0 - 9, ended_at=T0 - 5)
    checkout_1 = checkout(created=T0 - 10)  # sub_1 on cus_1, the account's own customer
    for event in (
        stripe_event("checkout.session.completed", checkout_1, created=T0 - 10),
        stripe_event("customer.subscription.deleted", ended, created=T0 - 5),
    ):
        assert deliver(lambda_call, event).status == 200
    on_2 = subscription("active", sub_id="sub_2", customer="cus_2", clerk_user_id="user_a",
                        created=T0)  # fmt: skip
    assert deliver(lambda_call, stripe_event("customer.subscription.created", on_2)).status == 200
    assert (user().stripe_customer_id, user().stripe_subscription_id) == ("cus_1", "sub_2")

    gone = stripe_event("customer.deleted", deleted_customer("cus_1"), created=T0 + 10)
    assert deliver(lambda_call, gone).json == {"received": True}
    row = user()
    assert (row.tier, row.subscription_status, row.stripe_subscription_id) == (
        UserTier.PRO,
        "active",
        "sub_2",
    )
    assert row.stripe_customer_id is None  # the deleted customer is forgotten all the same
    renewal = invoice(sub_id="sub_2", customer="cus_2", clerk_user_id="user_a")
    assert deliver(lambda_call, stripe_event("invoice.payment_failed", renewal,
                                             created=T0 + 20)).status == 200  # fmt: skip
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "past_due")
    assert user("user_y").stripe_customer_id == "cus_2"


def test_customer_deleted_for_a_customer_no_account_holds_is_acknowledged(
    lambda_call: Caller,
) -> None:
    make_pro()
    event = stripe_event("customer.deleted", deleted_customer("cus_other"))
    assert deliver(lambda_call, event).json == {"received": True}
    row = ledger(event["id"])
    assert row is not None and row.processed
    assert (user().stripe_customer_id, user().tier) == ("cus_1", UserTier.PRO)


# --- invoices -------------------------------------------------------------------------------


@pytest.mark.parametrize("basil", [True, False], ids=["parent-subscription", "legacy-field"])
def test_invoice_paid_restores_an_unpaid_subscription(lambda_call: Caller, basil: bool) -> None:
    make_pro(tier=UserTier.FREE, subscription_status="unpaid")
    event = stripe_event("invoice.paid", invoice(basil=basil))
    assert deliver(lambda_call, event).status == 200
    paid = user()
    assert (paid.tier, paid.subscription_status) == (UserTier.PRO, "active")
    assert paid.subscription_ends_at == moment(T0 + 60 * 86400)


def big_invoice(size: int) -> dict[str, Any]:
    """`invoice.paid` whose line items (Stripe sends them in the event) make the body `size`
    bytes or more: many lines with long descriptions, as a usage-billed invoice has."""
    event = stripe_event("invoice.paid", invoice())
    line = {"period": {"start": T0, "end": T0 + 60 * 86400}, "description": "d" * 990}
    count = size // len(json.dumps(line)) + 1
    event["data"]["object"]["lines"]["data"] = [line] * count
    return event


def test_an_event_past_the_api_body_limit_is_processed_and_recorded(call: Caller) -> None:
    """The API's 1,000,000-byte limit is not the webhook's: Stripe retries a refused event for
    three days and then drops it, so the webhook takes whatever the platform lets in."""
    make_pro(tier=UserTier.FREE, subscription_status="unpaid")
    event = big_invoice(1_500_000)
    result = deliver(call, event)
    assert (result.status, result.json) == (200, {"received": True})
    assert user().subscription_status == "active"
    row = ledger(event["id"])
    assert row is not None and row.processed


def test_on_lambda_an_event_vercel_would_refuse_is_processed(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lambda's event may hold 6 MB; Vercel refuses past 4.5 MB itself (`devkit.platform_limits`
    imitates both): nothing of ours refuses in between."""
    monkeypatch.setenv("KEYFLASH_PLATFORM", "lambda")
    make_pro(tier=UserTier.FREE, subscription_status="unpaid")
    event = big_invoice(5_000_000)
    assert deliver(lambda_call, event).status == 200
    assert user().subscription_status == "active"


def test_invoice_paid_finds_an_unlinked_user_by_subscription_metadata(lambda_call: Caller) -> None:
    make_user()
    event = stripe_event("invoice.paid", invoice(customer="cus_z", clerk_user_id="user_a"))
    assert deliver(lambda_call, event).status == 200
    assert (user().tier, user().stripe_customer_id) == (UserTier.PRO, "cus_z")


def test_invoice_payment_failed_starts_the_grace_period(lambda_call: Caller) -> None:
    make_pro()
    deliver(lambda_call, stripe_event("invoice.payment_failed", invoice()))
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "past_due")


@pytest.mark.parametrize(
    ("stored", "invoice_sub"),
    [("unpaid", "sub_1"), ("canceled", "sub_1"), ("active", "sub_other")],
    ids=["unpaid-stays-unpaid", "canceled-stays-canceled", "another-subscription"],
)
def test_invoice_payment_failed_never_revives_or_crosses_subscriptions(
    lambda_call: Caller, stored: str, invoice_sub: str
) -> None:
    tier = UserTier.PRO if stored == "active" else UserTier.FREE
    make_pro(tier=tier, subscription_status=stored)
    event = stripe_event("invoice.payment_failed", invoice(sub_id=invoice_sub))
    assert deliver(lambda_call, event).json == {"received": True}
    assert (user().tier, user().subscription_status) == (tier, stored)
    row = ledger(event["id"])
    assert row is not None and row.processed  # stale, not failed


def test_an_invoice_without_a_subscription_is_ignored(lambda_call: Caller) -> None:
    make_pro()
    obj = invoice()
    del obj["parent"]
    deliver(lambda_call, stripe_event("invoice.paid", obj))
    assert user().subscription_event_at is None


# --- ordering -------------------------------------------------------------------------------


def test_an_older_event_never_rolls_the_subscription_back(lambda_call: Caller) -> None:
    make_pro()
    canceled = stripe_event("customer.subscription.updated", subscription("canceled"),
                            created=T0 + 10)  # fmt: skip
    late_active = stripe_event("customer.subscription.updated", subscription("active"),
                               created=T0 + 5)  # fmt: skip
    assert deliver(lambda_call, canceled).status == 200
    assert deliver(lambda_call, late_active).json == {"received": True}
    assert (user().tier, user().subscription_status) == (UserTier.FREE, "canceled")
    assert user().subscription_event_at == moment(T0 + 10)
    row = ledger(late_active["id"])
    assert row is not None and row.processed  # consumed as stale, not retried


def test_out_of_order_status_updates_settle_on_the_newest(lambda_call: Caller) -> None:
    make_pro()
    sequence = [(T0 + 20, "active"), (T0 + 10, "past_due"), (T0 + 30, "past_due"),
                (T0 + 25, "unpaid")]  # fmt: skip
    for created, status in sequence:
        deliver(lambda_call, stripe_event("customer.subscription.updated",
                                          subscription(status), created=created))  # fmt: skip
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "past_due")
    assert user().subscription_event_at == moment(T0 + 30)


def test_events_in_the_same_second_apply_in_arrival_order(lambda_call: Caller) -> None:
    make_pro()
    for status in ("past_due", "active"):
        deliver(lambda_call, stripe_event("customer.subscription.updated", subscription(status)))
    assert user().subscription_status == "active"


def test_a_canceled_subscription_is_never_revived(lambda_call: Caller) -> None:
    make_pro()
    deliver(lambda_call, stripe_event("customer.subscription.deleted", subscription("canceled")))
    deliver(lambda_call, stripe_event("invoice.paid", invoice(), created=T0 + 60))
    deliver(
        lambda_call,
        stripe_event("customer.subscription.updated", subscription("active"), created=T0 + 61),
    )
    assert (user().tier, user().subscription_status) == (UserTier.FREE, "canceled")


def test_a_new_subscription_takes_over_and_the_old_ones_end_changes_nothing(
    lambda_call: Caller,
) -> None:
    make_pro()
    new = stripe_event("checkout.session.completed", checkout(sub_id="sub_2", created=T0 + 100),
                       created=T0 + 100)  # fmt: skip
    deliver(lambda_call, new)
    old_end = stripe_event("customer.subscription.deleted", subscription("canceled"),
                           created=T0 + 200)  # fmt: skip
    deliver(lambda_call, old_end)
    kept = user()
    assert (kept.tier, kept.stripe_subscription_id, kept.subscription_status) == (
        UserTier.PRO,
        "sub_2",
        "active",
    )


def test_of_two_paid_checkouts_cancelling_the_older_keeps_the_user_pro(lambda_call: Caller) -> None:
    """docs/billing.md#checkout: both sessions of a double click paid; support cancels the older
    one (sub_1) and the user stays PRO on the newer (sub_2), whose own cancellation still ends it.
    Cancelling the newer instead is final: the older's renewals never apply again."""
    make_user()
    for sub_id, created in (("sub_1", T0), ("sub_2", T0 + 90)):
        session = checkout(sub_id=sub_id, created=created)
        deliver(lambda_call, stripe_event("checkout.session.completed", session, created=created))
        deliver(lambda_call, stripe_event("customer.subscription.created",
                                          subscription("active", sub_id=sub_id, created=created),
                                          created=created + 1))  # fmt: skip
    older_end = subscription("canceled", created=T0, ended_at=T0 + 600)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", older_end, created=T0 + 600))
    kept = user()
    assert (kept.tier, kept.stripe_subscription_id, kept.subscription_status) == (
        UserTier.PRO, "sub_2", "active",
    )  # fmt: skip
    newer_end = subscription("canceled", sub_id="sub_2", created=T0 + 90, ended_at=T0 + 900)
    deliver(lambda_call, stripe_event("customer.subscription.deleted", newer_end, created=T0 + 900))
    assert (user().tier, user().subscription_status) == (UserTier.FREE, "canceled")
    renewal = subscription("active", created=T0, period_end=T0 + 60 * 86400)
    deliver(lambda_call, stripe_event("customer.subscription.updated", renewal, created=T0 + 999))
    assert (user().tier, user().stripe_subscription_id) == (UserTier.FREE, "sub_2")


# --- another product's subscription on the same customer -------------------------------------


def other_product(status: str, *, basil: bool, **extra: Any) -> dict[str, Any]:
    """Another app's subscription on the merchant's account, on our user's customer cus_1."""
    price = {"id": "price_newsletter", "nickname": "Newsletter"}
    obj = subscription(status, sub_id="sub_x", basil=basil, price=price, created=T0 - 500, **extra)
    obj["metadata"] = {"product": "other-app"}
    return obj


def other_products_invoice(*, basil: bool) -> dict[str, Any]:
    obj = invoice(sub_id="sub_x", basil=basil)
    details = obj["parent"]["subscription_details"] if basil else obj
    details["metadata" if basil else "subscription_details"] = (
        {"product": "other-app"} if basil else {"metadata": {"product": "other-app"}}
    )
    line = obj["lines"]["data"][0]
    if basil:
        details = {"price": "price_newsletter", "product": "prod_n"}
        line["pricing"] = {"type": "price_details", "price_details": details}
    else:
        line["price"] = {"id": "price_newsletter", "object": "price"}
    return obj


@pytest.mark.parametrize("basil", [True, False])
def test_another_products_subscription_on_the_same_customer_never_touches_the_user(
    lambda_call: Caller, basil: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Stripe lets one customer hold several subscriptions; one for another product (neither
    our checkout's `product` metadata nor STRIPE_PRICE_PRO) is acknowledged and logged, and
    changes nothing: the user stays on the KeyFlash subscription and its invoices still apply."""
    ours = subscription("active", clerk_user_id="user_a", basil=basil, created=T0 - 900)
    make_user()
    deliver(lambda_call, stripe_event("customer.subscription.created", ours, created=T0 - 900))
    before = state()
    caplog.set_level(logging.INFO)
    theirs = [
        stripe_event("customer.subscription.created", other_product("active", basil=basil),
                     created=T0 - 500),
        stripe_event("invoice.paid", other_products_invoice(basil=basil), created=T0 - 400),
        stripe_event("invoice.payment_failed", other_products_invoice(basil=basil),
                     created=T0 - 300),
        stripe_event("customer.subscription.deleted", other_product("canceled", basil=basil,
                     ended_at=T0 - 100), created=T0 - 100),
    ]  # fmt: skip
    for event in theirs:
        result = deliver(lambda_call, event)
        assert (result.status, result.json) == (200, {"received": True}), result.text
        row = ledger(event["id"])
        assert row is not None and row.processed and row.error is None
    assert state() == before
    assert before[:4] == (UserTier.PRO, "active", "sub_1", "Pro monthly")
    logged = [r for r in caplog.records if "stripe_other_product" in r.getMessage()]
    assert len(logged) == len(theirs)
    assert all("user_a" not in r.getMessage() for r in logged)
    paid = stripe_event("invoice.paid", invoice(clerk_user_id="user_a", basil=basil,
                        period_end=T0 + 90 * 86400), created=T0)  # fmt: skip
    deliver(lambda_call, paid)
    assert state() == (*before[:5], moment(T0 + 90 * 86400))


def state() -> tuple[Any, ...]:
    row = user()
    return (row.tier, row.subscription_status, row.stripe_subscription_id,
            row.subscription_plan, row.trial_ends_at, row.subscription_ends_at)  # fmt: skip


def test_a_subscription_on_our_price_without_our_metadata_is_ours(lambda_call: Caller) -> None:
    """Made in Stripe's dashboard: STRIPE_PRICE_PRO says it is KeyFlash's."""
    make_user(stripe_customer_id="cus_1")
    obj = subscription("active")
    obj["metadata"] = {}
    deliver(lambda_call, stripe_event("customer.subscription.created", obj))
    assert (user().tier, user().stripe_subscription_id) == (UserTier.PRO, "sub_1")


def test_without_stripe_price_pro_a_subscription_not_marked_ours_fails_until_configured(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, the product cannot be told: failing (retried) loses nothing; ignoring could."""
    make_user(stripe_customer_id="cus_1")
    obj = subscription("active")
    obj["metadata"] = {}
    event = stripe_event("customer.subscription.created", obj)
    monkeypatch.delenv("STRIPE_PRICE_PRO")
    config.get_settings.cache_clear()
    assert deliver(lambda_call, event).status == 500
    row = ledger(event["id"])
    assert row is not None and not row.processed
    assert (row.error or "").startswith("BillingNotConfiguredError: STRIPE_PRICE_PRO unset")
    monkeypatch.setenv("STRIPE_PRICE_PRO", PRICE_PRO)
    config.get_settings.cache_clear()
    assert deliver(lambda_call, event).status == 200
    assert user().tier is UserTier.PRO


# --- erased customers -----------------------------------------------------------------------


def erased_hashes() -> list[str]:
    rows = db.run(
        lambda conn: conn.session.execute(select(ErasedBillingCustomer.customer_hash)).all()
    )
    return [row[0] for row in rows]


def test_an_erased_customers_events_are_processed_and_recorded_without_payload(
    lambda_call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    make_pro()
    with caplog.at_level(logging.INFO, logger="keyflash"):
        db.transaction(lambda conn: accounts.erase(conn, "user_a"))  # as Clerk's user.deleted does
    assert erased_hashes() == [subscriptions.customer_hash("cus_1")]
    erased_log = [r.getMessage() for r in caplog.records if "erased_with_live" in r.getMessage()]
    assert len(erased_log) == 1 and '"status":"active"' in erased_log[0]
    assert "cus_1" not in erased_log[0] and "user_a" not in erased_log[0]

    caplog.clear()
    event = stripe_event("invoice.paid", invoice(clerk_user_id="user_a"), created=T0 + 30 * 86400)
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = deliver(lambda_call, event)
    assert (result.status, result.json) == (200, {"received": True})
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.payload, row.error) == (True, None, None)
    warned = [r.getMessage() for r in caplog.records if "erased_customer" in r.getMessage()]
    assert len(warned) == 1 and event["id"] in warned[0] and "cus_1" not in warned[0]
    assert deliver(lambda_call, event).json == {"received": True, "duplicate": True}
    # Another unknown customer still waits for its checkout (retried).
    other = stripe_event("invoice.paid", invoice(customer="cus_unknown"))
    assert deliver(lambda_call, other).status == 500


def test_refused_erasure_and_erasure_without_a_customer_remember_nothing(
    lambda_call: Caller,
) -> None:
    make_pro()
    refused = lambda_call("me", "DELETE", "/api/me", user="user_a")
    assert refused.status == 409  # a live subscription: DELETE /api/me refuses, nothing kept
    make_user("user_b", "b@example.com")
    assert lambda_call("me", "DELETE", "/api/me", user="user_b").status == 200
    assert erased_hashes() == []


def mentioning(*values: str) -> list[str]:
    """Ids of ledger rows whose payload or error holds one of `values`."""
    rows = db.run(
        lambda conn: conn.session.execute(
            select(WebhookEvent.id, WebhookEvent.payload, WebhookEvent.error)
        ).all()
    )
    return [
        row[0] for row in rows if any(value in f"{json.dumps(row[1])} {row[2]}" for value in values)
    ]


@pytest.mark.parametrize("erasure", ["delete-me", "clerk"])
def test_a_checkout_completed_after_its_user_was_erased_is_handled_as_erased(
    lambda_call: Caller, caplog: pytest.LogCaptureFixture, erasure: str
) -> None:
    """The account went before any customer was linked to it (DELETE /api/me, or Clerk's
    user.deleted), so the erasure remembered no customer: the account's tombstone says the
    user id was erased. Was: 500 on every delivery, the payload kept, ids in the error."""
    make_user()
    if erasure == "delete-me":
        assert lambda_call("me", "DELETE", "/api/me", user="user_a").status == 200
    else:
        db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    assert erased_hashes() == []
    obj = checkout(email="a@example.com", client_reference_id="user_a")
    event = stripe_event("checkout.session.completed", obj)
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = deliver(lambda_call, event)
    assert (result.status, result.json) == (200, {"received": True})
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.payload, row.error) == (True, None, None)
    warned = [r for r in caplog.records if "stripe_event_for_erased_customer" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert event["id"] in warned[0].getMessage() and "cus_1" not in warned[0].getMessage()
    assert erased_hashes() == [subscriptions.customer_hash("cus_1")]  # its later events too
    later = stripe_event("customer.subscription.created", subscription("active"))
    assert deliver(lambda_call, later).json == {"received": True}
    row = ledger(later["id"])
    assert row is not None and (row.processed, row.payload) == (True, None)
    assert deliver(lambda_call, event).json == {"received": True, "duplicate": True}
    assert mentioning("user_a", "a@example.com", "cus_1", "sub_1") == []
    assert db.run(lambda conn: users.get(conn, "user_a")) is None  # nobody was brought back


def test_a_checkout_for_a_user_id_never_seen_still_fails_until_the_user_exists(
    lambda_call: Caller,
) -> None:
    """A mistake, or a checkout racing the user's first sign-in: no tombstone, so it is not an
    erasure. Retried as before; the ledger's error names the kinds of key tried, no values."""
    make_user("user_gone", "gone@example.com")
    db.transaction(lambda conn: accounts.erase(conn, "user_gone"))  # tombstones exist, not hers
    obj = checkout(clerk_user_id="user_new", email="new@example.com", customer="cus_new")
    event = stripe_event("checkout.session.completed", obj)
    first = deliver(lambda_call, event)
    assert (first.status, first.json["message"]) == (500, GENERIC_500)
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts) == (False, 1)
    assert row.error == (
        "BillingUserNotFoundError: no user for checkout.session.completed (tried: id)"
    )
    assert row.payload is not None  # what the retry runs from
    assert erased_hashes() == []

    make_user("user_new", "new@example.com")
    second = deliver(lambda_call, event)
    assert (second.status, second.json) == (200, {"received": True})
    assert (user("user_new").tier, user("user_new").stripe_customer_id) == (UserTier.PRO, "cus_new")


def test_an_erased_accounts_checkout_never_falls_back_to_the_emails_owner(
    lambda_call: Caller,
) -> None:
    """The account (a placeholder email, so Stripe asked for one) typed another account's
    address, then was erased before the webhook landed. Was: the session was applied to the
    address's owner, with the erased id kept in the ledger."""
    make_user("user_x", "x@example.com")
    make_user()
    assert lambda_call("me", "DELETE", "/api/me", user="user_a").status == 200
    obj = checkout(email="x@example.com", client_reference_id="user_a", customer="cus_new")
    event = stripe_event("checkout.session.completed", obj)
    assert deliver(lambda_call, event).json == {"received": True}
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.payload, row.error) == (True, None, None)
    x = user("user_x")
    assert (x.tier, x.stripe_customer_id, x.stripe_subscription_id) == (UserTier.FREE, None, None)
    assert mentioning("user_a") == []


def test_an_event_naming_a_user_id_never_seen_never_falls_back_to_the_customer_or_email(
    lambda_call: Caller,
) -> None:
    """Named ids come first and alone: an unknown one is a failure, retried until the user
    exists. Was: applied to the customer's holder (the newer subscription taking it over) or
    to the email's owner."""
    make_pro()  # user_a holds cus_1
    make_user("user_x", "x@example.com")
    named = subscription("active", sub_id="sub_new", clerk_user_id="user_new", created=T0 + 100)
    on_a = stripe_event("customer.subscription.created", named, created=T0 + 100)
    session = checkout(clerk_user_id="user_new", email="x@example.com", customer="cus_x",
                       sub_id="sub_x", created=T0 + 50)  # fmt: skip
    by_x = stripe_event("checkout.session.completed", session, created=T0 + 50)
    for event in (on_a, by_x):
        result = deliver(lambda_call, event)
        assert (result.status, result.json["message"]) == (500, GENERIC_500)
        row = ledger(event["id"])
        assert row is not None and row.error == (
            f"BillingUserNotFoundError: no user for {event['type']} (tried: id)"
        )
    a = user()
    assert (a.tier, a.subscription_status, a.stripe_subscription_id) == (
        UserTier.PRO,
        "active",
        "sub_1",
    )
    x = user("user_x")
    assert (x.tier, x.stripe_customer_id) == (UserTier.FREE, None)

    make_user("user_new", "new@example.com")
    assert billing.process_recorded(by_x["id"]) is billing.Outcome.APPLIED
    assert billing.process_recorded(on_a["id"]) is billing.Outcome.APPLIED
    new = user("user_new")
    assert (new.tier, new.stripe_subscription_id, new.stripe_customer_id) == (
        UserTier.PRO,
        "sub_new",
        "cus_x",
    )
    assert user().stripe_subscription_id == "sub_1"


# --- a Stripe customer shared by two accounts --------------------------------------------------
# Account A holds cus_shared; account B checks out as that same customer (made in Stripe's
# dashboard, or any way Stripe allows). Everything applies to the account an event names; the
# customer stays A's (the unique index), and each event that would have linked it to B says so.

SHARED = "cus_shared"


def make_holder() -> None:
    """A: PRO on sub_a, holding the shared customer (its subscription created before sub_b)."""
    make_pro("user_a", stripe_customer_id=SHARED, stripe_subscription_id="sub_a",
             subscription_created_at=moment(T0 - 86400))  # fmt: skip


def holder_untouched() -> None:
    a = user("user_a")
    assert (a.tier, a.subscription_status, a.stripe_subscription_id, a.stripe_customer_id) == (
        UserTier.PRO,
        "active",
        "sub_a",
        SHARED,
    )


def shared_warnings(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    found = [line for line in lines if line["event"] == "stripe_customer_shared"]
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if "stripe_customer_shared" in r.getMessage())  # fmt: skip
    return found


def b_checkout(**extra: Any) -> dict[str, Any]:
    return checkout(clerk_user_id="user_b", client_reference_id="user_b", email="b@example.com",
                    customer=SHARED, sub_id="sub_b", created=T0, **extra)  # fmt: skip


def b_subscription(status: str, **extra: Any) -> dict[str, Any]:
    return subscription(status, sub_id="sub_b", customer=SHARED, clerk_user_id="user_b",
                        created=T0, **extra)  # fmt: skip


def test_a_checkout_as_another_accounts_customer_upgrades_the_account_it_names(
    call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: B's update wrote the customer A holds → unique violation → 500 on every retry, and
    B, who paid, never became PRO."""
    make_holder()
    make_user("user_b", "b@example.com")
    event = stripe_event("checkout.session.completed", b_checkout())
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = deliver(call, event)
    assert (result.status, result.json) == (200, {"received": True})
    b = user("user_b")
    assert (b.tier, b.subscription_status, b.stripe_subscription_id) == (
        UserTier.PRO,
        "active",
        "sub_b",
    )
    assert b.stripe_customer_id is None  # the customer stays A's
    holder_untouched()
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.error) == (True, None)
    warned = shared_warnings(caplog)
    assert [(w["eventId"], w["customer"]) for w in warned] == [(event["id"], SHARED)]
    assert "b@example.com" not in json.dumps(warned) and "user_b" not in json.dumps(warned)
    assert deliver(call, event).json == {"received": True, "duplicate": True}


def test_the_shared_customers_events_for_the_other_subscription_change_only_its_account(
    lambda_call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """B's subscription and invoice events name B in their metadata (our checkout puts it on
    the subscription). Was: looked up by customer first, they found A and applied to A's row,
    sub_b (newer, PRO) taking A's subscription over."""
    make_holder()
    make_user("user_b", "b@example.com")
    steps: list[tuple[dict[str, Any], tuple[UserTier, str]]] = [
        (stripe_event("customer.subscription.created", b_subscription("active"), created=T0 + 1),
         (UserTier.PRO, "active")),
        (stripe_event("checkout.session.completed", b_checkout(), created=T0 + 2),
         (UserTier.PRO, "active")),
        (stripe_event("invoice.payment_failed",
                      invoice(sub_id="sub_b", customer=SHARED, clerk_user_id="user_b"),
                      created=T0 + 3), (UserTier.PRO, "past_due")),
        (stripe_event("invoice.paid",
                      invoice(sub_id="sub_b", customer=SHARED, clerk_user_id="user_b"),
                      created=T0 + 4), (UserTier.PRO, "active")),
        (stripe_event("customer.subscription.updated", b_subscription("past_due"),
                      created=T0 + 5), (UserTier.PRO, "past_due")),
        (stripe_event("customer.subscription.deleted",
                      b_subscription("canceled", ended_at=T0 + 6), created=T0 + 6),
         (UserTier.FREE, "canceled")),
    ]  # fmt: skip
    for event, (tier, status) in steps:
        with caplog.at_level(logging.INFO, logger="keyflash"):
            result = deliver(lambda_call, event)
        assert (result.status, result.json) == (200, {"received": True}), event["type"]
        b = user("user_b")
        assert (b.tier, b.subscription_status, b.stripe_subscription_id) == (tier, status, "sub_b")
        assert b.stripe_customer_id is None, event["type"]
        holder_untouched()
    assert user("user_b").subscription_plan == "Pro monthly"
    assert user("user_b").subscription_ends_at == moment(T0 + 6)
    # Every event that would have linked the customer to B said so; the failed payment names
    # no customer to link.
    warned = {w["eventId"] for w in shared_warnings(caplog)}
    assert warned == {e["id"] for e, _ in steps if e["type"] != "invoice.payment_failed"}


def test_the_holders_own_events_without_metadata_still_find_it_by_customer(
    lambda_call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    make_holder()
    make_user("user_b", "b@example.com")
    assert deliver(lambda_call, stripe_event("checkout.session.completed", b_checkout())).status \
        == 200  # fmt: skip
    caplog.clear()
    own = [
        stripe_event("invoice.payment_failed", invoice(sub_id="sub_a", customer=SHARED),
                     created=T0 + 10),
        stripe_event("customer.subscription.updated",
                     subscription("past_due", sub_id="sub_a", customer=SHARED), created=T0 + 11),
        stripe_event("invoice.paid", invoice(sub_id="sub_a", customer=SHARED), created=T0 + 12),
    ]  # fmt: skip
    expected = ["past_due", "past_due", "active"]
    with caplog.at_level(logging.INFO, logger="keyflash"):
        for event, status in zip(own, expected, strict=True):
            assert deliver(lambda_call, event).json == {"received": True}
            a = user("user_a")
            assert (a.tier, a.subscription_status) == (UserTier.PRO, status), event["type"]
            assert (a.stripe_subscription_id, a.stripe_customer_id) == ("sub_a", SHARED)
    b = user("user_b")
    assert (b.tier, b.subscription_status, b.stripe_subscription_id, b.stripe_customer_id) == (
        UserTier.PRO,
        "active",
        "sub_b",
        None,
    )
    assert shared_warnings(caplog) == []  # A's customer is A's own


def test_an_erased_sharers_late_events_never_fall_back_to_the_customers_holder(
    lambda_call: Caller,
) -> None:
    """B paid through A's customer, cancelled and erased the account; B had no customer of
    its own, so B's tombstone is what recognises B's late events. Was: they found A by the
    customer, kept B's id in the ledger, and sub_b (newer, PRO) took A's subscription over."""
    make_holder()
    make_user("user_b", "b@example.com")
    created = stripe_event("customer.subscription.created", b_subscription("active"), created=T0)
    ended = b_subscription("canceled", ended_at=T0 + 6)
    for event in (created, stripe_event("customer.subscription.deleted", ended, created=T0 + 6)):
        assert deliver(lambda_call, event).status == 200
    assert lambda_call("me", "DELETE", "/api/me", user="user_b").status == 200
    b_invoice = invoice(sub_id="sub_b", customer=SHARED, clerk_user_id="user_b")
    late = [
        stripe_event("invoice.paid", b_invoice, created=T0 + 5),
        stripe_event("customer.subscription.updated", b_subscription("active"), created=T0 + 4),
    ]
    for event in late:
        result = deliver(lambda_call, event)
        assert (result.status, result.json) == (200, {"received": True})
        row = ledger(event["id"])
        assert row is not None and (row.processed, row.payload, row.error) == (True, None, None)
    holder_untouched()
    assert mentioning("user_b", "b@example.com") == []


@pytest.mark.parametrize(
    ("kind", "payment_status"),
    [
        ("checkout.session.completed", "unpaid"),
        ("checkout.session.async_payment_failed", "unpaid"),
    ],
    ids=["payment-pending", "payment-failed"],
)
def test_a_checkout_not_paid_as_another_accounts_customer_links_nothing(
    call: Caller, caplog: pytest.LogCaptureFixture, kind: str, payment_status: str
) -> None:
    """Was: link_customer wrote the customer A holds → unique violation → 500 forever."""
    make_holder()
    make_user("user_b", "b@example.com")
    event = stripe_event(kind, b_checkout(payment_status=payment_status))
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = deliver(call, event)
    assert (result.status, result.json) == (200, {"received": True})
    b = user("user_b")
    assert (b.tier, b.stripe_customer_id, b.stripe_subscription_id) == (UserTier.FREE, None, None)
    holder_untouched()
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.error) == (True, None)
    assert [w["eventId"] for w in shared_warnings(caplog)] == [event["id"]]


@pytest.mark.usefixtures("wide_pool")
def test_two_events_racing_to_link_one_customer_to_two_accounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's checkout and B's, both as cus_shared, on real connections: A's has written the
    customer and not committed when B's writes it too. B's guard cannot see A's uncommitted
    row, so the unique index decides: B's statement waits for A's transaction and, once A
    commits, fails. B's event is recorded failed (without row values) and its retry applies
    to B without the customer."""
    make_user("user_a", "a@example.com")
    make_user("user_b", "b@example.com")
    a_event = StripeEvent.from_payload(stripe_event(
        "checkout.session.completed",
        checkout(clerk_user_id="user_a", customer=SHARED, sub_id="sub_a"),
    ))  # fmt: skip
    b_event = StripeEvent.from_payload(stripe_event("checkout.session.completed", b_checkout()))
    original = subscriptions.apply_change
    a_written, release = threading.Event(), threading.Event()
    a_backend: list[int] = []

    def hold_a(conn: Any, user_id: str, *args: Any, **kwargs: Any) -> Any:
        applied = original(conn, user_id, *args, **kwargs)
        if user_id == "user_a":  # A's customer is written, its transaction still open
            a_backend.append(conn.session.execute(text("select pg_backend_pid()")).scalar_one())
            a_written.set()
            assert release.wait(30)
        return applied

    monkeypatch.setattr(subscriptions, "apply_change", hold_a)

    def waiting_on_a() -> bool:
        query = text(
            "select count(*) from pg_stat_activity where :pid = any(pg_blocking_pids(pid))"
        )
        count = db.run(lambda conn: conn.session.execute(query, {"pid": a_backend[0]}).scalar())
        return bool(count)

    with ThreadPoolExecutor(max_workers=2) as pool:
        a_done = pool.submit(billing.process, a_event)
        assert a_written.wait(30)
        b_done = pool.submit(billing.process, b_event)
        deadline = time.monotonic() + 30
        while not waiting_on_a():  # B's UPDATE blocked on A's uncommitted index entry
            assert time.monotonic() < deadline, "B's write never waited on A's transaction"
            assert not b_done.done(), b_done.exception()
        release.set()
        assert a_done.result() is billing.Outcome.APPLIED
        with pytest.raises(IntegrityError):
            b_done.result()
    row = ledger(b_event.id)
    assert row is not None and (row.processed, row.attempts) == (False, 1)
    assert (row.error or "").startswith("UniqueViolation (SQLSTATE 23505) on users_stripe")
    assert SHARED not in (row.error or "") and "user_b" not in (row.error or "")
    assert user("user_b").tier is UserTier.FREE  # rolled back whole

    monkeypatch.setattr(subscriptions, "apply_change", original)
    assert billing.process_recorded(b_event.id) is billing.Outcome.APPLIED  # Stripe's retry
    b = user("user_b")
    assert (b.tier, b.stripe_subscription_id, b.stripe_customer_id) == (UserTier.PRO, "sub_b", None)
    a = user("user_a")
    assert (a.tier, a.stripe_subscription_id, a.stripe_customer_id) == (
        UserTier.PRO,
        "sub_a",
        SHARED,
    )


# --- the decision table (pure: no database) --------------------------------------------------

A, B = "sub_a", "sub_b"
D = subscriptions.Decision


def change(sub: str, created: int | None = None, **fields: Any) -> subscriptions.SubscriptionChange:
    values: dict[str, Any] = {"status": "active", "tier": UserTier.PRO} | fields
    created_at = None if created is None else moment(created)
    return subscriptions.SubscriptionChange(subscription_id=sub, created_at=created_at, **values)


@pytest.mark.parametrize(
    ("stored", "incoming", "event_at", "decision"),
    [
        # the first subscription: anything but a payment failure takes the user
        ((None, None, None, None), change(A), 5, D.TAKE_OVER),
        ((None, None, None, None), change(A, status="canceled", tier=UserTier.FREE), 5,
         D.TAKE_OVER),
        ((None, None, None, None), change(A, may_take_over=False), 5, D.TAKE_OVER),
        ((None, None, None, None),
         change(A, status="past_due", status_from=frozenset({"active"})), 5, D.STALE),
        # another subscription: only a newer one granting PRO, and not from an invoice
        ((A, "active", 5, 100), change(B, created=200), 1, D.TAKE_OVER),
        ((A, "active", 5, 100), change(B, created=50), 9, D.STALE),
        ((A, "active", 5, 100), change(B, created=None), 9, D.STALE),
        ((A, "active", 5, 100), change(B, created=200, may_take_over=False), 9, D.STALE),
        ((A, "active", 5, 100),
         change(B, status="canceled", tier=UserTier.FREE, created=200), 9, D.STALE),
        ((A, "active", 5, None), change(B, created=200), 1, D.TAKE_OVER),
        # the current subscription: in order; older only fills; final states stay final
        ((A, "active", 5, 100), change(A), 5, D.APPLY),
        ((A, "active", 5, 100), change(A), 4, D.FILL),
        ((A, "active", 5, 100), change(A, ordered=False), 4, D.APPLY),
        ((A, "trialing", 5, 100), change(A, ordered=False, status_from=frozenset({None})), 9,
         D.FILL),
        ((A, "canceled", 5, 100), change(A), 9, D.STALE),
        ((A, "incomplete_expired", 5, 100), change(A), 9, D.STALE),
    ],
)  # fmt: skip
def test_decide(
    stored: tuple[Any, ...],
    incoming: subscriptions.SubscriptionChange,
    event_at: int,
    decision: subscriptions.Decision,
) -> None:
    sub, status, stamp, created = stored
    row = subscriptions.Stored(
        sub, status, None if stamp is None else moment(stamp),
        None if created is None else moment(created),
    )  # fmt: skip
    assert subscriptions.decide(row, incoming, moment(event_at)) is decision


# --- failures: rolled back, recorded, retried -----------------------------------------------


def test_an_event_for_an_unknown_user_fails_and_succeeds_once_the_user_exists(
    lambda_call: Caller,
) -> None:
    event = stripe_event("customer.subscription.created",
                         subscription("active", customer="cus_later"))  # fmt: skip
    first = deliver(lambda_call, event)
    assert (first.status, first.json["message"]) == (500, GENERIC_500)
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts) == (False, 1)
    assert row.error == (
        "BillingUserNotFoundError: no user for customer.subscription.created (tried: customer)"
    )
    assert row.payload is not None and row.payload["data"]["object"]["customer"] == "cus_later"

    make_pro(stripe_customer_id="cus_later", stripe_subscription_id=None,
             subscription_status=None, tier=UserTier.FREE)  # fmt: skip
    second = deliver(lambda_call, event)
    assert (second.status, second.json) == (200, {"received": True})
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts, row.error) == (True, 2, None)
    assert user().tier is UserTier.PRO


def test_a_failure_after_the_update_rolls_everything_back(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user()
    original = subscriptions.apply_change

    def apply_then_fail(*args: Any, **kwargs: Any) -> bool:
        # the user row IS updated inside the transaction…
        assert original(*args, **kwargs).decision is subscriptions.Decision.TAKE_OVER
        raise RuntimeError("injected failure with a secret value cus_1")

    monkeypatch.setattr(subscriptions, "apply_change", apply_then_fail)
    event = stripe_event("checkout.session.completed", checkout())
    failed = deliver(lambda_call, event)
    assert (failed.status, failed.json["message"]) == (500, GENERIC_500)
    untouched = user()  # …and rolled back with it
    assert (untouched.tier, untouched.stripe_customer_id) == (UserTier.FREE, None)
    assert untouched.subscription_event_at is None
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts, row.error) == (
        False,
        1,
        "RuntimeError",  # unexpected errors are stored by class only
    )
    assert deliver(lambda_call, event).status == 500  # still failing: attempt 2
    assert (ledger(event["id"]) or row).attempts == 2

    monkeypatch.setattr(subscriptions, "apply_change", original)
    fixed = deliver(lambda_call, event)
    assert (fixed.status, fixed.json) == (200, {"received": True})
    assert user().tier is UserTier.PRO
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts, row.error) == (True, 3, None)
    assert deliver(lambda_call, event).json == {"received": True, "duplicate": True}


def test_a_database_outage_answers_503_so_stripe_retries(
    lambda_call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user()

    def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise DatabaseUnavailableError("database unreachable after 3 attempt(s) at connect: x")

    monkeypatch.setattr(subscriptions, "apply_change", unavailable)
    event = stripe_event("checkout.session.completed", checkout())
    result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (503, GENERIC_503)
    assert result.headers["retry-after"] == "60"
    row = ledger(event["id"])
    assert row is not None and not row.processed
    assert (row.error or "").startswith("DatabaseUnavailableError: ")


def test_a_user_row_held_past_the_statement_timeout_answers_503_so_stripe_retries(
    lambda_call: Caller, direct_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer of the shared database (the Prisma app's transaction) holds the user's
    row: PostgreSQL cancels the event's wait at the statement timeout (57014). Was a 500."""
    make_user()
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "1000")
    config.get_settings.cache_clear()
    db.dispose_engine()
    event = stripe_event("checkout.session.completed", checkout())
    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = 'user_a'"):
        result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (503, GENERIC_503)
    assert result.headers["retry-after"] == "60"
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.error) == (
        False,
        "QueryCanceled (SQLSTATE 57014)",
    )
    assert deliver(lambda_call, event).json == {"received": True}  # Stripe's retry
    assert user().tier is UserTier.PRO


def test_a_malformed_subscription_is_recorded_as_invalid(lambda_call: Caller) -> None:
    make_pro()
    obj = subscription("active")
    del obj["status"]
    event = stripe_event("customer.subscription.updated", obj)
    assert deliver(lambda_call, event).status == 500
    row = ledger(event["id"])
    assert row is not None and row.error == (
        "InvalidEventError: customer.subscription.updated lacks or mistypes: status"
    )


YEAR_10000 = 253_402_300_800  # 10000-01-01T00:00:00Z: past what a timestamp column holds


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("current_period_end", "current_period_end"),
        ("ended_at", "ended_at"),
        ("item", "items.data.0.current_period_end"),
        ("huge", "current_period_end"),
    ],
)
def test_a_subscription_time_out_of_range_is_recorded_as_invalid(
    lambda_call: Caller, where: str, field: str
) -> None:
    """Signed, so processed and recorded like any malformed object: the ledger names the
    field, the user keeps their state, and no exception type leaks into the record."""
    make_pro()
    obj = subscription("active")
    if where == "item":
        obj["items"]["data"][0]["current_period_end"] = YEAR_10000
    elif where == "huge":
        obj["current_period_end"] = 10**30
    else:
        obj[where] = YEAR_10000
    event = stripe_event("customer.subscription.updated", obj)
    assert deliver(lambda_call, event).status == 500
    row = ledger(event["id"])
    assert row is not None and row.error == (
        f"InvalidEventError: customer.subscription.updated lacks or mistypes: {field}"
    )
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "active")


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        ("ended_at", True, "ended_at"),
        ("created", True, "created"),
        ("created", False, "created"),
        ("current_period_end", True, "current_period_end"),
        ("current_period_end", 1.5e9, "current_period_end"),
        ("item", True, "items.data.0.current_period_end"),
    ],
)
def test_a_subscription_time_that_is_not_an_integer_is_recorded_as_invalid(
    lambda_call: Caller, where: str, value: Any, field: str
) -> None:
    """Python's bool is an int: `true` must not pass for second 1 (1970), nor a float for a
    Unix time, as the event's own `created` is refused."""
    make_pro()
    obj = subscription("active", basil=where == "item")
    if where == "item":
        obj["items"]["data"][0]["current_period_end"] = value
    else:
        obj[where] = value
    event = stripe_event("customer.subscription.updated", obj)
    assert deliver(lambda_call, event).status == 500
    row = ledger(event["id"])
    assert row is not None and row.error == (
        f"InvalidEventError: customer.subscription.updated lacks or mistypes: {field}"
    )
    kept = user()
    assert (kept.tier, kept.subscription_status, kept.subscription_ends_at) == (
        UserTier.PRO,
        "active",
        None,
    )


def test_an_invoice_period_or_checkout_time_that_is_a_boolean_is_recorded_as_invalid(
    lambda_call: Caller,
) -> None:
    make_pro(stripe_customer_id="cus_1")
    paid = invoice(customer="cus_1")
    paid["lines"]["data"][0]["period"]["end"] = True
    session = checkout(created=True)
    for kind, obj, field in [
        ("invoice.paid", paid, "lines.data.0.period.end"),
        ("checkout.session.completed", session, "created"),
    ]:
        event = stripe_event(kind, obj)
        assert deliver(lambda_call, event).status == 500
        row = ledger(event["id"])
        assert (
            row is not None and row.error == f"InvalidEventError: {kind} lacks or mistypes: {field}"
        )
    assert user().subscription_ends_at is None


def test_an_invoice_period_out_of_range_is_recorded_as_invalid(lambda_call: Caller) -> None:
    make_pro(stripe_customer_id="cus_1")
    obj = invoice(customer="cus_1")
    obj["lines"]["data"][0]["period"]["end"] = YEAR_10000
    event = stripe_event("invoice.paid", obj)
    assert deliver(lambda_call, event).status == 500
    row = ledger(event["id"])
    assert row is not None and row.error == (
        "InvalidEventError: invoice.paid lacks or mistypes: lines.data.0.period.end"
    )


LONG_ID = "cus_" + "x" * 3000  # past a btree entry's limit, had it reached the unique index


@pytest.mark.parametrize(
    ("kind", "obj", "field"),
    [
        ("checkout.session.completed", lambda: checkout(customer=LONG_ID), "customer"),
        ("checkout.session.completed", lambda: checkout(sub_id=LONG_ID), "subscription"),
        ("checkout.session.completed", lambda: checkout(customer="cus 1"), "customer"),
        ("checkout.session.completed", lambda: checkout(customer=""), "customer"),
        ("customer.subscription.updated", lambda: subscription("active", sub_id=LONG_ID), "id"),
        (
            "customer.subscription.created",
            lambda: subscription("active", customer={"id": LONG_ID}, clerk_user_id="user_a"),
            "customer",
        ),
        ("invoice.paid", lambda: invoice(customer=LONG_ID), "customer"),
        (
            "invoice.paid",
            lambda: invoice(sub_id=LONG_ID),
            "parent.subscription_details.subscription",
        ),
        ("invoice.paid", lambda: invoice(sub_id=LONG_ID, basil=False), "subscription"),
        ("customer.deleted", lambda: deleted_customer(LONG_ID), "id"),
    ],
    ids=[
        "checkout-customer",
        "checkout-subscription",
        "checkout-customer-with-space",
        "checkout-customer-empty",
        "subscription-id",
        "subscription-expanded-customer",
        "invoice-customer",
        "invoice-parent-subscription",
        "invoice-legacy-subscription",
        "customer-deleted-id",
    ],
)
def test_an_id_stripe_never_issues_is_recorded_as_invalid(
    lambda_call: Caller, kind: str, obj: Callable[[], dict[str, Any]], field: str
) -> None:
    """Stripe's ids are at most 255 characters with no spaces or control characters: a longer
    one is mistyped, named in the ledger before it reaches a unique index (where PostgreSQL
    would refuse it as `ProgramLimitExceeded`), and nothing is applied."""
    make_pro()
    event = stripe_event(kind, obj())
    result = deliver(lambda_call, event)
    assert (result.status, result.json["message"]) == (500, GENERIC_500)
    row = ledger(event["id"])
    assert row is not None and row.error == f"InvalidEventError: {kind} lacks or mistypes: {field}"
    kept = user()
    assert (kept.tier, kept.stripe_customer_id, kept.stripe_subscription_id) == (
        UserTier.PRO,
        "cus_1",
        "sub_1",
    )


# --- the cron's entry point -----------------------------------------------------------------


def test_process_recorded_reruns_a_recorded_failure_from_its_stored_payload(
    lambda_call: Caller,
) -> None:
    event = stripe_event("invoice.paid", invoice(customer="cus_cron"))
    assert deliver(lambda_call, event).status == 500  # no such customer yet
    make_pro(stripe_customer_id="cus_cron", tier=UserTier.FREE, subscription_status="unpaid")
    assert billing.process_recorded(event["id"]) is billing.Outcome.APPLIED
    assert (user().tier, user().subscription_status) == (UserTier.PRO, "active")
    assert billing.process_recorded(event["id"]) is billing.Outcome.DUPLICATE
    assert deliver(lambda_call, event).json == {"received": True, "duplicate": True}
    with pytest.raises(LookupError):
        billing.process_recorded("evt_never_seen")


def test_a_ledger_row_another_writer_recorded_first_gets_the_payload_the_retry_runs_from(
    lambda_call: Caller, admin_conn: Any
) -> None:
    """Was: the Prisma app's `webhookEvent.create({data: {id, type}})` (no payload) before the
    delivery: the claim and the failure's record kept its null payload, so the retry cron could
    never run the event. A row without a payload takes the delivery's (docs/billing.md)."""
    failing = stripe_event("invoice.paid", invoice(sub_id="sub_first", customer="cus_first"))
    applied = stripe_event("customer.subscription.updated", subscription("active"))
    make_pro(tier=UserTier.FREE, subscription_status="unpaid")
    for event in (failing, applied):
        admin_conn.execute(
            "INSERT INTO webhook_events (id, type) VALUES (%s, %s)", (event["id"], event["type"])
        )
    assert deliver(lambda_call, failing).status == 500  # no such customer yet
    assert deliver(lambda_call, applied).json == {"received": True}
    for event, processed in ((failing, False), (applied, True)):
        row = ledger(event["id"])
        assert row is not None and (row.processed, row.attempts) == (processed, 2)
        assert row.payload == StripeEvent.from_payload(event).payload()
    make_pro("user_b", stripe_customer_id="cus_first", stripe_subscription_id="sub_first",
             tier=UserTier.FREE, subscription_status="unpaid")  # fmt: skip
    assert billing.process_recorded(failing["id"]) is billing.Outcome.APPLIED


def test_process_recorded_refuses_a_record_without_a_stripe_payload(stripe_env: Keys) -> None:
    db.run(lambda conn: webhook_events.mark_failed(conn, "msg_1", "user.created", None, "x",
                                                provider="clerk"))  # fmt: skip
    with pytest.raises(stripe_objects.InvalidEventError):
        billing.process_recorded("msg_1")


def test_apply_event_outcomes_without_http(stripe_env: Keys) -> None:
    make_pro()
    stale = StripeEvent.from_payload(
        stripe_event("customer.subscription.updated", subscription("active"), created=T0 - 1)
    )
    bare = {**subscription("past_due"), "items": {"object": "list", "data": []}}  # no plan, end
    newer = StripeEvent.from_payload(stripe_event("customer.subscription.updated", bare))
    older_still = StripeEvent.from_payload(
        stripe_event("customer.subscription.updated", subscription("active"), created=T0 - 2)
    )
    other = StripeEvent.from_payload(
        stripe_event("invoice.paid", invoice(sub_id="sub_replaced"), created=T0 + 1)
    )
    unknown = StripeEvent.from_payload(stripe_event("charge.refunded", {"id": "ch_1"}))
    assert db.transaction(lambda conn: billing.apply_event(conn, newer)) is billing.Outcome.APPLIED
    assert db.transaction(lambda conn: billing.apply_event(conn, stale)) is billing.Outcome.FILLED
    assert (user().subscription_status, user().subscription_plan) == ("past_due", "Pro monthly")
    assert (
        db.transaction(lambda conn: billing.apply_event(conn, older_still)) is billing.Outcome.STALE
    )
    assert db.transaction(lambda conn: billing.apply_event(conn, other)) is billing.Outcome.STALE
    assert (
        db.transaction(lambda conn: billing.apply_event(conn, unknown)) is billing.Outcome.IGNORED
    )


# --- concurrency and speed ------------------------------------------------------------------

DELIVERIES = 20


@pytest.fixture
def wide_pool(stripe_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DB_POOL_SIZE", str(DELIVERIES))
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield
    db.dispose_engine()


def lambda_delivery(event: dict[str, Any]) -> dict[str, Any]:
    """A signed delivery as API Gateway hands it to the function."""
    body = json.dumps(event)
    headers = {"content-type": "application/json", "stripe-signature": sign(body)}
    return events.http_api_v2("POST", PATH, headers=headers, body=body)


def invoke(lambda_event: dict[str, Any]) -> dict[str, Any]:
    from functions import webhooks_stripe

    response: dict[str, Any] = webhooks_stripe.lambda_handler(lambda_event, events.lambda_context())
    return response


@pytest.mark.usefixtures("wide_pool")
def test_twenty_concurrent_deliveries_apply_the_event_exactly_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_user()
    original = subscriptions.apply_change
    applied: list[int] = []
    lock = threading.Lock()

    def slow_apply(*args: Any, **kwargs: Any) -> bool:
        with lock:
            applied.append(1)
        time.sleep(0.2)  # hold the claimed row while the other deliveries arrive
        return original(*args, **kwargs)

    monkeypatch.setattr(subscriptions, "apply_change", slow_apply)
    event = stripe_event("checkout.session.completed", checkout())
    start = threading.Barrier(DELIVERIES)

    def one(_: int) -> tuple[int, Any]:
        asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum wants a loop per thread
        start.wait()
        response = invoke(lambda_delivery(event))
        return response["statusCode"], events.response_json(response)

    with ThreadPoolExecutor(max_workers=DELIVERIES) as pool:
        answers = list(pool.map(one, range(DELIVERIES)))
    assert {status for status, _ in answers} == {200}
    bodies = [body for _, body in answers]
    assert bodies.count({"received": True}) == 1
    assert bodies.count({"received": True, "duplicate": True}) == DELIVERIES - 1
    assert len(applied) == 1
    row = ledger(event["id"])
    assert row is not None and (row.processed, row.attempts) == (True, 1)
    assert user().tier is UserTier.PRO


ROUNDS = 24  # per case; each round races one erasure and two events of the user, once


def race_together(tasks: list[Callable[[], object]]) -> list[BaseException | None]:
    """Run each task on a thread (its own connection), released together; what each raised."""
    start = threading.Barrier(len(tasks))

    def run(task: Callable[[], object]) -> object:
        start.wait()
        return task()

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(run, task) for task in tasks]
    return [future.exception() for future in futures]


@pytest.mark.usefixtures("wide_pool")
@pytest.mark.parametrize("delivery", ["first", "retried"])
def test_an_erasure_racing_the_users_events_leaves_no_payload_that_names_them(
    delivery: str,
) -> None:
    """Clerk's user.deleted at the same moment as the user's checkout and subscription.created,
    on real connections, the erasure released first in half the rounds and last in the others.
    Whatever interleaving Postgres picks, every call succeeds (no deadlock) and no ledger row
    names the erased person: an event either commits before the erasure, which then clears its
    payload, or finds the user gone and is recorded without one. `retried`: each event already
    has an unprocessed row holding its payload (an earlier delivery failed)."""
    for round_ in range(ROUNDS):
        user_id, email = f"user_race_{round_}", f"race{round_}@example.com"
        customer, sub_id = f"cus_race_{round_}", f"sub_race_{round_}"
        make_user(user_id, email)
        obj = checkout(clerk_user_id=user_id, client_reference_id=user_id, email=email,
                       customer=customer, sub_id=sub_id)  # fmt: skip
        created = subscription("active", sub_id=sub_id, customer=customer, clerk_user_id=user_id)
        stripe_events = [
            StripeEvent.from_payload(stripe_event("checkout.session.completed", obj)),
            StripeEvent.from_payload(stripe_event("customer.subscription.created", created)),
        ]
        if delivery == "retried":
            for event in stripe_events:
                db.run(partial(webhook_events.mark_failed, event_id=event.id,
                               event_type=event.type, payload=event.payload(),
                               error="RuntimeError"))  # fmt: skip
        erased = accounts.ClerkUser(id=user_id)
        tasks: list[Callable[[], object]] = [
            partial(accounts.apply_clerk_event, f"msg_race_{round_}", "user.deleted", erased, None),
            *(partial(billing.process, event) for event in stripe_events),
        ]
        if round_ % 2:
            tasks.reverse()
        assert race_together(tasks) == [None] * len(tasks), round_
        assert db.run(lambda conn, u=user_id: users.get(conn, u)) is None
        for event in stripe_events:
            row = ledger(event.id)
            assert row is not None and row.processed, round_
        assert mentioning(user_id, email, customer, sub_id) == [], round_
        assert db.run(lambda conn, c=customer: subscriptions.is_erased_customer(conn, c))


def test_duplicate_delivery_latency_is_measured(stripe_env: Keys) -> None:
    """Median time of a duplicate delivery through the Lambda handler (printed, not asserted)."""
    make_user()
    delivery = lambda_delivery(stripe_event("checkout.session.completed", checkout()))
    assert events.response_json(invoke(delivery)) == {"received": True}
    for _ in range(10):  # warm: imports, the connection, prepared statements
        invoke(delivery)
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        response = invoke(delivery)
        timings.append((time.perf_counter() - started) * 1000)
        assert response["statusCode"] == 200
    lane = "pooled" if "pgbouncer=true" in config.get_settings().database_url else "direct"
    print(
        f"\nduplicate Stripe delivery via Lambda handler [{lane}]: median "
        f"{statistics.median(timings):.2f} ms, p90 "
        f"{statistics.quantiles(timings, n=10)[-1]:.2f} ms over {len(timings)} deliveries"
    )


def test_an_event_that_fails_is_logged_with_its_id_under_the_request_id(
    lambda_call: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """The 500 that makes Stripe retry is findable by the X-Request-ID Stripe's dashboard shows
    for the delivery, and by the event's id."""
    event = stripe_event("invoice.paid", invoice(customer="cus_unknown"))
    with caplog.at_level(logging.INFO, logger="keyflash"):
        result = deliver(lambda_call, event)
    assert result.status == 500
    [line] = logged(caplog, "stripe_event_failed")
    assert (line["eventId"], line["requestId"]) == (event["id"], result.headers["x-request-id"])
