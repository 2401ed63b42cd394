"""Stripe sessions for the signed-in caller: what checkout and the billing portal share
(docs/billing.md#checkout, #billing-portal).

The checks run in the original checkout's order (docs/original-app.md#post-apicheckout):
billing off → 503, no valid session → 401, the route's hourly limit per user → 429 (failing
closed whatever RATE_LIMIT_FAIL_SAFE says: each call may create a Stripe object), then the user
is provisioned. An organization's sessions add the org checks (`shared.http.org_billing`, a
module of its own so that the personal routes do not load the org layer). Redirects go back to
the request's `Origin` only when it is on the CORS allow-list, else to APP_URL: a session never
sends the user to a site we do not own.

stripe-python is imported on first use, so the routes' cold start does not pay for it. Stripe's
answers map to ours: unreachable, rate limited, busy with the same idempotency key past our time
budget, failing on its side, or answering a session without a usable URL → 503 (try again); a
bad key or any other refusal → 500 (generic), with the error's class and code in the log, never
its message or the key. A customer Stripe no longer knows (deleted in Stripe) is forgotten:
checkout then makes a new one, the portal answers 404 as for a user who never paid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from shared import db
from shared.auth import Identity, provision
from shared.clock import utcnow
from shared.config import Settings, get_settings
from shared.http.auth import identify, unauthenticated
from shared.http.errors import ApiError
from shared.http.invocation import invocation_deadline
from shared.http.openapi import DESCRIPTIONS
from shared.http.responses import ok
from shared.models import UserTier
from shared.models.organizations import Organization
from shared.models.users import User
from shared.ratelimit import limit_request
from shared.repositories import subscriptions, users
from shared.repositories.subscriptions import LIVE_STATUSES
from shared.stripe_objects import PRODUCT
from shared.telemetry import log_event

if TYPE_CHECKING:
    import stripe

T = TypeVar("T")

STRIPE_API_VERSION = "2026-01-28.clover"  # the original's pin; events are read in both shapes
LIMIT_PER_HOUR = 10
TIMEOUT_S = 5.0  # per attempt
NETWORK_RETRIES = 1  # safe: every create carries an idempotency key (stripe-python adds one)
RETRY_PAUSE_S = 0.5  # stripe-python's pause before its one retry (HTTPClient.INITIAL_DELAY)
# Stripe answers 409 while another request with the same idempotency key is in progress: a
# double click, or our own attempt that timed out while Stripe still works on it. That request's
# answer is coming, so the create is asked again (alone: no SDK retry) after CONFLICT_WAIT_S,
# as long as an attempt of MIN_ATTEMPT_S still fits before the deadline; then it is 503.
CONFLICT_WAIT_S = 1.0
# Stripe's deadline: STRIPE_BUDGET_S from the first call to Stripe, and never past the
# database's give-up time less the margin for the writes after it (`shared.http.invocation`):
# the checks before Stripe (the rate limit, provisioning: database retries of up to 8 s) may
# have used much of the function's 20 s. Each attempt fits in what is left: with the SDK's
# retry only when both tries fit, else alone with a timeout cut to the time left; under
# MIN_ATTEMPT_S left, Stripe is not asked and the answer is the 503.
STRIPE_BUDGET_S = 14.0
MIN_ATTEMPT_S = 1.0
CHECKOUT_OPERATION = "checkout.sessions.create"
PORTAL_OPERATION = "billing_portal.sessions.create"


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
    return provisioned(checked(request, endpoint, refused))


def checked(request: Request, endpoint: str, refused: str) -> Identity:
    """The caller's identity once billing is on, they are signed in and within the route's
    hourly limit (failing closed); else the refusal."""
    settings = get_settings()
    if not settings.billing_enabled:
        raise ApiError(503, "billing is disabled")
    identity: Identity | None = identify(request)
    if identity is None:
        raise unauthenticated(request)
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


def provisioned(identity: Identity) -> User:
    """The caller's row, provisioned (and created again if it was erased)."""
    provision(identity)
    # Get-or-create, not get: another container may have erased the row since this one
    # provisioned the caller; the answer is then a fresh account, as GET /api/me gives.
    return db.run(
        lambda conn: users.get_or_create(conn, identity.user_id, identity.email), idempotent=True
    )


