"""Webhook processing killed between its steps (issue 10): real child processes, SIGKILL.

Each delivery runs `functions.webhooks_<provider>.lambda_handler` in a child interpreter with a
signed Lambda event. A row lock held from an admin transaction stops the child at a chosen statement
inside its transaction (after its ledger claim and, for an erasure, after several writes);
`pg_stat_activity` / `pg_locks` say when it waits there and what it has written. Then it is
SIGKILLed, the lock released, and the tests show:

- no partial state: the user as before, and no ledger row marked processed (the claim rolled
  back with the rest), so the sender's retry runs the event again;
- the redelivery (same event id) applies it exactly once, and a third delivery is a duplicate.

A crash after COMMIT but before the answer is reached for the Clerk erasure, whose answer waits
on a post-commit Redis step (the legacy keys): a frozen Upstash emulator holds the child there.
Stripe's handler has no post-commit step that touches anything (it logs and answers), so that
window cannot be held open without a hook in production code; its effect is the same as a lost
answer, which `tests/functions/test_stripe_webhook.py` covers as a replayed delivery.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from upstash_redis import Redis

from devkit import events
from devkit._host import wait_for
from shared import config, redis
from shared.legacy import bridge, keys
from tests.support.clerk_events import SECRET as CLERK_SECRET
from tests.support.clerk_events import signed_headers
from tests.support.cron import count, rows
from tests.support.http import Caller, Keys, Result
from tests.support.processes import (
    HandlerProcess,
    RowLock,
    UpstashProcess,
    child_env,
    private_upstash,
    wait_for_backend,
    wait_until_settled,
)
from tests.support.stripe_events import SECRET as STRIPE_SECRET
from tests.support.stripe_events import checkout, sign, stripe_event

pytestmark = pytest.mark.faults

STRIPE_PATH = "/api/webhooks/stripe"
CLERK_PATH = "/api/webhooks/clerk"


@pytest.fixture
def webhook_env(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Keys:
    """This process as a warm container of both webhooks (for the redeliveries)."""
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", CLERK_SECRET)
    config.get_settings.cache_clear()
    return api_env


@pytest.fixture
def call(webhook_env: Keys) -> Caller:
    return Caller("lambda_v2", webhook_env)


def takes_the_user_row(query: str) -> bool:
    """The statement that locks or writes the user's row (billing takes it before its claim)."""
    statement = query.strip()
    return statement.startswith("UPDATE users") or (
        statement.startswith("SELECT users.") and statement.endswith("FOR UPDATE")
    )


def application_name() -> str:
    return f"kf-webhook-crash-{uuid.uuid4().hex[:8]}"


def webhook_child(
    module: str, event: dict[str, Any], database_url: str, app: str, **env: str | float | None
) -> HandlerProcess:
    """The webhook's Lambda handler in a child process, configured only by `env`."""
    return HandlerProcess(
        f"functions.{module}",
        event,
        child_env(
            DATABASE_URL=database_url,
            DB_APPLICATION_NAME=app,
            BILLING_ENABLED="true",
            STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
            CLERK_WEBHOOK_SECRET=CLERK_SECRET,
            **env,
        ),
    )


def ledger(conn: psycopg.Connection[Any], event_id: str) -> tuple[Any, ...] | None:
    """(processed, attempts, processedAt, error) of one delivery, or None when not recorded."""
    row = conn.execute(
        'SELECT processed, attempts, "processedAt", error FROM webhook_events WHERE id = %s',
        (event_id,),
    ).fetchone()
    return None if row is None else tuple(row)


# --- Stripe ---------------------------------------------------------------------------------------


