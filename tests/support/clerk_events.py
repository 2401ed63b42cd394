"""Clerk webhook deliveries for tests: Clerk's User object, signed with svix's own code."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from shared import db
from shared.repositories import users
from tests.support.http import Caller, Result

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
PATH = "/api/webhooks/clerk"


def user_data(user_id: str, *emails: str, primary: int | None = 0) -> dict[str, Any]:
    """Clerk's User object, trimmed to what matters plus a few fields we must ignore."""
    addresses = [
        {"id": f"idn_{i}", "email_address": email, "object": "email_address"}
        for i, email in enumerate(emails)
    ]
    return {
        "id": user_id,
        "object": "user",
        "first_name": "Ada",
        "email_addresses": addresses,
        "primary_email_address_id": None if primary is None else f"idn_{primary}",
    }


def signed_headers(
    payload: str,
    *,
    msg_id: str | None = None,
    at: datetime | None = None,
    secret: str = SECRET,
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    at = at or datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, payload),
        "content-type": "application/json",
    }


def deliver(
    call: Caller, kind: str, data: dict[str, Any], *, msg_id: str | None = None
) -> tuple[Result, dict[str, str], str]:
    """Sign and POST one event; returns the result and what was sent (for replays)."""
    payload = json.dumps({"type": kind, "object": "event", "data": data})
    headers = signed_headers(payload, msg_id=msg_id)
    return call("webhooks_clerk", "POST", PATH, body=payload, headers=headers), headers, payload


def email_of(user_id: str) -> str | None:
    user = db.run(lambda conn: users.get(conn, user_id))
    return None if user is None else user.email