CHECKOUT_WINDOW_S = 60  # repeats within the same minute get the first session
# A session expires this long after its window starts, 31-32 minutes after it was opened
# (Stripe accepts 30 minutes to 24 hours; the spare minute covers a retry and clock skew).
# Derived from the window, not the clock, so a repeat in the window has the same parameters.
CHECKOUT_EXPIRY_S = 32 * 60
NO_CUSTOMER = "No billing account found. Subscribe first."


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who a Checkout Session subscribes (a user, or an organization), as Stripe is told."""

    id: str  # client_reference_id and the idempotency key's subject
    metadata: dict[str, str]  # on the session and on the subscription: the webhook's lookup
    customer: str | None  # reused once there is one
    email: str | None  # prefills the customer Checkout creates otherwise (never a placeholder)
    key_prefix: str


def checkout_params(subscriber: Subscriber, price: str, origin: str, now: float) -> dict[str, Any]:
    """The Checkout Session: the original's, with the customer reused when there is one, open
    for about half an hour instead of Stripe's 24 hours (docs/billing.md#checkout)."""
    window_start = int(now // CHECKOUT_WINDOW_S) * CHECKOUT_WINDOW_S
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "success_url": f"{origin}/search?upgraded=true",
        "cancel_url": f"{origin}/search?canceled=true",
        "allow_promotion_codes": True,
        "client_reference_id": subscriber.id,
        "metadata": subscriber.metadata,
        "subscription_data": {"metadata": {"product": PRODUCT, **subscriber.metadata}},
        "expires_at": window_start + CHECKOUT_EXPIRY_S,
    }
    if subscriber.customer:
        params["customer"] = subscriber.customer
    elif subscriber.email:
        params["customer_email"] = subscriber.email
    return params


