"""POST /api/webhooks/clerk: Clerk's user and organization events (delivered and signed by Svix).

- Authenticity: the Svix signature over the raw body, with Svix's 5-minute timestamp tolerance,
  against `CLERK_WEBHOOK_SECRET`. No secret, or one that is not a Svix secret → 503 (generic:
  a deployment not ready for events, which Svix retries; the log names the setting); anything
  unsigned, mis-signed or stale → 400 `Invalid signature`. CSRF does not apply here: the
  signature is the check.
- Exactly once: each delivery's `svix-id` is claimed in the webhook ledger in the same
  transaction as its effects, so a replayed valid delivery is answered `duplicate` and changes
  nothing; a failed one rolls back and Svix's retry runs it again. The effects are idempotent
  on their own too (upserts, erasure of what is left).
- `user.created` / `user.updated` keep the user's email in step with Clerk's primary address
  (`shared.accounts.sync_email`), in the order of Clerk's own `updated_at` (an older event
  delivered late changes nothing; an update with no address left releases the stored one for
  the placeholder); a collision with another account is a 409 and changes
  nothing; an erased id (tombstoned, no row) is never recreated. `user.deleted` erases the
  user exactly as DELETE /api/me does.
- `organization.*` and `organizationMembership.*` keep the organizations mirror in step, in
  the same order of `updated_at` (`shared.organizations`); `organization.deleted` removes the
  organization's data. Other types: 200, nothing stored.
- Logs carry the event type and outcome, never ids or emails.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from shared import accounts, organizations
from shared.config import get_settings
from shared.http.app import create_app, make_lambda_handler
from shared.http.body import decode_json
from shared.http.errors import ApiError
from shared.http.invocation import storage_deadline
from shared.http.openapi import body
from shared.http.responses import ok
from shared.storable_text import first_unstorable
from shared.telemetry import log_event

INVALID_SIGNATURE = "Invalid signature"
INVALID_PAYLOAD = "Invalid webhook payload"
USER_EVENTS = accounts.CLERK_USER_EVENTS
ORG_EVENTS = organizations.EVENT_MODELS

app = create_app(
    title="Clerk webhook",
    summary="Keep users and organizations in step with Clerk (Svix-signed).",
    limit_body=False,
)


class ClerkEvent(BaseModel):
    type: Annotated[str, Field(min_length=1, max_length=100)]
    data: dict[str, Any]


def _verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """400 unless Svix's signature over `body` is valid and fresh.

    svix is imported on first use: its package loads the whole API client (~0.3 s), which the
    emulator and tests, importing every function, should not pay at startup."""
    from svix.webhooks import Webhook, WebhookVerificationError

    try:
        verifier = Webhook(secret)
    except Exception as error:  # a malformed secret is our configuration, not the sender's fault
        log_event(
            "clerk_webhook_misconfigured",
            level=logging.ERROR,
            invalid=["CLERK_WEBHOOK_SECRET"],
            error=type(error).__name__,
        )
        raise ApiError(503, "webhook secret invalid") from None
    if not _well_formed(headers.get("svix-signature") or headers.get("webhook-signature") or ""):
        # Judged here, not by the library: its releases differ on skipping malformed entries.
        log_event("clerk_webhook_rejected", level=logging.WARNING, reason="malformed")
        raise ApiError(400, INVALID_SIGNATURE)
    try:
        verifier.verify(body, dict(headers))
    except (WebhookVerificationError, ValueError) as error:
        # Svix's messages ("Message timestamp too old", …) carry no payload data.
        reason = str(error) if isinstance(error, WebhookVerificationError) else "malformed"
        log_event("clerk_webhook_rejected", level=logging.WARNING, reason=reason)
        raise ApiError(400, INVALID_SIGNATURE) from None


def _well_formed(signatures: str) -> bool:
    """Every space-separated entry is `<version>,<signature>`, both parts present."""
    entries = [entry.split(",") for entry in signatures.split(" ")]
    return all(len(parts) == 2 and all(parts) for parts in entries)


Payload = accounts.ClerkUser | organizations.OrganizationEvent


def _parse(body: bytes) -> tuple[ClerkEvent, Payload | None]:
    """The event and its data as the model of its type; None for a type we do not handle.

    Decoded by the JSON rule of every body (`decode_json`), which keeps an escaped lone
    surrogate where pydantic's JSON parser would refuse the whole body: only what we keep must
    fit PostgreSQL text (no NUL, no lone surrogate). The rest of `data` (metadata a user may
    write, names, the other email addresses) is never read, nor checked."""
    try:
        event = ClerkEvent.model_validate(decode_json(body))
        payload: Payload | None = None
        if event.type in USER_EVENTS:
            payload = accounts.ClerkUser.model_validate(event.data)
        elif event.type in ORG_EVENTS:
            payload = ORG_EVENTS[event.type].model_validate(event.data)
    except ValueError:  # not JSON, or not the event's model (ValidationError is a ValueError)
        raise ApiError(400, INVALID_PAYLOAD) from None
    if payload is not None and first_unstorable(_kept(payload)) is not None:
        raise ApiError(400, INVALID_PAYLOAD)
    return event, payload


def _kept(payload: Payload) -> object:
    """The strings of `payload` we store: a user's id and primary email; every field of an
    organization event's model (they declare only what the mirror keeps)."""
    if isinstance(payload, accounts.ClerkUser):
        return payload.kept()
    return payload.model_dump()


def _svix_header(name: str, description: str) -> dict[str, object]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": f"{description} (Svix also accepts the `webhook-` spelling)",
    }


_OPENAPI = {
    "parameters": [
        _svix_header("svix-id", "The delivery's id, claimed once in the webhook ledger"),
        _svix_header("svix-timestamp", "Unix seconds; older than 5 minutes is refused"),
        _svix_header("svix-signature", "v1,<base64 HMAC-SHA256 of '<id>.<timestamp>.<body>'>"),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "title": "Clerk event",
                    "required": ["type", "data"],
                    "properties": {"type": {"type": "string"}, "data": {"type": "object"}},
                }
            }
        },
    },
}


@app.post(
    "/api/webhooks/clerk",
    response_model=None,
    responses={
        200: body("Applied (or ignored, or a duplicate)", "Received"),
        409: {"description": "The new email belongs to another account"},
    },
    openapi_extra=_OPENAPI,
)
async def clerk_webhook(request: Request) -> Response:
    secret = get_settings().clerk_webhook_secret
    if not secret:
        log_event(
            "clerk_webhook_not_configured", level=logging.ERROR, missing=["CLERK_WEBHOOK_SECRET"]
        )
        raise ApiError(503, "CLERK_WEBHOOK_SECRET is not set")
    body = await request.body()
    _verify(secret, body, request.headers)
    event, data = _parse(body)
    if data is None:
        log_event("clerk_webhook", type=event.type, outcome="ignored")
        return ok({"received": True})
    # Verified above, so one of them is present (Svix accepts either spelling).
    delivery = request.headers.get("svix-id") or request.headers["webhook-id"]
    if isinstance(data, accounts.ClerkUser):
        return ok(
            await run_in_threadpool(
                accounts.apply_clerk_event, delivery, event.type, data, storage_deadline(request)
            )
        )
    applied = await run_in_threadpool(
        organizations.apply_organization_event, delivery, event.type, data
    )
    return ok(applied)


lambda_handler = make_lambda_handler(app)
