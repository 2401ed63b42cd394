"""organization.deleted killed mid-transaction (a real child process, SIGKILL): nothing of the
deletion stays, the ledger does not hold the delivery, and Svix's retry applies it once.

A row lock from an admin transaction on one of the organization's history rows stops the child
in its removal statement, after the ledger claim, the tombstone and the team's searches,
reservations and memberships have been written (uncommitted).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from devkit import events
from shared import config
from tests.support.clerk_events import SECRET, signed_headers
from tests.support.cron import rows
from tests.support.http import Caller, Keys
from tests.support.processes import (
    HandlerProcess,
    RowLock,
    child_env,
    wait_for_backend,
    wait_until_settled,
)

pytestmark = pytest.mark.faults

PATH = "/api/webhooks/clerk"
TABLES = ("organizations", "organization_members", "saved_searches", "keyword_reservations")


@pytest.fixture
def call(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Caller:
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", SECRET)
    config.get_settings.cache_clear()
    return Caller("lambda_v2", api_env)


def seed_team(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """INSERT INTO users (id, email, "updatedAt") VALUES ('user_a', 'a@example.com', now())"""
    )
    conn.execute(
        """INSERT INTO organizations (id, name, "updatedAt") VALUES ('org_a', 'Acme', now())"""
    )
    conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, "updatedAt")
           VALUES ('org_a', 'user_a', 'org:admin', now())"""
    )
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", "organizationId", name, keywords,
               "updatedAt") VALUES ('team_1', 'user_a', 'org_a', 'Team', '{a}', now())"""
    )
    conn.execute(
        """INSERT INTO keyword_reservations (id, "userId", "organizationId", keywords,
               "reservedAt", "expiresAt")
           VALUES ('res_1', 'user_a', 'org_a', 3, now(), now() + interval '1 minute')"""
    )
    conn.execute(
        """INSERT INTO search_history (id, "userId", "organizationId", keywords, location,
               language, "matchType", provider, "responseTime")
           VALUES ('hist_1', 'user_a', 'org_a', '{k}', 'US', 'en', 'exact', 'mock', 5)"""
    )


def state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {
        table: rows(conn, table, '"organizationId", "userId"' if "members" in table else "id")
        for table in TABLES
    }
    found["history"] = conn.execute(
        'SELECT id, "userId", "organizationId" FROM search_history ORDER BY id'
    ).fetchall()
    return found


def ledger(conn: psycopg.Connection[Any], msg_id: str) -> tuple[Any, ...] | None:
    row = conn.execute(
        "SELECT processed, attempts FROM webhook_events WHERE id = %s", [msg_id]
    ).fetchone()
    return None if row is None else tuple(row)


def test_organization_deleted_killed_mid_removal_applies_once_on_redelivery(
    call: Caller,
    database_url: str,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
) -> None:
    seed_team(admin_conn)
    before = state(admin_conn)
    msg_id = f"msg_{uuid.uuid4().hex[:12]}"
    body = json.dumps({"type": "organization.deleted", "data": {"id": "org_a", "deleted": True}})
    app = f"kf-org-crash-{uuid.uuid4().hex[:8]}"
    env = child_env(DATABASE_URL=database_url, DB_APPLICATION_NAME=app, CLERK_WEBHOOK_SECRET=SECRET)

    with RowLock(direct_database_url, "SELECT id FROM search_history WHERE id = 'hist_1'") as lock:
        request = events.http_api_v2(
            "POST", PATH, headers=signed_headers(body, msg_id=msg_id), body=body
        )
        with HandlerProcess("functions.webhooks_clerk", request, env) as child:
            blocked = wait_for_backend(admin_conn, child, app, lock)
            assert "search_history" in blocked.query
            assert {"webhook_events", *TABLES} <= blocked.wrote
            assert child.sigkill() == -9 and not child.answered()
        lock.release()
        wait_until_settled(admin_conn, app)

    assert state(admin_conn) == before  # the tombstone and every removal rolled back
    assert ledger(admin_conn, msg_id) is None  # so Svix's retry is a first delivery

    retry = call(
        "webhooks_clerk", "POST", PATH, body=body, headers=signed_headers(body, msg_id=msg_id)
    )
    assert (retry.status, retry.json) == (200, {"received": True})
    after = state(admin_conn)
    assert after["history"] == [("hist_1", "user_a", None)]
    assert after["saved_searches"] == after["keyword_reservations"] == []
    assert ledger(admin_conn, msg_id) == (True, 1)
    third = call(
        "webhooks_clerk", "POST", PATH, body=body, headers=signed_headers(body, msg_id=msg_id)
    )
    assert (third.status, third.json) == (200, {"received": True, "duplicate": True})
    assert state(admin_conn) == after
