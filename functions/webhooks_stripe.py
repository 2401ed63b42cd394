"""POST /api/webhooks/stripe: Stripe's billing events (docs/original-app.md#post-apiwebhooksstripe,
#stripe-webhook-handling), each applied exactly once.

- Order of checks (the original's): billing off → 503; STRIPE_WEBHOOK_SECRET unset → 503
  (generic; the original's 500 called a deployment not ready for events a failure; Stripe
  retries either; the log names the setting); no `stripe-signature` → 400 `Missing signature`;
  a signature that does not match the raw body, or is older than 300 s → 400 `Invalid
  signature`. CSRF does not apply: the signature is the check. The stripe SDK is imported on
  first use (~0.13 s at cold start). A signed body that is not an event (no id, type or
  created; no `data.object` for a type billing reads) → 400 `Invalid webhook payload`.
- Processing is `shared.billing.process`: claim, effect and "processed" in one
  transaction. A replay answers `{received: true, duplicate: true}`; any failure rolls back,
  is recorded in the ledger and answers 503 (database unavailable) or 500, so Stripe retries
  (fixes docs/original-app.md#d4: the original kept its mark on failure and lost the event).
- 200s carry only the platform headers (`API-Version`, request id), like the original's.
- No `api_usage` row: deliveries are not API calls; the webhook ledger records each one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from shared import billing, stripe_objects
from shared.config import get_settings
from shared.db import DatabaseUnavailableError, cancelled_statement
from shared.http.app import create_app, make_lambda_handler
from shared.http.errors import ApiError
from shared.http.openapi import body
from shared.storable_text import refuse_constant
from shared.telemetry import log_event

MISSING_SIGNATURE = "Missing signature"
INVALID_SIGNATURE = "Invalid signature"
INVALID_PAYLOAD = "Invalid webhook payload"
SIGNATURE_TOLERANCE_S = 300

app = create_app(
    title="Stripe webhook",
    summary="Apply Stripe billing events to users, exactly once.",
    record_usage=False,
    limit_body=False,
)


def verify(body: bytes, signature: str, secret: str) -> dict[str, Any]:
    """The event as a dict: 400 `Invalid signature` unless the signature over the raw `body` is
    valid and fresh, then 400 `Invalid webhook payload` unless the body is a JSON object."""
    import stripe  # lazily: only this function pays for the SDK

    try:
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), signature, secret, tolerance=SIGNATURE_TOLERANCE_S
        )
    except Exception as error:  # any failure to verify is the sender's (as originally)
        log_event("stripe_webhook_rejected", level=logging.WARNING, reason=type(error).__name__)
        raise ApiError(400, INVALID_SIGNATURE) from None
    # The verified bytes as plain JSON: the same in every SDK version (StripeObject's shape and
    # dict conversion have changed across major versions).
    try:
        payload = json.loads(body, parse_constant=refuse_constant)
    except (ValueError, RecursionError):  # signed, yet not JSON (NaN and Infinity included)
        raise ApiError(400, INVALID_PAYLOAD) from None
    if not isinstance(payload, dict):
        raise ApiError(400, INVALID_PAYLOAD)
    return payload


def _process(event: stripe_objects.StripeEvent) -> dict[str, bool]:
    try:
        outcome = billing.process(event)
    except DatabaseUnavailableError:
        raise  # 503 with Retry-After
    except Exception as error:  # already logged and recorded in the ledger: a 5xx, Stripe retries
        if cancelled_statement(error):
            raise  # 503 with Retry-After (`shared.http.app`): the server refused it for now
        raise ApiError(500, "webhook processing failed") from None
    if outcome is billing.Outcome.DUPLICATE:
        return {"received": True, "duplicate": True}
    return {"received": True}


_OPENAPI = {
    "parameters": [
        {
            "name": "stripe-signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": "t=<unix>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "title": "Stripe event"}}},
    },
}


@app.post(
    "/api/webhooks/stripe",
    response_model=None,
    responses={200: body("Applied (or a duplicate)", "Received")},
    openapi_extra=_OPENAPI,
)
async def stripe_webhook(request: Request) -> Response:
    settings = get_settings()
    if not settings.billing_enabled:
        raise ApiError(503, "billing is disabled")
    secret = settings.stripe_webhook_secret
    if not secret:
        log_event(
            "stripe_webhook_not_configured", level=logging.ERROR, missing=["STRIPE_WEBHOOK_SECRET"]
        )
        raise ApiError(503, "STRIPE_WEBHOOK_SECRET is not set")
    body = await request.body()
    signature = request.headers.get("stripe-signature")
    if not signature:
        raise ApiError(400, MISSING_SIGNATURE)
    try:
        event = stripe_objects.StripeEvent.from_payload(verify(body, signature, secret))
    except stripe_objects.InvalidEventError:  # signed, yet not an event: nothing to record
        raise ApiError(400, INVALID_PAYLOAD) from None
    return JSONResponse(await run_in_threadpool(_process, event))


lambda_handler = make_lambda_handler(app)
