"""POST /api/webhooks/clerk: Svix signatures, exactly-once effects, email sync and erasure.

Deliveries are signed with svix's own code, as Clerk's Svix endpoint signs them, and arrive
without Origin, CSRF token or Authorization: the route is CSRF-exempt and the signature is the
only check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest

from devkit import clerk_org
from shared import accounts, auth, config, db
from shared.db import Conn
from shared.http import usage
from shared.redis import get_redis
from shared.repositories import api_usage, saved_searches, users
from tests.core.test_trials_and_tombstones import waits_for_lock
from tests.support.clerk_events import PATH, SECRET, deliver, email_of, signed_headers, user_data
from tests.support.http import Caller, Keys
from tests.support.legacy import scan_all


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", SECRET)
    config.get_settings.cache_clear()


@pytest.fixture
def lambda_only(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Caller]:
    """The Lambda handler, with a connection per concurrent delivery."""
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield Caller("lambda_v2", api_env)
    db.dispose_engine()


def ledger(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(type, provider, processed, has no payload) per ledger row. `claim(payload=None)` stores
    JSON null today, not SQL NULL: either means nothing of the event was kept."""
    return conn.execute(
        "SELECT type, provider, processed, coalesce(payload, 'null') = 'null'"
        " FROM webhook_events ORDER BY type"
    ).fetchall()


# --- signatures -------------------------------------------------------------------------------