def stripe_delivery(event: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The body and headers Stripe sends (a retry is signed afresh, same body)."""
    body = json.dumps(event)
    return body, {"content-type": "application/json", "stripe-signature": sign(body)}


def deliver_stripe(call: Caller, event: dict[str, Any]) -> Result:
    body, headers = stripe_delivery(event)
    return call("webhooks_stripe", "POST", STRIPE_PATH, body=body, headers=headers)


@pytest.mark.parametrize("history", ["first delivery", "after a recorded failure"])
def test_stripe_checkout_killed_mid_transaction_applies_once_on_redelivery(
    call: Caller,
    database_url: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
    history: str,
) -> None:
    """checkout.session.completed (FREE → PRO, fresh monthly counter), killed while it waits on
    our lock of the user's row, which it takes before it claims its ledger row (the order an
    erasure takes the two in): in its transaction, before its claim and its effect."""
    event = stripe_event("checkout.session.completed", checkout(clerk_user_id="user_a"))
    if history == "after a recorded failure":
        # Delivered before the user existed: recorded as failed, owed a retry.
        assert deliver_stripe(call, event).status == 500
    admin_conn.execute(
        """INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "createdAt",
               "updatedAt") VALUES ('user_a', 'a@example.com', 'FREE', 12, now(), now())"""
    )
    users_before = rows(admin_conn, "users")
    ledger_before = ledger(admin_conn, event["id"])
    app = application_name()

    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = 'user_a'") as lock:
        body, headers = stripe_delivery(event)
        request = events.http_api_v2("POST", STRIPE_PATH, headers=headers, body=body)
        with webhook_child("webhooks_stripe", request, database_url, app) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert takes_the_user_row(blocked.query)
            assert blocked.wrote == frozenset()  # the user's row first, then the claim
            assert child.sigkill() == -9 and not child.answered()
        lock.release()
        wait_until_settled(admin_conn, app)

    # Nothing of the dead delivery survived: the user as before, the ledger as before.
    assert rows(admin_conn, "users") == users_before
    assert ledger(admin_conn, event["id"]) == ledger_before
    assert ledger_before is None or ledger_before[0] is False
    print(
        f"stripe/{history}: killed pid {child.pid} in {blocked.query.split()[:2]}, having "
        f"written {sorted(blocked.wrote)}; ledger after the kill: {ledger_before}"
    )

    redelivered = deliver_stripe(call, event)
    assert (redelivered.status, redelivered.json) == (200, {"received": True})
    user = admin_conn.execute(
        """SELECT tier, "subscriptionStatus", "stripeCustomerId", "keywordSearchesThisMonth"
           FROM users WHERE id = 'user_a'"""
    ).fetchone()
    assert user == ("PRO", "active", "cus_1", 0)
    processed = ledger(admin_conn, event["id"])
    attempts = 1 if ledger_before is None else ledger_before[1] + 1
    assert processed is not None and processed[:2] == (True, attempts)

    # The user searches as PRO; a third delivery must not start their month again.
    admin_conn.execute("""UPDATE users SET "keywordSearchesThisMonth" = 5 WHERE id = 'user_a'""")
    after = rows(admin_conn, "users")
    third = deliver_stripe(call, event)
    assert (third.status, third.json) == (200, {"received": True, "duplicate": True})
    assert rows(admin_conn, "users") == after
    assert ledger(admin_conn, event["id"]) == processed


# --- Clerk ----------------------------------------------------------------------------------------


def clerk_delivery(kind: str, data: dict[str, Any], msg_id: str) -> tuple[str, dict[str, str]]:
    """Body and Svix headers; Svix retries keep the message id and sign afresh."""
    payload = json.dumps({"type": kind, "object": "event", "data": data})
    return payload, signed_headers(payload, msg_id=msg_id)


def deliver_clerk(call: Caller, kind: str, data: dict[str, Any], msg_id: str) -> Result:
    body, headers = clerk_delivery(kind, data, msg_id)
    return call("webhooks_clerk", "POST", CLERK_PATH, body=body, headers=headers)


def seed_account(conn: psycopg.Connection[Any], user_id: str) -> None:
    """A user with history, usage rows and a flag that names them: what an erasure touches."""
    conn.execute(
        """INSERT INTO users (id, email, "createdAt", "updatedAt")
           VALUES (%(u)s, %(u)s || '@example.com', now(), now())""",
        {"u": user_id},
    )
    conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
               provider, "responseTime", "ipAddress", "userAgent")
           SELECT %(u)s || '-h' || g, %(u)s, ARRAY['k'], 'US', 'en', 'exact', 'mock', 10,
                  '203.0.113.0', 'agent' FROM generate_series(1, 3) g""",
        {"u": user_id},
    )
    conn.execute(
        """INSERT INTO api_usage (id, "userId", endpoint, method, "statusCode", duration)
           SELECT %(u)s || '-a' || g, %(u)s, '/api/keywords', 'POST', 200, 5
           FROM generate_series(1, 4) g""",
        {"u": user_id},
    )
    conn.execute(
        """INSERT INTO feature_flags (id, key, enabled, "allowedUsers", "updatedAt")
           VALUES ('flag_1', 'beta', true, ARRAY[%(u)s, 'user_other'], now())""",
        {"u": user_id},
    )


