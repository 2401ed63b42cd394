"""Stripe webhook deliveries for tests: event objects in Stripe's documented shapes (both API
versions' layouts), signed with stripe-python's own helper, and the users they apply to."""

from __future__ import annotations

import json
from typing import Any

import stripe

from shared import db
from shared.models import UserTier
from shared.models.users import User
from shared.repositories import users
from tests.support.http import Caller, Result

SECRET = "whsec_test_secret_for_keyflash"
PATH = "/api/webhooks/stripe"
T0 = 1_790_000_000  # an event's `created` (2026-09-21T13:33:20Z)

_counter = iter(range(1, 1_000_000))


def stripe_event(
    kind: str, obj: dict[str, Any], *, created: int = T0, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{next(_counter)}",
        "object": "event",
        "api_version": "2026-01-28.clover",
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": obj},
    }


def sign(body: str, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(
        body, secret, timestamp=timestamp
    )
    return header


def deliver(
    call: Caller,
    event: dict[str, Any],
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> Result:
    body = json.dumps(event)
    header = signature if signature is not None else sign(body, secret=secret, timestamp=timestamp)
    headers = {"content-type": "application/json", "stripe-signature": header}
    return call("webhooks_stripe", "POST", PATH, body=body, headers=headers)


def subscription(
    status: str,
    *,
    sub_id: str = "sub_1",
    customer: str | dict[str, Any] = "cus_1",
    clerk_user_id: str | None = None,
    period_end: int = T0 + 30 * 86400,
    price: dict[str, Any] | None = None,
    basil: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A subscription object; `basil`: the period end lives on the items (API ≥ 2025-03-31)."""
    item: dict[str, Any] = {
        "id": "si_1",
        "object": "subscription_item",
        "price": price or {"id": "price_pro", "nickname": "Pro monthly", "lookup_key": "pro"},
    }
    obj: dict[str, Any] = {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "metadata": {
            "product": "keyflash-pro",
            **({"clerkUserId": clerk_user_id} if clerk_user_id else {}),
        },
        "items": {"object": "list", "data": [item]},
        "cancel_at_period_end": False,
        **extra,
    }
    if basil:
        item["current_period_end"] = period_end
    else:
        obj["current_period_end"] = period_end
    return obj


def checkout(
    *,
    clerk_user_id: str | None = "user_a",
    email: str | None = None,
    customer: str | None = "cus_1",
    sub_id: str | None = "sub_1",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": "cs_test_1",
        "object": "checkout.session",
        "mode": "subscription",
        "customer": customer,
        "subscription": sub_id,
        "metadata": {"clerkUserId": clerk_user_id} if clerk_user_id else {},
        "customer_email": email,
        "customer_details": {"email": email, "name": "Ada Lovelace", "address": {"city": "London"}},
        "payment_status": "paid",
        "status": "complete",
        **extra,
    }


def invoice(
    *, sub_id: str = "sub_1", customer: str = "cus_1", period_end: int = T0 + 60 * 86400,
    basil: bool = True, clerk_user_id: str | None = None, price: str | None = "price_pro",
) -> dict[str, Any]:  # fmt: skip
    """An invoice of the subscription with one line, on `price` (None: a line naming none)."""
    line: dict[str, Any] = {"period": {"start": T0, "end": period_end}}
    if price is not None and basil:
        line["pricing"] = {"type": "price_details", "price_details": {"price": price}}
    elif price is not None:
        line["price"] = {"id": price, "object": "price"}
    obj: dict[str, Any] = {
        "id": "in_1",
        "object": "invoice",
        "customer": customer,
        "customer_email": "someone@example.com",
        "lines": {"object": "list", "data": [line]},
    }
    details = {
        "subscription": sub_id,
        "metadata": {"clerkUserId": clerk_user_id} if clerk_user_id else {},
    }
    if basil:
        obj["parent"] = {"type": "subscription_details", "subscription_details": details}
    else:
        obj["subscription"] = sub_id
    return obj


def make_user(user_id: str = "user_a", email: str = "a@example.com", **changes: Any) -> None:
    db.run(lambda conn: users.create(conn, user_id, email))
    if changes:
        db.run(lambda conn: users.update_user(conn, user_id, **changes))


def make_pro(user_id: str = "user_a", **changes: Any) -> None:
    values = {
        "tier": UserTier.PRO,
        "stripe_customer_id": "cus_1",
        "stripe_subscription_id": "sub_1",
        "subscription_status": "active",
        **changes,
    }
    make_user(user_id, f"{user_id}@example.com", **values)


def user(user_id: str = "user_a") -> User:
    found = db.run(lambda conn: users.get(conn, user_id))
    assert found is not None
    return found