def idempotency_key(prefix: str, subject: str, params: dict[str, Any], now: float) -> str:
    """The same subject, parameters and window → the same key (Stripe keeps keys for 24 h).

    The parameters are part of it because Stripe refuses a key reused with other parameters.
    """
    window = int(now // CHECKOUT_WINDOW_S)
    material = json.dumps([subject, window, params], sort_keys=True, separators=(",", ":"))
    return prefix + hashlib.sha256(material.encode()).hexdigest()


def refusal(payer: User | Organization, *, enterprise: str, subscribed: str) -> str | None:
    """Why `payer` must not start a subscription, in the route's words: `enterprise` (the plan
    is managed outside Stripe), `subscribed` (PRO with a live subscription: it already pays);
    else None."""
    if payer.tier is UserTier.ENTERPRISE:
        return enterprise
    if payer.tier is UserTier.PRO and payer.subscription_status in LIVE_STATUSES:
        return subscribed
    return None


def start_checkout(request: Request, subscriber: Subscriber, refusal: str | None) -> Response:
    """`{url}` of a new Checkout Session for `subscriber`; 409 with `refusal` when it must not
    subscribe (checked once Stripe is known to be configured, as the original does)."""
    settings = get_settings()
    config = require(
        settings,
        STRIPE_SECRET_KEY=settings.stripe_secret_key,
        STRIPE_PRICE_PRO=settings.stripe_price_pro,
    )
    if refusal is not None:
        raise ApiError(409, refusal)
    origin = redirect_origin(request, settings)
    now = time.time()
    deadline = stripe_deadline(request)

    def create(subscriber: Subscriber) -> Any:
        params = checkout_params(subscriber, config["STRIPE_PRICE_PRO"], origin, now)
        key = idempotency_key(subscriber.key_prefix, subscriber.id, params, now)
        return call(
            CHECKOUT_OPERATION,
            lambda stripe, options: stripe.v1.checkout.sessions.create(
                params,  # type: ignore[arg-type]
                {**options, "idempotency_key": key},
            ),
            api=(settings.stripe_api_base, config["STRIPE_SECRET_KEY"]),
            deadline=deadline,
        )

    try:
        session = create(subscriber)
    except CustomerMissingError:  # deleted in Stripe: Checkout makes a new one
        forget_customer(str(subscriber.customer))
        session = create(replace(subscriber, customer=None))
    return ok({"url": session_url(CHECKOUT_OPERATION, session)})


def open_portal(request: Request, customer: str | None) -> Response:
    """`{url}` of a Billing Portal session for the Stripe `customer`; 404 without one."""
    settings = get_settings()
    config = require(settings, STRIPE_SECRET_KEY=settings.stripe_secret_key)
    if not customer:
        raise ApiError(404, NO_CUSTOMER)
    params = {"customer": customer, "return_url": f"{redirect_origin(request, settings)}/search"}
    try:
        session = call(
            PORTAL_OPERATION,
            lambda stripe, options: stripe.v1.billing_portal.sessions.create(params, options),  # type: ignore[arg-type]
            api=(settings.stripe_api_base, config["STRIPE_SECRET_KEY"]),
            deadline=stripe_deadline(request),
        )
    except CustomerMissingError:  # deleted in Stripe: as if never paid
        forget_customer(customer)
        raise ApiError(404, NO_CUSTOMER) from None
    return ok({"url": session_url(PORTAL_OPERATION, session)})


def session_url(operation: str, session: Any) -> str:
    """The session's page, or a 503: our `{url}` is a required http(s) URL (the OpenAPI says
    so), and Stripe's `url` may be null (a session no longer active), so an answer without a
    usable one is Stripe failing, logged with Stripe's request id, not a 200 `{"url": null}`."""
    url = getattr(session, "url", None)
    if isinstance(url, str):
        parts = urlsplit(url.strip())
        if parts.scheme in ("http", "https") and parts.netloc:
            return url.strip()
    response = getattr(session, "last_response", None)
    log_event(
        "stripe_session_without_url",
        level=logging.ERROR,
        operation=operation,
        url=_kind(session, url),
        stripeRequestId=getattr(response, "request_id", None),
    )
    raise ApiError(503, "Stripe answered a session without a url")


def _kind(session: Any, url: object) -> str:
    """What the session's `url` was, for the log (never its value): missing, null, or a type."""
    if "url" not in session:  # a StripeObject answers `in`, and is no dict
        return "missing"
    return "null" if url is None else type(url).__name__


class CustomerMissingError(Exception):
    """Stripe has no such customer as the request named (`resource_missing` on `customer`):
    deleted in Stripe, or made with another account's key."""


def forget_customer(customer: str) -> None:
    """No user or organization keeps a customer Stripe no longer knows (logged: Stripe's id
    only). In the migration's dual/fallback storage modes the changed users' legacy records
    are owed a copy, as billing's changes are."""
    log_event("stripe_customer_missing", level=logging.WARNING, customer=customer)
    legacy = get_settings().storage_mode != "postgres"

    def unlink(conn: db.Conn) -> list[str]:
        changed = subscriptions.unlink_missing_customer(conn, customer, now=utcnow())
        if legacy:
            from shared import storage  # only the migration's modes need it

            for user_id in changed:
                storage.mark_user(conn, user_id)
        return changed

    changed = db.transaction(unlink)
    if legacy:
        from shared import storage

        for user_id in changed:
            storage.sync_user(user_id)


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


def stripe_deadline(request: Request) -> float:
    """When (`time.monotonic()`) Stripe must have answered: STRIPE_BUDGET_S from now, or
    `invocation_deadline` (room left for the database work after it) when that comes first."""
    # Without a Lambda context (Vercel, the dev stack) the budget alone decides.
    return min(invocation_deadline(request, math.inf), time.monotonic() + STRIPE_BUDGET_S)


@cache
def client(api_base: str, api_key: str, timeout: float) -> stripe.StripeClient:
    """A Stripe client on `api_key` whose tries give up after `timeout`, pinned to the
    original's API version; one per container and timeout, so a warm container reuses its
    connection to Stripe (the timeouts are whole and half seconds: a few clients at most)."""
    import stripe  # lazily: only the billing routes pay for the SDK

    return stripe.StripeClient(
        api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": api_base.rstrip("/")},
        max_network_retries=NETWORK_RETRIES,
        http_client=stripe.HTTPXClient(timeout=timeout, allow_sync_methods=True),
    )


def call(
    operation: str,
    create: Callable[[stripe.StripeClient, stripe.RequestOptions], T],
    *,
    api: tuple[str, str],
    deadline: float,
) -> T:
    """Run one Stripe request, `create(client, request options)` on `api` (base, key), ended
    by `deadline` (`time.monotonic()`, `stripe_deadline`); its failures become our 503 or 500
    (logged without messages), except a customer Stripe does not know: `CustomerMissingError`,
    for the caller to forget. A 409 (the idempotency key in use by a request still in
    progress) is asked again after CONFLICT_WAIT_S while an attempt still fits."""
    import stripe

    retried = False
    while True:
        left = deadline - time.monotonic()
        if left < MIN_ATTEMPT_S:
            log_event("stripe_deadline_reached", level=logging.ERROR, operation=operation)
            raise ApiError(503, "Stripe is unavailable")
        options: stripe.RequestOptions = {}
        timeout = TIMEOUT_S
        if retried or left < NETWORK_RETRIES * (TIMEOUT_S + RETRY_PAUSE_S) + TIMEOUT_S:
            options = {"max_network_retries": 0}  # one try, within the deadline
            timeout = min(TIMEOUT_S, int(left * 2) / 2)  # whole and half seconds
        try:
            return create(client(*api, timeout), options)
        except stripe.StripeError as error:
            busy = error.http_status == 409  # the key's first request is still in progress
            if not busy or time.monotonic() + CONFLICT_WAIT_S + MIN_ATTEMPT_S > deadline:
                raise stripe_failure(operation, error) from None
            log_event(
                "stripe_request_in_progress",
                operation=operation,
                stripeRequestId=error.request_id,
            )
        time.sleep(CONFLICT_WAIT_S)  # that request's answer is on its way; Stripe says wait
        retried = True


def stripe_failure(operation: str, error: stripe.StripeError) -> Exception:
    """What a Stripe error becomes: `CustomerMissingError`, or our 503 (unreachable, rate
    limited, busy with the key, failing, answering what cannot be read) or 500 (a refusal),
    logged without Stripe's message."""
    import stripe

    if isinstance(error, stripe.InvalidRequestError) and (error.code, error.param) == (
        "resource_missing",
        "customer",
    ):
        return CustomerMissingError()
    status = error.http_status or 0
    # A success status with a body that is not Stripe's JSON (cut short, a proxy's page) is
    # Stripe failing, as a 5xx is: its `APIError` carries that status.
    unreadable = isinstance(error, stripe.APIError) and 200 <= status < 300
    transient = (
        isinstance(error, stripe.APIConnectionError | stripe.RateLimitError)
        or status == 409
        or unreadable
    )
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
        return ApiError(503, "Stripe is unavailable")
    return ApiError(500, "Stripe refused the request")
