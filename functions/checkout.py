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

from starlette.requests import Request
from starlette.responses import Response

from shared.http import stripe_sessions
from shared.http.app import create_app, make_lambda_handler
from shared.models.users import User
from shared.repositories.users import is_placeholder

app = create_app(title="Checkout", summary="Start the PRO subscription on Stripe Checkout.")

RATE_LIMITED = "Too many checkout attempts. Please try again later."
ALREADY_SUBSCRIBED = (
    "You already have an active subscription. Manage it from the billing portal instead."
)
ENTERPRISE_PLAN = "Your plan is managed by KeyFlash. Contact support to change it."


def subscriber(user: User) -> stripe_sessions.Subscriber:
    """The user as Checkout's subscriber: `clerkUserId` in the metadata, their customer."""
    return stripe_sessions.Subscriber(
        id=user.id,
        metadata={"clerkUserId": user.id},
        customer=user.stripe_customer_id,
        email=None if is_placeholder(user.email) else user.email,
        key_prefix="kf-checkout-",
    )


@app.post(
    "/api/checkout",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Checkout", {409: "Already subscribed (PRO with a live subscription, or ENTERPRISE)"}
    ),
)
def checkout(request: Request) -> Response:
    user = stripe_sessions.caller(request, "checkout", RATE_LIMITED)
    refused = stripe_sessions.refusal(
        user, enterprise=ENTERPRISE_PLAN, subscribed=ALREADY_SUBSCRIBED
    )
    return stripe_sessions.start_checkout(request, subscriber(user), refused)


lambda_handler = make_lambda_handler(app)
