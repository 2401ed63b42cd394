"""POST /api/checkout: a Stripe Checkout Session for the PRO subscription → `{url}`
(docs/original-app.md#post-apicheckout; docs/billing.md#checkout).

The original's contract: no body; billing off → 503; not signed in → 401 `Authentication
required`; 10 per hour → 429 `Too many checkout attempts. Please try again later.`; a missing
price → 500 (generic); then a subscription-mode session for STRIPE_PRICE_PRO, promotion codes
allowed, `clerkUserId` in the session's and the subscription's metadata (the webhook's first
lookup, `shared.billing`), success and cancel URLs under `/search` → 200 `{url}`.

Fixes over the original:
- a user who already pays (PRO with a live subscription) or is ENTERPRISE gets 409, not a second
  subscription;
- the user's Stripe customer is reused, and a `{id}@keyflash.local` placeholder is never sent
  as the customer's email (docs/original-app.md#d19);
- a double click makes one session: the create carries an idempotency key derived from the
  user, the session's parameters and a short time window, so Stripe answers the repeat with the
  first session;
- redirects only to an allow-listed origin; Stripe being down is 503, not 500.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared.accounts import is_placeholder
from shared.config import get_settings
from shared.http import stripe_sessions
from shared.http.app import create_app, lambda_handler
from shared.http.errors import ApiError
from shared.http.responses import ok
from shared.models import User, UserTier
from shared.repositories.subscriptions import LIVE_STATUSES

app = create_app(title="Checkout", summary="Start the PRO subscription on Stripe Checkout.")

RATE_LIMITED = "Too many checkout attempts. Please try again later."
ALREADY_SUBSCRIBED = (
    "You already have an active subscription. Manage it from the billing portal instead."
)
ENTERPRISE_PLAN = "Your plan is managed by KeyFlash. Contact support to change it."
IDEMPOTENCY_WINDOW_S = 60  # repeats within the same minute get the first session


def refusal(user: User) -> str | None:
    """Why this user must not start a subscription, or None."""
    if user.tier is UserTier.ENTERPRISE:
        return ENTERPRISE_PLAN
    if user.tier is UserTier.PRO and user.subscription_status in LIVE_STATUSES:
        return ALREADY_SUBSCRIBED
    return None


def session_params(user: User, price: str, origin: str) -> dict[str, Any]:
    """The Checkout Session: the original's, with the customer reused when there is one."""
    metadata = {"clerkUserId": user.id}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "success_url": f"{origin}/search?upgraded=true",
        "cancel_url": f"{origin}/search?canceled=true",
        "allow_promotion_codes": True,
        "client_reference_id": user.id,
        "metadata": metadata,
        "subscription_data": {"metadata": {"product": "keyflash-pro", **metadata}},
    }
    if user.stripe_customer_id:
        params["customer"] = user.stripe_customer_id
    elif not is_placeholder(user.email):
        params["customer_email"] = user.email
    return params


def idempotency_key(user_id: str, params: dict[str, Any], now: float) -> str:
    """The same user, parameters and window → the same key (Stripe keeps keys for 24 h).

    The parameters are part of it because Stripe refuses a key reused with other parameters.
    """
    window = int(now // IDEMPOTENCY_WINDOW_S)
    material = json.dumps([user_id, window, params], sort_keys=True, separators=(",", ":"))
    return "kf-checkout-" + hashlib.sha256(material.encode()).hexdigest()


@app.post(
    "/api/checkout",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Checkout", {409: "Already subscribed (PRO with a live subscription, or ENTERPRISE)"}
    ),
)
def checkout(request: Request) -> Response:
    user = stripe_sessions.caller(request, "checkout", RATE_LIMITED)
    settings = get_settings()
    config = stripe_sessions.require(
        settings,
        STRIPE_SECRET_KEY=settings.stripe_secret_key,
        STRIPE_PRICE_PRO=settings.stripe_price_pro,
    )
    conflict = refusal(user)
    if conflict is not None:
        raise ApiError(409, conflict)
    params = session_params(
        user, config["STRIPE_PRICE_PRO"], stripe_sessions.redirect_origin(request, settings)
    )
    stripe = stripe_sessions.client(settings.stripe_api_base, config["STRIPE_SECRET_KEY"])
    key = idempotency_key(user.id, params, time.time())
    session = stripe_sessions.call(
        "checkout.sessions.create",
        lambda: stripe.v1.checkout.sessions.create(params, {"idempotency_key": key}),  # type: ignore[arg-type]
    )
    return ok({"url": session.url})


handler = lambda_handler(app)