def personal_data(conn: psycopg.Connection[Any], user_id: str) -> dict[str, Any]:
    """What is stored about the user, table by table."""
    return {
        "users": count(conn, "SELECT count(*) FROM users WHERE id = %s", user_id),
        "history linked": count(
            conn, 'SELECT count(*) FROM search_history WHERE "userId" = %s', user_id
        ),
        "history with ip": count(
            conn, 'SELECT count(*) FROM search_history WHERE "ipAddress" IS NOT NULL'
        ),
        "api_usage": count(conn, 'SELECT count(*) FROM api_usage WHERE "userId" = %s', user_id),
        "flags naming": count(
            conn, 'SELECT count(*) FROM feature_flags WHERE %s = ANY("allowedUsers")', user_id
        ),
    }


ERASED = {"users": 0, "history linked": 0, "history with ip": 0, "api_usage": 0, "flags naming": 0}


def test_clerk_user_deleted_killed_mid_erasure_erases_once_on_redelivery(
    call: Caller,
    database_url: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """user.deleted, killed while its flag update waits on our lock: by then it has claimed the
    delivery, locked the user, anonymised history and deleted usage rows, all uncommitted."""
    seed_account(admin_conn, "user_d")
    before = personal_data(admin_conn, "user_d")
    assert before == {
        "users": 1, "history linked": 3, "history with ip": 3, "api_usage": 4, "flags naming": 1,
    }  # fmt: skip
    msg_id = f"msg_{uuid.uuid4().hex[:12]}"
    data = {"id": "user_d", "deleted": True, "object": "user"}
    app = application_name()

    with RowLock(direct_database_url, "SELECT id FROM feature_flags WHERE id = 'flag_1'") as lock:
        body, headers = clerk_delivery("user.deleted", data, msg_id)
        request = events.http_api_v2("POST", CLERK_PATH, headers=headers, body=body)
        with webhook_child("webhooks_clerk", request, database_url, app) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert blocked.query.lstrip().startswith("UPDATE feature_flags")
            assert {"webhook_events", "search_history", "api_usage"} <= blocked.wrote
            assert child.sigkill() == -9 and not child.answered()
        lock.release()
        wait_until_settled(admin_conn, app)

    assert personal_data(admin_conn, "user_d") == before  # all of it rolled back
    assert ledger(admin_conn, msg_id) is None  # so the retry is a first delivery
    print(f"clerk/user.deleted: killed pid {child.pid} having written {sorted(blocked.wrote)}")

    redelivered = deliver_clerk(call, "user.deleted", data, msg_id)
    assert (redelivered.status, redelivered.json) == (200, {"received": True})
    assert personal_data(admin_conn, "user_d") == ERASED
    assert admin_conn.execute(
        """SELECT "allowedUsers" FROM feature_flags WHERE id = 'flag_1'"""
    ).fetchone() == (["user_other"],)
    processed = ledger(admin_conn, msg_id)
    assert processed is not None and processed[:2] == (True, 1)

    third = deliver_clerk(call, "user.deleted", data, msg_id)
    assert (third.status, third.json) == (200, {"received": True, "duplicate": True})
    assert ledger(admin_conn, msg_id) == processed


def test_clerk_user_updated_killed_mid_transaction_applies_once_on_redelivery(
    call: Caller,
    database_url: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """user.updated (new primary email), killed while its UPDATE waits on the user's row."""
    admin_conn.execute(
        """INSERT INTO users (id, email, "createdAt", "updatedAt")
           VALUES ('user_u', 'old@example.com', now(), now())"""
    )
    before = rows(admin_conn, "users")
    msg_id = f"msg_{uuid.uuid4().hex[:12]}"
    data = {
        "id": "user_u",
        "email_addresses": [{"id": "idn_1", "email_address": "new@example.com"}],
        "primary_email_address_id": "idn_1",
    }
    app = application_name()

    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = 'user_u'") as lock:
        body, headers = clerk_delivery("user.updated", data, msg_id)
        request = events.http_api_v2("POST", CLERK_PATH, headers=headers, body=body)
        with webhook_child("webhooks_clerk", request, database_url, app) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert takes_the_user_row(blocked.query)
            assert "webhook_events" in blocked.wrote
            assert child.sigkill() == -9 and not child.answered()
        lock.release()
        wait_until_settled(admin_conn, app)

    assert rows(admin_conn, "users") == before
    assert ledger(admin_conn, msg_id) is None
    print(f"clerk/user.updated: killed pid {child.pid} having written {sorted(blocked.wrote)}")

    assert deliver_clerk(call, "user.updated", data, msg_id).json == {"received": True}
    email = admin_conn.execute("SELECT email FROM users WHERE id = 'user_u'").fetchone()
    assert email == ("new@example.com",)
    after = rows(admin_conn, "users")
    third = deliver_clerk(call, "user.updated", data, msg_id)
    assert third.json == {"received": True, "duplicate": True}
    assert rows(admin_conn, "users") == after
    assert ledger(admin_conn, msg_id)[:2] == (True, 1)  # type: ignore[index]


# --- Clerk: killed after COMMIT, before the answer ------------------------------------------------


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[UpstashProcess]:
    """An Upstash emulator process (over a private redis-server when installed)."""
    with private_upstash(tmp_path) as upstash:
        yield upstash


def legacy_keys_of(client: Redis, user_id: str) -> list[str]:
    """The user's legacy keys that the test seeded and erasure must delete."""
    named = [keys.user(user_id), keys.saved_searches(user_id)]
    _, usage = client.scan(0, match=f"usage:{user_id}:*", count=1000)
    return sorted([key for key in named if client.exists(key)] + list(usage))


def test_clerk_user_deleted_killed_after_commit_still_erases_the_legacy_keys(
    call: Caller,
    database_url: str,
    admin_conn: psycopg.Connection[Any],
    frozen_redis: UpstashProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The erasure commits, then the child deletes the user's legacy Redis keys before it
    answers. Redis is frozen, so the child waits there; it is killed in that window.

    The committed erasure must not lose the legacy keys' deletion: it has to be recorded with
    the erasure (the dual-write outbox), so the repair job finishes it. A redelivery is a
    duplicate and cannot be what finishes it.
    """
    client = Redis(url=frozen_redis.url, token=frozen_redis.token, rest_retries=0)
    client.set(keys.user("user_k"), json.dumps({"clerkUserId": "user_k", "email": "k@x.io"}))
    client.set(keys.email("k@x.io"), "user_k")
    client.sadd(keys.saved_searches("user_k"), "s1")
    client.set("usage:user_k:2026-11", "17")
    legacy = legacy_keys_of(client, "user_k")
    assert len(legacy) == 3
    admin_conn.execute(
        """INSERT INTO users (id, email, "createdAt", "updatedAt")
           VALUES ('user_k', 'k@x.io', now(), now())"""
    )
    msg_id = f"msg_{uuid.uuid4().hex[:12]}"
    data = {"id": "user_k", "deleted": True}
    app = application_name()

    frozen_redis.freeze()
    body, headers = clerk_delivery("user.deleted", data, msg_id)
    request = events.http_api_v2("POST", CLERK_PATH, headers=headers, body=body)
    redis_env = {
        "UPSTASH_REDIS_REST_URL": frozen_redis.url,
        "UPSTASH_REDIS_REST_TOKEN": frozen_redis.token,
        "REDIS_TIMEOUT_S": 30,  # Upstash slow, well inside the function's time limit
    }
    with webhook_child("webhooks_clerk", request, database_url, app, **redis_env) as child:

        def committed() -> bool:
            row = ledger(admin_conn, msg_id)
            return not child.alive() or (row is not None and row[0] is True)

        assert wait_for(committed, timeout=30)
        assert child.alive() and not child.answered(), child.stderr()
        assert count(admin_conn, "SELECT count(*) FROM users WHERE id = 'user_k'") == 0
        assert child.sigkill() == -9
    frozen_redis.thaw()

    # The erasure is committed; the legacy keys are still there, and recorded as owed.
    assert legacy_keys_of(client, "user_k") == legacy
    pending = admin_conn.execute(
        "SELECT key, kind FROM legacy_repairs WHERE \"userId\" = 'user_k'"
    ).fetchall()
    assert pending == [(keys.erasure("user_k"), "erasure")]
    print(f"clerk/after commit: killed pid {child.pid}; {len(legacy)} legacy keys left, owed")

    # The sender's retry is a duplicate (the erasure is done) ...
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", frozen_redis.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", frozen_redis.token)
    config.get_settings.cache_clear()
    redis.reset_redis()
    again = deliver_clerk(call, "user.deleted", data, msg_id)
    assert again.json == {"received": True, "duplicate": True}
    # ... and the repair job finishes what the dead container could not.
    summary = bridge.repair_pending()
    assert (summary.repaired, summary.remaining) == (1, 0)
    assert legacy_keys_of(client, "user_k") == []
    assert not client.exists(keys.email("k@x.io"))
