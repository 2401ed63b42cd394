"""Webhook forgery beyond the basics: re-signed, re-stamped, moved and re-used deliveries.

`test_stripe_webhook` and `test_clerk_webhook` already refuse the basic cases (wrong secret,
altered body, missing or garbage headers, stale or future timestamps) and answer a replay as a
duplicate. This module is what an attacker who has *seen* valid deliveries (a proxy log, a
leaked request dump) but does not hold the signing secret can try next, plus what a sender who
does hold it must not be able to do twice:

- alter the body and re-sign it with a secret of their own;
- move a valid signature header onto another body;
- re-stamp an old delivery with a fresh timestamp (keeping, or duplicating, the old signature);
- send several signatures hoping one is accepted (none valid), or a non-v1 scheme;
- re-use a delivery id (Svix) or event id (Stripe) with a different, validly signed body;
- dodge the ledger by changing the Svix id, or by mixing the `svix-*`/`webhook-*` spellings.

Every refusal is `400 Invalid signature` with nothing written: no ledger row, no user change.
One style (Lambda HTTP API v2) on the direct lane: verification happens before any I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from svix.webhooks import Webhook

from shared import config, db
from shared.models import UserTier
from shared.repositories import users
from tests.support.clerk_events import SECRET as CLERK_SECRET
from tests.support.clerk_events import email_of, signed_headers, user_data
from tests.support.http import Caller, Keys, Result
from tests.support.stripe_events import SECRET as STRIPE_SECRET
from tests.support.stripe_events import checkout, make_user, sign, stripe_event, user

CLERK_PATH = "/api/webhooks/clerk"
STRIPE_PATH = "/api/webhooks/stripe"
ATTACKER_CLERK_SECRET = "whsec_" + base64.b64encode(b"attacker-key-material-32-bytes!!").decode()
ATTACKER_STRIPE_SECRET = "whsec_attacker_own_secret"
INVALID = (400, "Invalid signature")


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Signature checks come before any database work: the direct lane is enough."""
    return direct_database_url


@pytest.fixture
def call(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Caller:
    """Both webhooks configured: billing on with the Stripe secret, and the Clerk secret."""
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", CLERK_SECRET)
    config.get_settings.cache_clear()
    return Caller("lambda_v2", api_env)


def ledger_ids(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("SELECT id FROM webhook_events ORDER BY id")]


def status(result: Result) -> tuple[int, str | None]:
    body = result.json or {}
    return result.status, body.get("message")


# --- Stripe -------------------------------------------------------------------------------------


def post_stripe(call: Caller, body: str, header: str) -> Result:
    headers = {"content-type": "application/json", "stripe-signature": header}
    return call("webhooks_stripe", "POST", STRIPE_PATH, body=body, headers=headers)


def v1(body: str, timestamp: int, secret: str) -> str:
    """The hex HMAC Stripe puts in `v1=` for `body` at `timestamp`."""
    return hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()


def upgrade(clerk_user_id: str = "user_a", **extra: Any) -> str:
    """A checkout.session.completed body that would make `clerk_user_id` PRO."""
    return json.dumps(
        stripe_event("checkout.session.completed", checkout(clerk_user_id=clerk_user_id, **extra))
    )


def stripe_forgeries() -> dict[str, Callable[[], tuple[str, str]]]:
    """name → (body, stripe-signature header) an attacker without the secret could send."""
    now = int(time.time())
    genuine = upgrade("someone_else")  # a delivery the attacker has seen, for another user
    genuine_header = sign(genuine)
    old_t = now - 3600
    old_header = f"t={old_t},v1={v1(genuine, old_t, STRIPE_SECRET)}"
    wanted = upgrade("user_a")  # what the attacker wants applied
    return {
        "altered_and_resigned_with_the_attackers_secret": lambda: (
            wanted,
            sign(wanted, secret=ATTACKER_STRIPE_SECRET),
        ),
        "valid_header_moved_onto_another_body": lambda: (wanted, genuine_header),
        "old_delivery_restamped_with_a_fresh_timestamp": lambda: (
            genuine,
            f"t={now},v1={v1(genuine, old_t, STRIPE_SECRET)}",
        ),
        "fresh_timestamp_prepended_to_an_old_header": lambda: (genuine, f"t={now},{old_header}"),
        "fresh_timestamp_appended_to_an_old_header": lambda: (genuine, f"{old_header},t={now}"),
        "several_v1_signatures_none_valid": lambda: (
            wanted,
            f"t={now},v1={v1(wanted, now, ATTACKER_STRIPE_SECRET)},v1={'0' * 64},"
            f"v1={v1(genuine, now, STRIPE_SECRET)}",
        ),
        "valid_signature_under_the_v0_scheme_only": lambda: (
            wanted,
            f"t={now},v0={v1(wanted, now, STRIPE_SECRET)}",
        ),
        "signature_of_the_body_without_the_timestamp": lambda: (
            wanted,
            f"t={now},v1="
            + hmac.new(STRIPE_SECRET.encode(), wanted.encode(), hashlib.sha256).hexdigest(),
        ),
    }


@pytest.mark.parametrize("attack", sorted(stripe_forgeries()))
def test_stripe_forgeries_are_refused_and_change_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any], attack: str
) -> None:
    make_user()
    body, header = stripe_forgeries()[attack]()
    result = post_stripe(call, body, header)
    assert status(result) == INVALID, result.text
    assert ledger_ids(admin_conn) == []
    assert user().tier is UserTier.FREE and user().stripe_customer_id is None


