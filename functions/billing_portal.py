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

from shared.http import stripe_sessions
from shared.http.app import create_app, make_lambda_handler

app = create_app(title="Billing portal", summary="Manage the subscription on Stripe's portal.")

RATE_LIMITED = "Too many billing portal requests. Please try again later."


@app.post(
    "/api/billing/portal",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Billing Portal", {404: "The caller has never paid (no Stripe customer)"}
    ),
)
def billing_portal(request: Request) -> Response:
    user = stripe_sessions.caller(request, "billing_portal", RATE_LIMITED)
    return stripe_sessions.open_portal(request, user.stripe_customer_id)


lambda_handler = make_lambda_handler(app)
