"""POST /api/orgs/{org_id}/checkout: a Stripe Checkout Session for the organization's PRO
subscription → `{url}` (docs/organizations.md#billing-per-organization).

The personal checkout's checks and answers (`shared.http.stripe_sessions`: 503, 401, 429), then
the organization's: 404 unless the caller is in it (the token's active org, else the mirror's
membership; the same body as no such organization), 403 without `org:billing:manage`; 409 when
the organization already pays or is ENTERPRISE. The session names the organization, never the
caller, in its and the subscription's metadata (`organizationId`), so the webhook applies it to
the organization's row; the organization's Stripe customer is reused once it has one, else
Checkout creates it and the webhook links it. A double click makes one session (an idempotency
key over the organization, the parameters and a one-minute window).
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
from shared.models import Organization, User, UserTier
from shared.repositories.subscriptions import LIVE_STATUSES

app = create_app(
    title="Organization checkout",
    summary="Start an organization's PRO subscription on Stripe Checkout.",
)

RATE_LIMITED = "Too many checkout attempts. Please try again later."
ALREADY_SUBSCRIBED = (
    "This organization already has an active subscription. "
    "Manage it from the billing portal instead."
)
ENTERPRISE_PLAN = "This organization's plan is managed by KeyFlash. Contact support to change it."
IDEMPOTENCY_WINDOW_S = 60  # repeats within the same minute get the first session


def refusal(org: Organization) -> str | None:
    """Why this organization must not start a subscription, or None."""
    if org.tier is UserTier.ENTERPRISE:
        return ENTERPRISE_PLAN
    if org.tier is UserTier.PRO and org.subscription_status in LIVE_STATUSES:
        return ALREADY_SUBSCRIBED
    return None


def session_params(org: Organization, payer: User, price: str, origin: str) -> dict[str, Any]:
    """The personal session's shape with the organization as the subscriber; the paying
    member's email only prefills a customer Checkout creates."""
    metadata = {"organizationId": org.id}
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "success_url": f"{origin}/search?upgraded=true",
        "cancel_url": f"{origin}/search?canceled=true",
        "allow_promotion_codes": True,
        "client_reference_id": org.id,
        "metadata": metadata,
        "subscription_data": {"metadata": {"product": "keyflash-pro", **metadata}},
    }
    if org.stripe_customer_id:
        params["customer"] = org.stripe_customer_id
    elif not is_placeholder(payer.email):
        params["customer_email"] = payer.email
    return params


def idempotency_key(org_id: str, params: dict[str, Any], now: float) -> str:
    """The same organization, parameters and window → the same key (with the parameters, as
    Stripe refuses a key reused with others)."""
    window = int(now // IDEMPOTENCY_WINDOW_S)
    material = json.dumps([org_id, window, params], sort_keys=True, separators=(",", ":"))
    return "kf-org-checkout-" + hashlib.sha256(material.encode()).hexdigest()


@app.post(
    "/api/orgs/{org_id}/checkout",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Checkout",
        {
            400: "`org_id` is not shaped like a Clerk organization id",
            403: "A member without `org:billing:manage`",
            404: "No such organization for the caller (not a member, or deleted)",
            409: "The organization already pays (PRO with a live subscription, or ENTERPRISE)",
        },
    ),
)
def org_checkout(org_id: str, request: Request) -> Response:
    user, org = stripe_sessions.org_caller(request, org_id, "org_checkout", RATE_LIMITED)
    settings = get_settings()
    config = stripe_sessions.require(
        settings,
        STRIPE_SECRET_KEY=settings.stripe_secret_key,
        STRIPE_PRICE_PRO=settings.stripe_price_pro,
    )
    conflict = refusal(org)
    if conflict is not None:
        raise ApiError(409, conflict)
    params = session_params(
        org, user, config["STRIPE_PRICE_PRO"], stripe_sessions.redirect_origin(request, settings)
    )
    stripe = stripe_sessions.client(settings.stripe_api_base, config["STRIPE_SECRET_KEY"])
    key = idempotency_key(org.id, params, time.time())
    session = stripe_sessions.call(
        "checkout.sessions.create",
        lambda: stripe.v1.checkout.sessions.create(params, {"idempotency_key": key}),  # type: ignore[arg-type]
    )
    return ok({"url": session.url})


handler = lambda_handler(app)