def test_a_valid_user_created_creates_the_user_with_the_primary_email(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    data = user_data("user_a", "old@example.com", "Ada@Example.com", primary=1)
    result, _, _ = deliver(call, "user.created", data)
    assert (result.status, result.json) == (200, {"received": True})
    user = db.run(lambda conn: users.get(conn, "user_a"))
    assert user is not None and user.email == "Ada@Example.com"
    assert user.tier.value == "FREE" and user.trial_ends_at is not None
    # The delivery is in the ledger, processed, with no payload (no PII kept there).
    assert ledger(admin_conn) == [("user.created", "clerk", True, True)]


@pytest.mark.parametrize("pasted", [f'"{SECRET}"', f"{SECRET}\r\n"])
def test_a_secret_pasted_with_its_quotes_or_a_newline_verifies_genuine_events(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch, pasted: str
) -> None:
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", pasted)
    config.get_settings.cache_clear()
    result, _, _ = deliver(
        Caller("lambda_v2", api_env), "user.created", user_data("user_p", "p@x.io")
    )
    assert (result.status, result.json) == (200, {"received": True}), result.text


def test_an_event_past_the_api_body_limit_is_processed(call: Caller) -> None:
    """Svix retries a refused delivery and then gives up: the webhook has no body limit of its
    own (the platform's applies), so a user with a 1.2 MB `unsafe_metadata` still arrives."""
    data = user_data("user_big", "big@example.com") | {
        "unsafe_metadata": {"notes": "n" * 1_200_000}
    }
    result, _, _ = deliver(call, "user.created", data)
    assert (result.status, result.json) == (200, {"received": True})
    assert email_of("user_big") == "big@example.com"


@pytest.mark.parametrize(
    "tamper",
    [
        "other_secret",
        "body_changed",
        "no_svix_id",
        "no_svix_timestamp",
        "no_svix_signature",
        "garbage_signature",
        "stale",
        "future",
        "timestamp_not_a_number",
    ],
)
def test_unsigned_mis_signed_or_stale_deliveries_are_refused(
    call: Caller, admin_conn: psycopg.Connection[Any], tamper: str
) -> None:
    payload = json.dumps({"type": "user.created", "data": user_data("user_a", "a@example.com")})
    body = payload
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    if tamper == "other_secret":
        headers = signed_headers(payload, secret=other)
    elif tamper in ("stale", "future"):
        shift = timedelta(minutes=6) * (-1 if tamper == "stale" else 1)
        headers = signed_headers(payload, at=datetime.now(UTC) + shift)
    else:
        headers = signed_headers(payload)
    if tamper == "body_changed":
        body = payload.replace("a@example.com", "b@example.com")
    if tamper.startswith("no_"):
        del headers[tamper.removeprefix("no_").replace("_", "-")]
    if tamper == "garbage_signature":
        headers["svix-signature"] = "not-a-signature"
    if tamper == "timestamp_not_a_number":
        headers["svix-timestamp"] = "yesterday"
    result = call("webhooks_clerk", "POST", PATH, body=body, headers=headers)
    assert result.status == 400, result.text
    assert result.json["message"] == "Invalid signature"
    assert result.json["error"] == "Client Error"
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert ledger(admin_conn) == []


def test_a_replayed_delivery_changes_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    created, headers, payload = deliver(call, "user.created", user_data("user_a", "a@example.com"))
    assert created.status == 200
    deleted, _, _ = deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    assert deleted.status == 200 and email_of("user_a") is None
    # The same signed user.created again, within Svix's tolerance: it must not resurrect.
    replay = call("webhooks_clerk", "POST", PATH, body=payload, headers=headers)
    assert (replay.status, replay.json) == (200, {"received": True, "duplicate": True})
    assert email_of("user_a") is None
    assert admin_conn.execute("SELECT count(*) FROM webhook_events").fetchone() == (2,)


@pytest.mark.parametrize(
    ("secret", "event", "problem"),
    [
        pytest.param(None, "clerk_webhook_not_configured", "missing", id="missing"),
        pytest.param("", "clerk_webhook_not_configured", "missing", id="empty"),
        pytest.param("whsec_", "clerk_webhook_misconfigured", "invalid", id="unusable"),
    ],
)
def test_a_missing_or_unusable_secret_is_a_503_whose_log_names_the_setting(
    secret: str | None,
    event: str,
    problem: str,
    call: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Our configuration, not the sender's fault: 503 (Svix retries it once the setting is
    fixed), the generic text, and the log names the setting, never a value."""
    if secret is None:
        monkeypatch.delenv("CLERK_WEBHOOK_SECRET")
    else:
        monkeypatch.setenv("CLERK_WEBHOOK_SECRET", secret)
    config.get_settings.cache_clear()
    with caplog.at_level(logging.ERROR, logger="keyflash"):
        result, _, _ = deliver(call, "user.created", user_data("user_a", "a@example.com"))
    assert result.status == 503, result.text
    assert result.json["message"] == "Service temporarily unavailable. Please try again later."
    assert result.headers["retry-after"] == "60" and "CLERK" not in result.text
    [line] = [json.loads(r.message) for r in caplog.records if event in r.message]
    assert line[problem] == ["CLERK_WEBHOOK_SECRET"]
    assert email_of("user_a") is None and ledger(admin_conn) == []


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        json.dumps({"data": {"id": "user_a"}}),  # no type
        json.dumps({"type": "user.created"}),  # no data
        json.dumps({"type": "user.created", "data": {"email_addresses": []}}),  # no id
        json.dumps({"type": "user.deleted", "data": {"id": ""}}),
        json.dumps({"type": "user.updated", "data": {"id": "u", "email_addresses": "x"}}),
        # updated_at orders the events: Unix milliseconds, nothing else
        json.dumps({"type": "user.updated", "data": {"id": "u", "updated_at": "1654012824306"}}),
        json.dumps({"type": "user.updated", "data": {"id": "u", "updated_at": 1.5}}),
        json.dumps({"type": "user.updated", "data": {"id": "u", "updated_at": True}}),
        json.dumps({"type": "user.updated", "data": {"id": "u", "updated_at": -1}}),
        json.dumps({"type": "user.updated", "data": {"id": "u", "updated_at": 10**20}}),
        # PostgreSQL text cannot hold NUL: refused like a lone surrogate, never a 500.
        json.dumps({"type": "user.updated", "data": {"id": "user_\u0000", "updated_at": 1}}),
        json.dumps({"type": "organization.created", "data": {"id": "org_1", "name": "a\u0000"}}),
        # ... nor a lone surrogate, which the decoder takes (JSON may escape one)
        json.dumps({"type": "user.updated", "data": {"id": "user_\ud800", "updated_at": 1}}),
        json.dumps({"type": "user.created", "data": user_data("user_a", "a\udfff@example.com")}),
        json.dumps({"type": "user.created", "data": user_data("user_a", "a\u0000@example.com")}),
        # an organization id no route accepts (`org_` + 1 to 64 letters and digits)
        *(
            json.dumps({"type": kind, "data": data})
            for org_id in ("org_a-b", "not an org", "org_", "org_" + "a" * 65, "org_ä")
            for kind, data in (
                ("organization.created", clerk_org.organization(org_id, "A", updated_at=1)),
                ("organization.deleted", {"id": org_id, "deleted": True}),
                (
                    "organizationMembership.created",
                    clerk_org.membership(
                        clerk_org.organization(org_id, "A", updated_at=1),
                        "user_a",
                        "admin",
                        updated_at=1,
                    ),
                ),
            )
        ),
    ],
)
def test_signed_but_malformed_payloads_are_400(
    call: Caller, admin_conn: psycopg.Connection[Any], payload: str
) -> None:
    result = call("webhooks_clerk", "POST", PATH, body=payload, headers=signed_headers(payload))
    assert (result.status, result.json["message"]) == (400, "Invalid webhook payload")
    assert ledger(admin_conn) == []


def test_text_we_never_read_may_hold_nul(call: Caller) -> None:
    """A user writes their own `unsafe_metadata` from the browser: NUL there (or in any field we
    do not keep) must not block the sync of their email, nor an event type we ignore."""
    data = {
        **user_data("user_a", "a@example.com"),
        "first_name": "A\u0000",
        "unsafe_metadata": {"note": "x\u0000"},
    }
    result, _, _ = deliver(call, "user.created", data)
    assert (result.status, result.json) == (200, {"received": True})
    assert email_of("user_a") == "a@example.com"
    ignored, _, _ = deliver(call, "session.created", {"id": "sess_\u0000", "user_id": "user_a"})
    assert (ignored.status, ignored.json) == (200, {"received": True})


@pytest.mark.parametrize("unstorable", ["\u0000", "\ud800", "\udfff"])
def test_text_we_never_read_may_hold_nul_or_a_lone_surrogate(call: Caller, unstorable: str) -> None:
    """Only what we keep is checked (the id, the primary email): metadata, names, images and
    the other email addresses may hold what PostgreSQL text cannot, keys included."""
    data = {
        **user_data("user_a", "a@example.com", f"old{unstorable}@example.com"),
        "first_name": f"A{unstorable}",
        "image_url": f"https://img.example/{unstorable}",
        "public_metadata": {"note": unstorable},
        "unsafe_metadata": {unstorable: [unstorable]},
    }
    result, _, _ = deliver(call, "user.created", data)
    assert (result.status, result.json) == (200, {"received": True})
    assert email_of("user_a") == "a@example.com"


@pytest.mark.parametrize("unstorable", ["\u0000", "\ud800"])
def test_organization_text_we_never_read_may_hold_nul_or_a_lone_surrogate(
    call: Caller, admin_conn: psycopg.Connection[Any], unstorable: str
) -> None:
    """The organization's metadata and image, the membership's metadata and the member's
    `public_user_data` other than `user_id` (name, email, images) are never read."""
    org = clerk_org.organization("org_a", "Acme", updated_at=1000)
    org |= {"image_url": unstorable, "private_metadata": {unstorable: unstorable}}
    made, _, _ = deliver(call, "organization.created", org)
    assert (made.status, made.json) == (200, {"received": True})
    member = clerk_org.membership(org, "user_a", "org:admin", updated_at=2000)
    member["public_metadata"] = {"note": unstorable}
    member["public_user_data"] |= {
        "identifier": f"a{unstorable}@example.com",
        "first_name": unstorable,
        "image_url": unstorable,
    }
    joined, _, _ = deliver(call, "organizationMembership.created", member)
    assert (joined.status, joined.json) == (200, {"received": True})
    assert admin_conn.execute(
        'SELECT "userId", role FROM organization_members WHERE "organizationId" = %s', ["org_a"]
    ).fetchall() == [("user_a", "org:admin")]


def test_unknown_event_types_are_acknowledged_and_ignored(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    result, _, _ = deliver(call, "session.created", {"id": "sess_1", "user_id": "user_a"})
    assert (result.status, result.json) == (200, {"received": True})
    assert ledger(admin_conn) == []
    assert admin_conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


# --- user.created / user.updated --------------------------------------------------------------


def test_created_without_a_primary_email_falls_back_to_the_placeholder(call: Caller) -> None:
    deliver(call, "user.created", user_data("user_a", "a@example.com", primary=None))
    assert email_of("user_a") == "user_a@keyflash.local"


def test_created_upgrades_a_placeholder_but_never_overwrites_a_real_email(call: Caller) -> None:
    # Provisioned by an API call whose session token had no email claim.
    assert call("me", "GET", "/api/me", user="user_a").json["email"] == "user_a@keyflash.local"
    deliver(call, "user.created", user_data("user_a", "a@example.com"))
    assert email_of("user_a") == "a@example.com"
    # A late user.created carries the oldest email: it must not undo a newer one.
    deliver(call, "user.updated", user_data("user_a", "new@example.com"))
    deliver(call, "user.created", user_data("user_a", "a@example.com"))
    assert email_of("user_a") == "new@example.com"


def test_updated_changes_the_email_and_is_idempotent(call: Caller) -> None:
    deliver(call, "user.created", user_data("user_a", "a@example.com"))
    first, _, _ = deliver(
        call, "user.updated", user_data("user_a", "x@example.com", "b@example.com", primary=1)
    )
    assert first.status == 200 and email_of("user_a") == "b@example.com"
    again, _, _ = deliver(call, "user.updated", user_data("user_a", "b@example.com"))  # new msg id
    assert again.status == 200 and email_of("user_a") == "b@example.com"
    case_only, _, _ = deliver(call, "user.updated", user_data("user_a", "B@Example.com"))
    assert case_only.status == 200 and email_of("user_a") == "B@Example.com"
    # An update without `updated_at` cannot be ordered: it never releases a real address.
    deliver(call, "user.updated", user_data("user_a", primary=None))
    assert email_of("user_a") == "B@Example.com"


def stamped(user_id: str, email: str, updated_at: int) -> dict[str, Any]:
    return {**user_data(user_id, email), "updated_at": updated_at}


def test_an_older_update_delivered_late_changes_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    deliver(call, "user.created", stamped("user_a", "a@example.com", 1654012591835))
    newer, _, _ = deliver(call, "user.updated", stamped("user_a", "new@example.com", 1654012900000))
    late, _, _ = deliver(call, "user.updated", stamped("user_a", "old@example.com", 1654012824306))
    assert (newer.status, late.status) == (200, 200)
    assert email_of("user_a") == "new@example.com"
    row = admin_conn.execute(
        'SELECT "clerkUpdatedAt" FROM users WHERE id = %s', ["user_a"]
    ).fetchone()
    assert row == (datetime(2022, 5, 31, 16, 1, 40),)  # 1654012900000 ms, stored as UTC
    # Processed (not retried): the late delivery is consumed.
    assert (
        ledger(admin_conn)
        == [("user.created", "clerk", True, True)] + [("user.updated", "clerk", True, True)] * 2
    )


def test_an_unchanged_email_still_moves_the_clock(call: Caller) -> None:
    """A newer update that keeps the email must still outrank an older one that changed it."""
    deliver(call, "user.created", stamped("user_a", "a@example.com", 1000))
    deliver(call, "user.updated", stamped("user_a", "a@example.com", 3000))
    deliver(call, "user.updated", stamped("user_a", "b@example.com", 2000))
    assert email_of("user_a") == "a@example.com"


def test_concurrent_updates_settle_on_the_newest(lambda_only: Caller) -> None:
    """Two updates racing on their own connections: the row lock orders the decisions."""
    deliver(lambda_only, "user.created", stamped("user_a", "a@example.com", 1000))
    for round_ in range(5):
        base = 10_000 * (round_ + 1)
        updates = [stamped("user_a", f"u{round_}-{i}@example.com", base + i) for i in range(4)]
        start = threading.Barrier(len(updates))

        def one(data: dict[str, Any], barrier: threading.Barrier = start) -> int:
            asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum wants a loop per thread
            barrier.wait()
            return deliver(lambda_only, "user.updated", data)[0].status

        with ThreadPoolExecutor(max_workers=len(updates)) as pool:
            assert set(pool.map(one, reversed(updates))) == {200}
        assert email_of("user_a") == f"u{round_}-3@example.com"


def test_updated_for_an_unknown_user_creates_it(call: Caller) -> None:
    result, _, _ = deliver(call, "user.updated", user_data("user_a", "a@example.com"))
    assert result.status == 200 and email_of("user_a") == "a@example.com"


def test_email_collision_is_a_409_and_changes_nothing_until_resolved(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    deliver(call, "user.created", user_data("user_a", "a@example.com"))
    deliver(call, "user.created", user_data("user_b", "taken@example.com"))
    payload = json.dumps({"type": "user.updated", "data": user_data("user_a", "TAKEN@example.com")})
    headers = signed_headers(payload, msg_id="msg_collision")
    result = call("webhooks_clerk", "POST", PATH, body=payload, headers=headers)
    assert result.status == 409
    assert result.json["message"] == "This email address already belongs to another account"
    assert email_of("user_a") == "a@example.com"
    assert ledger(admin_conn) == [("user.created", "clerk", True, True)] * 2  # not claimed
    # Once user_b moves on, Svix's retry of the same delivery goes through.
    deliver(call, "user.updated", user_data("user_b", "elsewhere@example.com"))
    retry = call("webhooks_clerk", "POST", PATH, body=payload, headers=headers)
    assert (retry.status, retry.json) == (200, {"received": True})
    assert email_of("user_a") == "TAKEN@example.com"


def without_email(user_id: str, updated_at: int) -> dict[str, Any]:
    """A phone-only (or web3-only) user: Clerk's UserJSON once their last address is removed."""
    return {**user_data(user_id, primary=None), "updated_at": updated_at}


def me_with_email(call: Caller, user_id: str, email: str) -> Any:
    token = call.token(user_id, email=email)
    return call("me", "GET", "/api/me", headers={"authorization": f"Bearer {token}"})


def test_an_update_without_email_releases_the_address_to_whoever_waits_for_it(
    call: Caller,
) -> None:
    """Clerk lets a user remove their only address and then gives it to someone else: A's
    update is authoritative and A's row gives the address up (the placeholder), so B, refused
    while A held it, gets in on Svix's retry and with their session."""
    deliver(call, "user.created", stamped("user_a", "shared@example.com", 1000))
    b_created = json.dumps(
        {"type": "user.created", "data": stamped("user_b", "Shared@example.com", 1500)}
    )
    headers = signed_headers(b_created, msg_id="msg_b_created")
    refused = call("webhooks_clerk", "POST", PATH, body=b_created, headers=headers)
    assert refused.status == 409
    assert me_with_email(call, "user_b", "Shared@example.com").status == 409
    released, _, _ = deliver(call, "user.updated", without_email("user_a", 2000))
    assert (released.status, released.json) == (200, {"received": True})
    assert email_of("user_a") == "user_a@keyflash.local"
    retry = call("webhooks_clerk", "POST", PATH, body=b_created, headers=headers)
    assert (retry.status, retry.json) == (200, {"received": True})
    assert email_of("user_b") == "Shared@example.com"
    me = me_with_email(call, "user_b", "Shared@example.com")
    assert (me.status, me.json["email"]) == (200, "Shared@example.com")


def test_a_session_waiting_for_an_address_gets_in_once_its_holder_releases_it(
    call: Caller,
) -> None:
    deliver(call, "user.created", stamped("user_a", "shared@example.com", 1000))
    assert me_with_email(call, "user_b", "shared@example.com").status == 409
    deliver(call, "user.updated", without_email("user_a", 2000))
    me = me_with_email(call, "user_b", "shared@example.com")
    assert (me.status, me.json["email"]) == (200, "shared@example.com")


def test_a_late_or_unordered_event_without_email_never_releases_a_newer_address(
    call: Caller,
) -> None:
    """The release follows Clerk's order: an older update delivered late, a `user.created`
    (the oldest information) or an update without `updated_at` (no order to judge by) leaves a
    real address alone, and so does a session token without an email claim."""
    deliver(call, "user.created", stamped("user_a", "a@example.com", 1000))
    deliver(call, "user.updated", stamped("user_a", "new@example.com", 3000))
    for kind, data in [
        ("user.updated", without_email("user_a", 2000)),  # older: stale
        ("user.created", without_email("user_a", 4000)),
        ("user.updated", user_data("user_a", primary=None)),  # no updated_at
    ]:
        result, _, _ = deliver(call, kind, data)
        assert (result.status, result.json) == (200, {"received": True})
        assert email_of("user_a") == "new@example.com", (kind, data)
    auth.forget("user_a")  # the session's next call provisions, as in a cold container
    me = call("me", "GET", "/api/me", user="user_a")  # a token without an email claim
    assert (me.status, me.json["email"]) == (200, "new@example.com")
    # Released, the address is not brought back by an older event either.
    deliver(call, "user.updated", without_email("user_a", 5000))
    deliver(call, "user.updated", stamped("user_a", "new@example.com", 4500))
    assert email_of("user_a") == "user_a@keyflash.local"
    # A newer one with an address (Clerk gave A one again) sets it.
    deliver(call, "user.updated", stamped("user_a", "back@example.com", 6000))
    assert email_of("user_a") == "back@example.com"


def test_created_without_email_for_ids_differing_only_in_case(call: Caller) -> None:
    """Each gets its own `{id}@keyflash.local`: Clerk ids are case-sensitive."""
    for user_id in ("user_2zQ", "user_2Zq"):
        result, _, _ = deliver(call, "user.created", user_data(user_id, primary=None))
        assert (result.status, result.json) == (200, {"received": True}), result.text
        assert email_of(user_id) == f"{user_id}@keyflash.local"


def test_created_colliding_with_another_account_is_a_409(call: Caller) -> None:
    deliver(call, "user.created", user_data("user_b", "taken@example.com"))
    result, _, _ = deliver(call, "user.created", user_data("user_a", "Taken@Example.com"))
    assert result.status == 409
    assert email_of("user_a") is None


def test_a_lost_insert_race_is_rerun_as_an_update(
    call: Caller, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """The user's first API call inserts the row between our read and our insert."""
    real_get = users.get
    raced: list[bool] = []

    def get_then_lose_the_race(conn: Any, user_id: str, **options: Any) -> Any:
        if not raced:
            raced.append(True)
            admin_conn.execute(  # another connection, as the other request would be
                'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
                [user_id, f"{user_id}@keyflash.local"],
            )
            return None  # what our read saw, just before the other insert committed
        return real_get(conn, user_id, **options)

    monkeypatch.setattr(users, "get", get_then_lose_the_race)  # what accounts calls
    result, _, _ = deliver(call, "user.created", user_data("user_a", "a@example.com"))
    assert (result.status, result.json) == (200, {"received": True})
    assert raced == [True]
    assert email_of("user_a") == "a@example.com"


# --- user.deleted -----------------------------------------------------------------------------


def test_deleted_erases_the_user_like_delete_me_and_leaves_others(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    for user_id in ("user_a", "user_b"):
        deliver(call, "user.created", user_data(user_id, f"{user_id}@example.com"))
        new = saved_searches.NewSavedSearch("n", ["k"], "US", "en", "exact")
        db.transaction(partial(saved_searches.create, user_id=user_id, search=new))
        usage = api_usage.Request("/api/keywords", "POST", 200, 5, user_id)
        db.run(partial(api_usage.record, request=usage))
    result, _, _ = deliver(
        call, "user.deleted", {"id": "user_a", "deleted": True, "object": "user"}
    )
    assert (result.status, result.json) == (200, {"received": True})
    for table in ("users", "saved_searches", "api_usage"):
        column = "id" if table == "users" else '"userId"'
        counts = admin_conn.execute(
            f"SELECT count(*) FILTER (WHERE {column} = 'user_a'),"
            f" count(*) FILTER (WHERE {column} = 'user_b') FROM {table}"
        ).fetchone()
        assert counts == (0, 1), table
    # A second deletion (another delivery) finds nothing left and still succeeds.
    again, _, _ = deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    assert (again.status, again.json) == (200, {"received": True})


SAVED = {"name": "n", "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"}}
SEARCH = {"keywords": ["k"], "matchType": "exact"}


def refused_as_deleted(result: Any, message: str = "Authentication required") -> None:
    assert result.status == 401, result.text
    assert (result.json["error"], result.json["message"]) == ("Client Error", message)
    assert result.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def nothing_names(admin_conn: psycopg.Connection[Any], user_id: str) -> None:
    """No user row, reservation or usage row for `user_id` (the 401s' usage rows name no one)."""
    usage.settle()  # the usage rows requests on other threads sent are written
    for table, column in [("users", "id"), ("keyword_reservations", '"userId"'),
                          ("api_usage", '"userId"')]:  # fmt: skip
        found = admin_conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = %s", [user_id])
        assert found.fetchone() == (0,), table


def test_a_session_outliving_its_deleted_clerk_user_provisions_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Clerk's session tokens stay valid for up to a minute after Clerk deletes the user. Clerk
    never reuses an id and sends nothing more for it, so a row that token created would stay
    for good: every route it reaches answers 401, and this container forgot the user."""
    token = call.token("user_a", email="gone@example.com")
    bearer = {"authorization": f"Bearer {token}"}
    deliver(call, "user.created", user_data("user_a", "gone@example.com"))
    assert call("me", "GET", "/api/me", headers=bearer).status == 200  # provisioned, remembered
    deleted, _, _ = deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    assert deleted.status == 200
    assert "user_a" not in auth._provisioned
    refused_as_deleted(call("me", "GET", "/api/me", headers=bearer))
    refused_as_deleted(call("searches", "POST", "/api/searches", headers=bearer, json_body=SAVED))
    refused_as_deleted(call("history", "GET", "/api/history", headers=bearer))
    refused_as_deleted(call("me", "DELETE", "/api/me", headers=bearer))
    searched = call("keywords", "POST", "/api/keywords", headers=bearer, json_body=SEARCH)
    refused_as_deleted(searched, "Authentication required. Please sign in to use KeyFlash.")
    nothing_names(admin_conn, "user_a")


@pytest.mark.parametrize("active_org", [False, True], ids=["personal", "team"])
def test_a_search_refused_after_the_deletion_writes_no_rate_counter_naming_the_user(
    call: Caller, monkeypatch: pytest.MonkeyPatch, active_org: bool
) -> None:
    """The erasure deletes the user's rate-limit counters (their keys name the Clerk id), and a
    search their outliving session token sends afterwards, refused with 401, writes none back:
    the keyword route's limit runs before it learns that the account is gone. A signed-in
    user's search still counts against their own budget."""
    monkeypatch.setenv("RATE_LIMIT_ENABLED", "true")
    config.get_settings.cache_clear()
    who = f"user_{uuid.uuid4().hex[:12]}"  # the emulator's keys outlive the test
    org = {"v": 2, "o": {"id": "org_2Z5Tgd3v6U1OeQXQ5Ijn7bqq3pK", "rol": "admin", "slg": "t"}}
    token = call.token(who, email=f"{who}@example.com", **(org if active_org else {}))
    bearer = {"authorization": f"Bearer {token}"}
    deliver(call, "user.created", user_data(who, f"{who}@example.com"))
    client = get_redis()
    assert client is not None

    def naming() -> list[str]:
        return sorted(scan_all(client, f"*{who}*"))

    searched = call("keywords", "POST", "/api/keywords", headers=bearer, json_body=SEARCH)
    assert searched.status == 200, searched.text
    assert naming() == [f"rate:keywords:u:{who}"]
    deliver(call, "user.deleted", {"id": who, "deleted": True})
    assert naming() == []
    searched = call("keywords", "POST", "/api/keywords", headers=bearer, json_body=SEARCH)
    refused_as_deleted(searched, "Authentication required. Please sign in to use KeyFlash.")
    assert naming() == []


@pytest.mark.parametrize("before", ["nothing", "delete_me"])
def test_an_id_clerk_deleted_with_no_row_here_is_refused_too(
    call: Caller, admin_conn: psycopg.Connection[Any], before: str
) -> None:
    """The deletion finds no row (never created here, or already erased by DELETE /api/me):
    it still marks the id deleted in Clerk, and no session of it provisions."""
    if before == "delete_me":
        assert call("me", "DELETE", "/api/me", user="user_a").status == 200
    deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    refused_as_deleted(call("me", "GET", "/api/me", user="user_a"))
    searched = call("keywords", "POST", "/api/keywords", user="user_a", json_body=SEARCH)
    refused_as_deleted(searched, "Authentication required. Please sign in to use KeyFlash.")
    nothing_names(admin_conn, "user_a")


def test_after_delete_me_the_person_signs_in_again_until_clerk_deletes_them(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """DELETE /api/me keeps the Clerk account: the next sign-in is a fresh account, however
    often. Only Clerk's own deletion ends the id."""
    for _ in range(2):
        assert call("me", "GET", "/api/me", user="user_a").status == 200
        assert call("me", "DELETE", "/api/me", user="user_a").status == 200
    assert call("me", "GET", "/api/me", user="user_a").status == 200
    deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    refused_as_deleted(call("me", "GET", "/api/me", user="user_a"))
    nothing_names(admin_conn, "user_a")


def paused_erasure(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the webhook's erasure hold its transaction open once it has run, until released:
    (erased, release)."""
    erased, release = threading.Event(), threading.Event()
    real_erase = accounts.erase

    def erase_then_wait(conn: Conn, user_id: str, **options: Any) -> Any:
        erasure = real_erase(conn, user_id, **options)
        erased.set()
        assert release.wait(30)  # what it locked and wrote stays uncommitted until then
        return erasure

    monkeypatch.setattr(accounts, "erase", erase_then_wait)
    return erased, release


def in_thread(work: Any) -> Any:
    asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum wants a loop per thread
    return work()


def test_a_first_search_blocked_by_the_deletion_leaves_no_row(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search's get-or-create-and-reserve waits on the row the deletion's erasure locked,
    finds it gone once that commits and runs again: the id's tombstone refuses it, no row."""
    deliver(lambda_only, "user.created", user_data("user_a", "a@example.com"))
    erased, release = paused_erasure(monkeypatch)
    token = lambda_only.token("user_a", email="a@example.com")
    bearer = {"authorization": f"Bearer {token}"}
    with ThreadPoolExecutor(2) as pool:
        deletion = pool.submit(
            in_thread, lambda: deliver(lambda_only, "user.deleted", {"id": "user_a"})[0]
        )
        assert erased.wait(30)
        searching = pool.submit(
            in_thread,
            lambda: lambda_only("keywords", "POST", "/api/keywords", headers=bearer,
                                json_body=SEARCH),
        )  # fmt: skip
        waits_for_lock(admin_conn, 'UPDATE users SET "keywordSearchesThisMonth"')
        release.set()
        assert deletion.result().status == 200
        refused_as_deleted(
            searching.result(), "Authentication required. Please sign in to use KeyFlash."
        )
    nothing_names(admin_conn, "user_a")


def test_a_sign_in_racing_a_deletion_that_found_no_row_leaves_none(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deletion finds no row (the user's creation still retried) while the first sign-in
    creates one: once the deletion commits, it looks again and erases what it finds."""
    erased, release = paused_erasure(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        deletion = pool.submit(
            in_thread, lambda: deliver(lambda_only, "user.deleted", {"id": "user_a"})[0]
        )
        assert erased.wait(30)
        # The deletion is not committed: the sign-in is still a first sign-in.
        assert lambda_only("me", "GET", "/api/me", user="user_a").status == 200
        release.set()
        assert deletion.result().status == 200
    nothing_names(admin_conn, "user_a")
    refused_as_deleted(lambda_only("me", "GET", "/api/me", user="user_a"))


def test_a_sign_in_whose_insert_outlasts_the_deletion_removes_its_row(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any], direct_database_url: str
) -> None:
    """The first sign-in's INSERT read the tombstones before the deletion committed, then
    waited (here on another transaction inserting the same address) until after the deletion
    had looked for a row: the sign-in looks again after its own insert and removes the row."""
    token = lambda_only.token("user_a", email="a@example.com")
    bearer = {"authorization": f"Bearer {token}"}
    with psycopg.connect(direct_database_url) as holder, ThreadPoolExecutor(1) as pool:
        holder.execute(
            'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
            ["user_other", "a@example.com"],
        )
        signing_in = pool.submit(
            in_thread, lambda: lambda_only("me", "GET", "/api/me", headers=bearer)
        )
        waits_for_lock(admin_conn, "INSERT INTO users")
        deleted, _, _ = deliver(lambda_only, "user.deleted", {"id": "user_a"})
        assert deleted.status == 200
        holder.rollback()  # the address is free again: the sign-in's insert goes on
        refused_as_deleted(signing_in.result())
    nothing_names(admin_conn, "user_a")


@pytest.mark.parametrize(("late", "updated_at"), [("user.created", 1000), ("user.updated", 1500)])
def test_a_late_event_after_deleted_brings_nothing_back(
    call: Caller,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    late: str,
    updated_at: int,
) -> None:
    """Clerk never reuses an id: an event for one its user.deleted erased is a late delivery (a
    retry from before the deletion). It is consumed, and nothing about the person comes back."""
    deliver(call, "user.created", stamped("user_a", "a@example.com", 1000))
    deliver(call, "user.deleted", {"id": "user_a", "deleted": True, "object": "user"})
    caplog.set_level(logging.INFO, logger="keyflash")
    result, headers, payload = deliver(call, late, stamped("user_a", "a@example.com", updated_at))
    assert (result.status, result.json) == (200, {"received": True})
    assert email_of("user_a") is None
    assert '"outcome":"after_erasure"' in "\n".join(r.getMessage() for r in caplog.records)
    # Processed without its payload, so Svix stops retrying and the ledger names no one.
    rows = ledger(admin_conn)
    assert len(rows) == 3 and {row[1:] for row in rows} == {("clerk", True, True)}
    replay = call("webhooks_clerk", "POST", PATH, body=payload, headers=headers)
    assert replay.json == {"received": True, "duplicate": True}
    assert email_of("user_a") is None


def test_a_deletion_delivered_before_the_creation_still_wins(call: Caller) -> None:
    """Svix does not order deliveries: a user.created that failed (a 409, a 503) is retried
    after the user.deleted, which found no row to erase. The deletion still marks the id
    erased, so the retried creation brings nothing back."""
    deleted, _, _ = deliver(call, "user.deleted", {"id": "user_z", "deleted": True})
    assert deleted.status == 200
    created, _, _ = deliver(call, "user.created", stamped("user_z", "z@example.com", 1000))
    assert (created.status, created.json) == (200, {"received": True})
    assert email_of("user_z") is None


def test_a_new_identity_with_an_erased_email_is_created(call: Caller) -> None:
    """Only the erased Clerk id is refused: a new sign-up with the same address is a new user."""
    deliver(call, "user.created", user_data("user_a", "a@example.com"))
    deliver(call, "user.deleted", {"id": "user_a", "deleted": True})
    result, _, _ = deliver(call, "user.created", user_data("user_b", "A@example.com"))
    assert result.status == 200 and email_of("user_b") == "A@example.com"


def test_after_delete_me_clerk_events_wait_for_the_next_sign_in(call: Caller) -> None:
    """DELETE /api/me keeps the Clerk account: its events alone never recreate the erased row;
    signing in again provisions a fresh account, which they then keep in step."""
    deliver(call, "user.created", stamped("user_a", "a@example.com", 1000))
    assert call("me", "DELETE", "/api/me", user="user_a").status == 200
    result, _, _ = deliver(call, "user.updated", stamped("user_a", "b@example.com", 2000))
    assert result.status == 200 and email_of("user_a") is None
    assert call("me", "GET", "/api/me", user="user_a").status == 200  # signs in again
    deliver(call, "user.updated", stamped("user_a", "c@example.com", 3000))
    assert email_of("user_a") == "c@example.com"


def test_a_late_update_racing_the_erasure_brings_nothing_back(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """The late delivery reads the row while the erasure holds its lock: it waits, and once the
    erasure commits it finds the row gone and the tombstone there, and creates nothing."""
    deliver(lambda_only, "user.created", stamped("user_a", "a@example.com", 1000))
    erasing, release = threading.Event(), threading.Event()

    def erase_slowly(conn: Conn) -> None:
        accounts.erase(conn, "user_a")  # what user.deleted runs in its transaction
        erasing.set()
        assert release.wait(30)  # the row lock is held until this transaction commits

    def late_update() -> int:
        asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum wants a loop per thread
        data = stamped("user_a", "a@example.com", 1500)
        return deliver(lambda_only, "user.updated", data)[0].status

    with ThreadPoolExecutor(2) as pool:
        erasure = pool.submit(db.transaction, erase_slowly)
        assert erasing.wait(30)
        delivery = pool.submit(late_update)
        waits_for_lock(admin_conn, "FOR UPDATE")
        release.set()
        erasure.result()
        assert delivery.result() == 200
    assert email_of("user_a") is None


def test_no_personal_data_reaches_the_logs(call: Caller, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="keyflash")
    deliver(call, "user.created", user_data("user_secret_id", "private.person@example.com"))
    deliver(call, "user.updated", user_data("user_secret_id", "another.secret@example.com"))
    deliver(call, "user.deleted", {"id": "user_secret_id", "deleted": True})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert '"event":"clerk_webhook"' in logged and '"outcome":"erased"' in logged
    for secret in ("user_secret_id", "private.person", "another.secret"):
        assert secret not in logged
