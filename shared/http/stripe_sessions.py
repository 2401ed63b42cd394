"""Stripe sessions for the signed-in caller: what checkout and the billing portal share
(docs/billing.md#checkout, #billing-portal).

The checks run in the original checkout's order (docs/original-app.md#post-apicheckout):
billing off → 503, no valid session → 401, the route's hourly limit per user → 429 (failing
closed whatever RATE_LIMIT_FAIL_SAFE says: each call may create a Stripe object), then the user
is provisioned. An organization's sessions (`org_caller`) then need an id shaped like Clerk's
(else 400) and the caller to be in the organization (the token's active org, else the mirror's
membership; else 404, the same as no such organization) with `org:billing:manage`
(`shared.rbac`; else 403). Redirects go back to the request's `Origin` only when it is on the
CORS allow-list, else to APP_URL: a session never sends the user to a site we do not own.

stripe-python is imported on first use, so the routes' cold start does not pay for it. Stripe's
answers map to ours: unreachable, rate limited or failing on its side → 503 (try again); a bad
key or any other refusal → 500 (generic), with the error's class and code in the log, never its
message or the key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request

from shared import db, rbac
from shared.auth import Identity, provision
from shared.config import Settings, get_settings
from shared.http import orgs
from shared.http.auth import AUTH_REQUIRED, identify
from shared.http.errors import ApiError
from shared.http.openapi import DESCRIPTIONS
from shared.models import Organization, User
from shared.ratelimit import limit_request
from shared.repositories import organizations, users
from shared.telemetry import log_event

if TYPE_CHECKING:
    import stripe

T = TypeVar("T")

STRIPE_API_VERSION = "2026-01-28.clover"  # the original's pin; events are read in both shapes
LIMIT_PER_HOUR = 10
TIMEOUT_S = 5.0  # per attempt; with one retry this stays inside the function's 20 s
NETWORK_RETRIES = 1  # safe: every create carries an idempotency key (stripe-python adds one)
BILLING_FORBIDDEN = "You do not have permission to manage this organization's billing"


def responses(what: str, errors: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a session route: `{url}`, 401, 409 (provisioning), 429, and the
    route's own `errors` (status → description); the envelope is added for every error."""
    url = {"type": "string", "format": "uri", "description": f"The {what} page"}
    body = {"type": "object", "required": ["url"], "properties": {"url": url}}
    return {
        200: {
            "description": f"Redirect the browser to `url` ({what})",
            "content": {"application/json": {"schema": body}},
        },
        401: {"description": DESCRIPTIONS[401]},
        409: {"description": DESCRIPTIONS[409]},
        429: {"description": f"More than {LIMIT_PER_HOUR} calls in the hour (see Retry-After)"},
        **{status: {"description": text} for status, text in errors.items()},
    }


def caller(request: Request, endpoint: str, refused: str) -> User:
    """The signed-in, provisioned caller's row after the shared checks, or the refusal."""
    return _provisioned(_checked(request, endpoint, refused))


def org_caller(
    request: Request, org_id: str, endpoint: str, refused: str
) -> tuple[User, Organization]:
    """The caller's row and the organization whose billing they manage, after the shared
    checks: the org routes' own access rule (`shared.http.orgs.org_access`: 400 for an id no
    organization can have, 404 unless they are in it), then 403 unless they hold
    `org:billing:manage`."""
    identity = _checked(request, endpoint, refused)
    access = orgs.org_access(org_id, identity)
    user = _provisioned(identity)
    if not rbac.allows(access.role, access.permissions, rbac.BILLING_MANAGE):
        raise ApiError(403, BILLING_FORBIDDEN)
    org = db.run(lambda s: organizations.get(s, org_id), idempotent=True)
    if org is None:  # deleted since the access check
        raise ApiError(404, orgs.ORG_NOT_FOUND)
    return user, org


def _checked(request: Request, endpoint: str, refused: str) -> Identity:
    settings = get_settings()
    if not settings.billing_enabled:
        raise ApiError(503, "billing is disabled")
    identity: Identity | None = identify(request)
    if identity is None:
        raise ApiError(401, AUTH_REQUIRED)
    limit_request(
        request,
        endpoint,
        LIMIT_PER_HOUR,
        refused,
        user_id=identity.user_id,
        fail_safe="closed",
        label="Client Error",
    )
    return identity


def _provisioned(identity: Identity) -> User:
    provision(identity)
    # Get-or-create, not get: another container may have erased the row since this one
    # provisioned the caller; the answer is then a fresh account, as GET /api/me gives.
    return db.run(
        lambda s: users.get_or_create(s, identity.user_id, identity.email), idempotent=True
    )


def redirect_origin(request: Request, settings: Settings) -> str:
    """The request's `Origin` (scheme://host) when allow-listed, else APP_URL."""
    origin = request.headers.get("origin", "").strip().rstrip("/")
    if origin and origin in settings.cors_origins:
        return origin
    return settings.app_url.rstrip("/")


def require(settings: Settings, **values: str | None) -> dict[str, str]:
    """The named settings, or a 500 (generic) that logs which are missing (names only)."""
    missing = sorted(name for name, value in values.items() if not value)
    if missing:
        log_event("stripe_not_configured", level=logging.ERROR, missing=missing)
        raise ApiError(500, "Stripe is not configured")
    return {name: str(value) for name, value in values.items()}


@cache
def client(api_base: str, api_key: str) -> stripe.StripeClient:
    """A Stripe client on `api_key`, pinned to the original's API version; one per container,
    so a warm container reuses its connection to Stripe."""
    import stripe  # lazily: only the billing routes pay for the SDK

    # The SDK's DEBUG lines carry whole request and response bodies (the customer's email);
    # its INFO lines (method, path, status, request id) are enough to trace a call.
    logging.getLogger("stripe").setLevel(logging.INFO)
    return stripe.StripeClient(
        api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": api_base.rstrip("/")},
        max_network_retries=NETWORK_RETRIES,
        http_client=stripe.HTTPXClient(timeout=TIMEOUT_S, allow_sync_methods=True),
    )


def call(operation: str, create: Callable[[], T]) -> T:
    """Run one Stripe request; its failures become our 503 or 500 (logged without messages)."""
    import stripe

    try:
        return create()
    except stripe.StripeError as error:
        status = error.http_status or 0
        transient = isinstance(error, stripe.APIConnectionError | stripe.RateLimitError)
        log_event(
            "stripe_request_failed",
            level=logging.ERROR,
            operation=operation,
            error=type(error).__name__,
            code=error.code,
            httpStatus=status,
            stripeRequestId=error.request_id,
        )
        if transient or status >= 500:
            raise ApiError(503, "Stripe is unavailable") from None
        raise ApiError(500, "Stripe refused the request") from None