def test_stripe_secret_rotation_one_valid_signature_among_several_is_accepted(
    call: Caller,
) -> None:
    """The control for the case above: Stripe sends one v1 per active secret while rotating."""
    make_user()
    body = upgrade("user_a")
    now = int(time.time())
    header = f"t={now},v1={v1(body, now, ATTACKER_STRIPE_SECRET)},v1={v1(body, now, STRIPE_SECRET)}"
    assert (post_stripe(call, body, header).status, user().tier) == (200, UserTier.PRO)


def test_a_stripe_event_id_reused_with_another_body_is_a_duplicate(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Even validly signed, a second body under an event id already processed is not applied:
    the ledger is keyed by the event id, never by the body."""
    make_user()
    make_user("user_b", "b@example.com")
    first = json.dumps(stripe_event("checkout.session.completed", checkout(), event_id="evt_1"))
    assert post_stripe(call, first, sign(first)).json == {"received": True}
    second_event = stripe_event(
        "checkout.session.completed",
        checkout(clerk_user_id="user_b", customer="cus_b", sub_id="sub_b"),
        event_id="evt_1",
    )
    second = json.dumps(second_event)
    again = post_stripe(call, second, sign(second))
    assert (again.status, again.json) == (200, {"received": True, "duplicate": True})
    assert user("user_b").tier is UserTier.FREE and user("user_b").stripe_customer_id is None
    assert user().stripe_customer_id == "cus_1"
    assert ledger_ids(admin_conn) == ["evt_1"]


# --- Clerk (Svix) -------------------------------------------------------------------------------


def post_clerk(call: Caller, body: str | bytes, headers: dict[str, str]) -> Result:
    return call("webhooks_clerk", "POST", CLERK_PATH, body=body, headers=headers)


def clerk_event(kind: str, data: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "object": "event", "data": data})


def svix_signature(msg_id: str, at: datetime, body: str, secret: str = CLERK_SECRET) -> str:
    return Webhook(secret).sign(msg_id, at, body)


def clerk_forgeries() -> dict[str, Callable[[], tuple[str | bytes, dict[str, str]]]]:
    """name → (body, headers) an attacker without the secret could send."""
    now = datetime.now(UTC)
    seen = clerk_event("user.created", user_data("user_seen", "seen@example.com"))
    seen_headers = signed_headers(seen, msg_id="msg_seen")
    old = now - timedelta(hours=2)
    old_headers = signed_headers(seen, msg_id="msg_old", at=old)
    wanted = clerk_event("user.created", user_data("user_x", "planted@example.com"))

    def with_headers(**changes: str) -> dict[str, str]:
        return {**seen_headers, **changes}

    return {
        "altered_and_resigned_with_the_attackers_secret": lambda: (
            wanted,
            signed_headers(wanted, msg_id="msg_seen", secret=ATTACKER_CLERK_SECRET),
        ),
        "valid_headers_moved_onto_another_body": lambda: (wanted, seen_headers),
        "old_delivery_restamped_with_a_fresh_timestamp": lambda: (
            seen,
            {**old_headers, "svix-timestamp": str(int(now.timestamp()))},
        ),
        "replay_with_a_fresh_svix_id_to_dodge_the_ledger": lambda: (
            seen,
            with_headers(**{"svix-id": "msg_fresh"}),
        ),
        "several_signatures_none_valid": lambda: (
            wanted,
            {
                **seen_headers,
                "svix-signature": " ".join(
                    [
                        svix_signature("msg_seen", now, wanted, ATTACKER_CLERK_SECRET),
                        seen_headers["svix-signature"],  # valid, but for the other body
                        "v1," + base64.b64encode(b"\0" * 32).decode(),
                    ]
                ),
            },
        ),
        "valid_signature_under_another_scheme": lambda: (
            seen,
            with_headers(**{"svix-signature": "v1a," + seen_headers["svix-signature"][3:]}),
        ),
        "malformed_signature_entries": lambda: (
            seen,
            with_headers(**{"svix-signature": "v1 v1,a,b " + seen_headers["svix-signature"]}),
        ),
        "unsigned_svix_id_added_to_signed_webhook_headers": lambda: (
            seen,
            {
                "webhook-id": "msg_seen",
                "webhook-timestamp": seen_headers["svix-timestamp"],
                "webhook-signature": seen_headers["svix-signature"],
                "svix-id": "msg_fresh",
                "content-type": "application/json",
            },
        ),
        "body_that_is_not_utf8": lambda: (seen.encode() + b"\xff", seen_headers),
    }


@pytest.mark.parametrize("attack", sorted(clerk_forgeries()))
def test_clerk_forgeries_are_refused_and_change_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any], attack: str
) -> None:
    body, headers = clerk_forgeries()[attack]()
    result = post_clerk(call, body, headers)
    assert status(result) == INVALID, result.text
    assert ledger_ids(admin_conn) == []
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_clerk_secret_rotation_one_valid_signature_among_several_is_accepted(
    call: Caller,
) -> None:
    """The control: Svix sends one signature per active secret while one is being rotated."""
    body = clerk_event("user.created", user_data("user_a", "a@example.com"))
    now = datetime.now(UTC)
    headers = signed_headers(body, msg_id="msg_rot", at=now)
    headers["svix-signature"] = (
        svix_signature("msg_rot", now, body, ATTACKER_CLERK_SECRET)
        + " "
        + headers["svix-signature"]
    )
    assert post_clerk(call, body, headers).status == 200
    assert email_of("user_a") == "a@example.com"


def test_a_svix_id_reused_with_another_body_is_a_duplicate(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """A second, validly signed body under a delivery id already processed changes nothing:
    the ledger is keyed by the delivery id, whatever the body says."""
    first = clerk_event("user.created", user_data("user_a", "a@example.com"))
    assert post_clerk(call, first, signed_headers(first, msg_id="msg_1")).status == 200
    second = clerk_event("user.updated", user_data("user_a", "changed@example.com"))
    again = post_clerk(call, second, signed_headers(second, msg_id="msg_1"))
    assert (again.status, again.json) == (200, {"received": True, "duplicate": True})
    assert email_of("user_a") == "a@example.com"
    assert ledger_ids(admin_conn) == ["msg_1"]


def test_a_replay_under_the_other_header_spelling_is_still_a_duplicate(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Svix accepts `svix-*` and Standard Webhooks' `webhook-*` headers: the id verified is the
    id claimed, so renaming the headers of a captured delivery does not make it new."""
    body = clerk_event("user.created", user_data("user_a", "a@example.com"))
    headers = signed_headers(body, msg_id="msg_spelling")
    assert post_clerk(call, body, headers).status == 200
    db.run(lambda conn: users.update_user(conn, "user_a", email="later@example.com"))
    renamed = {name.replace("svix-", "webhook-"): value for name, value in headers.items()}
    replay = post_clerk(call, body, renamed)
    assert (replay.status, replay.json) == (200, {"received": True, "duplicate": True})
    assert email_of("user_a") == "later@example.com"
    assert ledger_ids(admin_conn) == ["msg_spelling"]
