"""POST /api/billing/portal: a Stripe Billing Portal session for the caller → `{url}`
(docs/billing.md#billing-portal; the original had no portal).

Same checks as checkout (`shared.http.stripe_sessions`: billing off → 503, 401, 10 per hour per
user failing closed). A user Stripe does not know yet (no `stripeCustomerId`: never paid) gets
404 in the envelope; the portal returns to `/search` on the allow-listed origin. Portal
sessions are short-lived and change nothing by being created, so a double click may make two.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shared.config import get_settings
from shared.http import stripe_sessions
from shared.http.app import create_app, lambda_handler
from shared.http.errors import ApiError
from shared.http.responses import ok

app = create_app(title="Billing portal", summary="Manage the subscription on Stripe's portal.")

RATE_LIMITED = "Too many billing portal requests. Please try again later."
NO_CUSTOMER = "No billing account found. Subscribe first."


@app.post(
    "/api/billing/portal",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Billing Portal", {404: "The caller has never paid (no Stripe customer)"}
    ),
)
def billing_portal(request: Request) -> Response:
    user = stripe_sessions.caller(request, "billing_portal", RATE_LIMITED)
    settings = get_settings()
    config = stripe_sessions.require(settings, STRIPE_SECRET_KEY=settings.stripe_secret_key)
    customer = user.stripe_customer_id
    if not customer:
        raise ApiError(404, NO_CUSTOMER)
    params = {
        "customer": customer,
        "return_url": f"{stripe_sessions.redirect_origin(request, settings)}/search",
    }
    stripe = stripe_sessions.client(settings.stripe_api_base, config["STRIPE_SECRET_KEY"])
    session = stripe_sessions.call(
        "billing_portal.sessions.create",
        lambda: stripe.v1.billing_portal.sessions.create(params),  # type: ignore[arg-type]
    )
    return ok({"url": session.url})


handler = lambda_handler(app)
