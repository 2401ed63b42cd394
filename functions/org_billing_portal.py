"""POST /api/orgs/{org_id}/billing-portal: a Stripe Billing Portal session for the organization's
customer → `{url}` (docs/organizations.md#billing-per-organization).

The organization checkout's checks (404 unless the caller is in the organization, 403 without
`org:billing:manage`); an organization Stripe does not know yet (no `stripeCustomerId`) is 404
`No billing account found`, as for a user who never paid. Returns to `/search` on the
allow-listed origin.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shared.http import org_billing, stripe_sessions
from shared.http.app import create_app, make_lambda_handler

app = create_app(
    title="Organization billing portal",
    summary="Manage an organization's subscription on Stripe's portal.",
)

RATE_LIMITED = "Too many billing portal requests. Please try again later."


@app.post(
    "/api/orgs/{org_id}/billing-portal",
    response_model=None,
    responses=stripe_sessions.responses(
        "Stripe Billing Portal",
        {
            400: "`org_id` is not shaped like a Clerk organization id",
            403: "A member without `org:billing:manage`",
            404: "No such organization for the caller, or it has never paid (no Stripe customer)",
        },
    ),
)
def org_billing_portal(org_id: str, request: Request) -> Response:
    _, org = org_billing.org_caller(request, org_id, "org_billing_portal", RATE_LIMITED)
    return stripe_sessions.open_portal(request, org.stripe_customer_id)


lambda_handler = make_lambda_handler(app)
