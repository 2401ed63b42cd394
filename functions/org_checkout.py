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

from starlette.requests import Request
from starlette.responses import Response

from shared.http import org_billing, stripe_sessions
from shared.http.app import create_app, make_lambda_handler
from shared.models.organizations import Organization
from shared.models.users import User
from shared.repositories.users import is_placeholder

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


def subscriber(org: Organization, payer: User) -> stripe_sessions.Subscriber:
    """The organization as Checkout's subscriber, never the caller: `organizationId` in the
    metadata, the organization's customer; the paying member's email only prefills a customer
    Checkout creates."""
    return stripe_sessions.Subscriber(
        id=org.id,
        metadata={"organizationId": org.id},
        customer=org.stripe_customer_id,
        email=None if is_placeholder(payer.email) else payer.email,
        key_prefix="kf-org-checkout-",
    )


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
    user, org = org_billing.org_caller(request, org_id, "org_checkout", RATE_LIMITED)
    refused = stripe_sessions.refusal(
        org, enterprise=ENTERPRISE_PLAN, subscribed=ALREADY_SUBSCRIBED
    )
    return stripe_sessions.start_checkout(request, subscriber(org, user), refused)


lambda_handler = make_lambda_handler(app)
