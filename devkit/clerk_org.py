"""`keyflash clerk-org`: a local team, made the way production makes one, by Clerk's webhooks.

Clerk's `organization.created` and `organizationMembership.created` events, in the shape Clerk
documents them (tests/fixtures/clerk), signed with Svix's own code and delivered to the Clerk
webhook function's Lambda handler in this process, against the database of the running
`keyflash dev` (or the embedded one). The secret is made up for the run: this process's
function checks the signature with it, as the deployed one does with Clerk's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devkit import events
from devkit.console import CliError

PATH = "/api/webhooks/clerk"


def organization(
    org_id: str, name: str, *, slug: str | None = None, updated_at: int, created_at: int = 0
) -> dict[str, Any]:
    """Clerk's Organization object (what organization.created/updated carry)."""
    return {
        "object": "organization",
        "id": org_id,
        "name": name,
        "slug": slug,
        "image_url": "https://img.clerk.com/xxxxxx",
        "created_by": None,
        "public_metadata": {},
        "created_at": created_at or updated_at,
        "updated_at": updated_at,
    }


def membership(
    org: dict[str, Any],
    user_id: str,
    role: str,
    *,
    updated_at: int,
    created_at: int = 0,
    permissions: Sequence[str] = (),
) -> dict[str, Any]:
    """Clerk's OrganizationMembership object (organizationMembership.* events); `created_at`
    (when the member joined) defaults to `updated_at`."""
    return {
        "object": "organization_membership",
        "id": f"orgmem_{user_id}_{org['id']}",
        "role": role,
        "permissions": list(permissions),
        "organization": org,
        "public_user_data": {
            "user_id": user_id,
            "identifier": f"{user_id}@keyflash.local",
            "first_name": None,
            "last_name": None,
            "image_url": "https://img.clerk.com/xxxxxx",
        },
        "public_metadata": {},
        "created_at": created_at or updated_at,
        "updated_at": updated_at,
    }


def event(kind: str, data: dict[str, Any]) -> str:
    """The JSON body Clerk posts for one event."""
    return json.dumps({"object": "event", "type": kind, "data": data, "timestamp": 0})


def signed_headers(secret: str, body: str, *, msg_id: str | None = None) -> dict[str, str]:
    from svix.webhooks import Webhook

    msg_id = msg_id or f"msg_{secrets.token_hex(12)}"
    at = datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class Team:
    org_id: str
    name: str
    admins: tuple[str, ...]
    members: tuple[str, ...]


def team_events(team: Team, *, now_ms: int) -> list[tuple[str, dict[str, Any]]]:
    """The events Clerk sends when `team` is made: the organization, then each membership."""
    slug = team.org_id.removeprefix("org_").replace("_", "-") or None
    org = organization(team.org_id, team.name, slug=slug, updated_at=now_ms)
    made = [("organization.created", org)]
    people = [(user, "org:admin") for user in team.admins]
    people += [(user, "org:member") for user in team.members]
    for user, role in people:
        made.append(
            ("organizationMembership.created", membership(org, user, role, updated_at=now_ms))
        )
    return made


def deletion_events(org_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [("organization.deleted", {"object": "organization", "id": org_id, "deleted": True})]


def deliver(sent: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Sign each event and call the Clerk webhook's handler with it; one line per event.

    The caller has pointed this process at the stack (`DATABASE_URL`, …)."""
    from shared.config import get_settings

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    os.environ["CLERK_WEBHOOK_SECRET"] = secret
    get_settings.cache_clear()
    from functions.webhooks_clerk import lambda_handler

    lines = []
    for kind, data in sent:
        body = event(kind, data)
        lambda_event = events.http_api_v2(
            "POST", PATH, headers=signed_headers(secret, body), body=body
        )
        loop = asyncio.new_event_loop()  # Mangum runs on the thread's loop
        asyncio.set_event_loop(loop)
        try:
            response = lambda_handler(lambda_event, events.lambda_context("webhooks_clerk"))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        answer = events.response_json(response)
        if response["statusCode"] != 200:
            raise CliError(f"{kind}: {response['statusCode']} {json.dumps(answer)}")
        lines.append(f"{kind}: {response['statusCode']} {json.dumps(answer)}")
    return lines


def now_ms() -> int:
    return int(time.time() * 1000)
