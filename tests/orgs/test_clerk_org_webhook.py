"""POST /api/webhooks/clerk with Clerk's organization and membership events: the mirror.

Deliveries are signed with svix's own code (tests/support/clerk_events.py) and applied through
the webhook ledger; every order of a membership's events ends in the state of the newest one,
a deleted organization stays deleted, and its deletion removes its data.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit import clerk_org
from shared import config, db
from shared.repositories import organizations, users
from tests.support.clerk_events import PATH, SECRET, deliver, signed_headers
from tests.support.http import Caller, Keys

FIXTURES = Path(__file__).parents[1] / "fixtures" / "clerk"
STORY = (
    "organization.created",
    "organizationMembership.created",
    "organization.updated",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organization.deleted",
)


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", SECRET)
    config.get_settings.cache_clear()


@pytest.fixture
def hook(api_env: Keys) -> Caller:
    """One invocation style (the suite's `call` covers the others where it matters)."""
    return Caller("lambda_v2", api_env)


def org_data(org_id: str, name: str, updated_at: int, slug: str | None = None) -> dict[str, Any]:
    return clerk_org.organization(org_id, name, slug=slug, updated_at=updated_at)


def member_data(
    org_id: str,
    user_id: str,
    role: str,
    updated_at: int,
    *,
    org_at: int = 1,
    perms: Any = (),
    joined: int = 0,
) -> dict[str, Any]:
    org = org_data(org_id, "Acme", org_at)
    return clerk_org.membership(
        org, user_id, role, updated_at=updated_at, created_at=joined, permissions=perms
    )


def org_row(conn: psycopg.Connection[Any], org_id: str) -> tuple[Any, ...] | None:
    """(name, slug, clerkUpdatedAt, deleted)"""
    return conn.execute(
        'SELECT name, slug, "clerkUpdatedAt", "deletedAt" IS NOT NULL FROM organizations'
        " WHERE id = %s",
        [org_id],
    ).fetchone()


def member_row(conn: psycopg.Connection[Any], org_id: str, user_id: str) -> tuple[Any, ...] | None:
    """(role, permissions, deleted)"""
    return conn.execute(
        'SELECT role, permissions, "deletedAt" IS NOT NULL FROM organization_members'
        ' WHERE "organizationId" = %s AND "userId" = %s',
        [org_id, user_id],
    ).fetchone()


def ledger(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT type, provider, processed, coalesce(payload, 'null') = 'null'"
        ' FROM webhook_events ORDER BY "createdAt", type'
    ).fetchall()


def at(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).replace(tzinfo=None)


def fixture(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{kind}.json").read_text())
    return loaded


# --- Clerk's documented shapes, end to end ------------------------------------------------------


def test_the_documented_events_mirror_an_organizations_life(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    events = {kind: fixture(kind) for kind in STORY}
    org_id = events["organization.created"]["data"]["id"]
    admin = events["organizationMembership.created"]["data"]["public_user_data"]["user_id"]
    member = events["organizationMembership.updated"]["data"]["public_user_data"]["user_id"]
    states = []
    for kind in STORY:
        body = json.dumps(events[kind])
        result = call("webhooks_clerk", "POST", PATH, body=body, headers=signed_headers(body))
        assert (result.status, result.json) == (200, {"received": True}), (kind, result.text)
        states.append(
            (
                org_row(admin_conn, org_id),
                member_row(admin_conn, org_id, admin),
                member_row(admin_conn, org_id, member),
            )
        )
    created = events["organization.created"]["data"]["updated_at"]
    renamed = events["organization.updated"]["data"]["updated_at"]
    admin_permissions = events["organizationMembership.created"]["data"]["permissions"]
    member_permissions = ["org:sys_memberships:read", "org:searches:manage"]
    assert states[0] == (
        ("Northwind Research", "northwind-research", at(created), False),
        None,
        None,
    )
    assert states[1][1:] == (("org:admin", admin_permissions, False), None)
    assert states[2][0] == ("Northwind Keyword Research", "northwind-kw", at(renamed), False)
    assert states[3][2] == ("org:member", member_permissions, False)
    assert states[4][1:] == (
        ("org:admin", admin_permissions, False),
        ("org:member", member_permissions, True),
    )
    # organization.deleted: a tombstone without name or slug; every membership tombstoned.
    assert states[5] == (
        ("", None, at(renamed), True),
        ("org:admin", admin_permissions, True),
        ("org:member", member_permissions, True),
    )
    assert ledger(admin_conn) == [(kind, "clerk", True, True) for kind in STORY]


def test_a_replayed_delivery_is_a_duplicate_and_changes_nothing(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    created, headers, payload = deliver(
        hook, "organizationMembership.created", member_data("org_a", "user_a", "org:admin", 1000)
    )
    assert created.status == 200
    deliver(
        hook, "organizationMembership.deleted", member_data("org_a", "user_a", "org:admin", 2000)
    )
    replay = hook("webhooks_clerk", "POST", PATH, body=payload, headers=headers)
    assert (replay.status, replay.json) == (200, {"received": True, "duplicate": True})
    assert member_row(admin_conn, "org_a", "user_a") == ("org:admin", [], True)
    assert admin_conn.execute("SELECT count(*) FROM webhook_events").fetchone() == (2,)


# --- ordering -------------------------------------------------------------------------------

# (kind, role, updated_at) per event of one membership; the story's newest event decides.
STORIES = {
    "removed": (
        [
            ("organizationMembership.created", "org:admin", 1000),
            ("organizationMembership.updated", "org:member", 2000),
            ("organizationMembership.deleted", "org:member", 3000),
        ],
        ("org:member", True),
    ),
    # Clerk's deleted membership may carry the stamp of its last update: the deletion wins.
    "removed_same_stamp": (
        [
            ("organizationMembership.created", "org:admin", 1000),
            ("organizationMembership.updated", "org:member", 2000),
            ("organizationMembership.deleted", "org:member", 2000),
        ],
        ("org:member", True),
    ),
    "removed_then_invited_again": (
        [
            ("organizationMembership.created", "org:admin", 1000),
            ("organizationMembership.deleted", "org:admin", 2000),
            ("organizationMembership.created", "org:member", 3000),
        ],
        ("org:member", False),
    ),
}


@pytest.mark.parametrize(
    ("story", "order"),
    [
        (name, order)
        for name, (events, _) in STORIES.items()
        for order in itertools.permutations(range(len(events)))
    ],
)
def test_every_delivery_order_ends_in_the_newest_events_state(
    hook: Caller, admin_conn: psycopg.Connection[Any], story: str, order: tuple[int, ...]
) -> None:
    events, (role, deleted) = STORIES[story]
    for index in order:
        kind, sent_role, stamp = events[index]
        result, _, _ = deliver(hook, kind, member_data("org_a", "user_a", sent_role, stamp))
        assert (result.status, result.json) == (200, {"received": True}), result.text
    assert member_row(admin_conn, "org_a", "user_a") == (role, [], deleted)
    assert (membership_seen("org_a", "user_a") is not None) is not deleted


def membership_seen(org_id: str, user_id: str) -> Any:
    return db.run(lambda conn: organizations.membership(conn, org_id, user_id))


def test_a_membership_before_its_organization_creates_it_and_order_still_rules(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    deliver(
        hook,
        "organizationMembership.created",
        member_data("org_a", "user_a", "org:admin", 1000, org_at=1000),
    )
    assert org_row(admin_conn, "org_a") == ("Acme", None, at(1000), False)
    # The organization's own created event, older than the copy already applied: stale.
    deliver(hook, "organization.created", org_data("org_a", "Old name", 500))
    assert org_row(admin_conn, "org_a") == ("Acme", None, at(1000), False)
    deliver(hook, "organization.updated", org_data("org_a", "Acme Ltd", 3000, slug="acme"))
    # A membership event carrying an older copy of the organization leaves its name alone.
    deliver(
        hook,
        "organizationMembership.updated",
        member_data("org_a", "user_a", "org:member", 2000, org_at=1500),
    )
    assert org_row(admin_conn, "org_a") == ("Acme Ltd", "acme", at(3000), False)
    assert member_row(admin_conn, "org_a", "user_a") == ("org:member", [], False)


def test_members_joined_when_clerk_says_and_a_rejoin_is_a_new_join(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """`joinedAt` and the members' order are Clerk's `created_at` of the membership, not when
    its event arrived: Svix delivers late and out of order. A membership removed and created
    again joined anew; a late event of the old membership changes nothing."""
    jan_2023, jun_2024, jan_2025 = 1672531200000, 1717200000000, 1735689600000

    def members() -> list[tuple[str, str]]:
        token = hook.token("user_a")  # no active org: the mirror's membership lets A read
        answer = hook("org_members", "GET", "/api/orgs/org_a/members",
                      headers={"authorization": f"Bearer {token}"})  # fmt: skip
        assert answer.status == 200, answer.text
        return [(m["userId"], m["joinedAt"]) for m in answer.json["members"]]

    def send(kind: str, user: str, updated_at: int, joined: int) -> None:
        sent = member_data("org_a", user, "org:member", updated_at, joined=joined)
        result, _, _ = deliver(hook, kind, sent)
        assert (result.status, result.json) == (200, {"received": True}), result.text

    send("organizationMembership.created", "user_a", jun_2024, jun_2024)
    send("organizationMembership.created", "user_b", jan_2023, jan_2023)  # delivered after A's
    assert members() == [
        ("user_b", "2023-01-01T00:00:00.000Z"),
        ("user_a", "2024-06-01T00:00:00.000Z"),
    ]
    send("organizationMembership.deleted", "user_b", jan_2025 - 2000, jan_2023)
    send("organizationMembership.created", "user_b", jan_2025, jan_2025)
    send("organizationMembership.updated", "user_b", jan_2025 - 3000, jan_2023)  # old, late
    assert members() == [
        ("user_a", "2024-06-01T00:00:00.000Z"),
        ("user_b", "2025-01-01T00:00:00.000Z"),
    ]
    exported = admin_conn.execute(
        'SELECT "createdAt" FROM organization_members WHERE "userId" = %s', ["user_b"]
    ).fetchone()
    assert exported == (at(jan_2025),)  # the export's `createdAt` (joined)


def test_an_organization_first_seen_in_a_token_takes_clerks_name(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    db.run(lambda conn: organizations.ensure(conn, "org_a", slug="acme"))
    deliver(hook, "organization.created", org_data("org_a", "Acme Inc", 1000, slug="acme-inc"))
    assert org_row(admin_conn, "org_a") == ("Acme Inc", "acme-inc", at(1000), False)


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("admin", "org:admin"),
        ("basic_member", "org:member"),
        ("org:admin", "org:admin"),
        ("org:billing_lead", "org:billing_lead"),
        ("viewer", "org:viewer"),
    ],
)
def test_roles_are_stored_as_the_token_spells_them(
    hook: Caller, admin_conn: psycopg.Connection[Any], sent: str, stored: str
) -> None:
    perms = ["org:searches:manage", "org:billing:manage", "org:searches:manage"]
    data = member_data("org_a", "user_a", sent, 1000, perms=perms)
    deliver(hook, "organizationMembership.created", data)
    assert member_row(admin_conn, "org_a", "user_a") == (
        stored,
        ["org:searches:manage", "org:billing:manage"],
        False,
    )


# --- organization.deleted ------------------------------------------------------------------------


def deleted(org_id: str) -> dict[str, Any]:
    return {"id": org_id, "object": "organization", "deleted": True}


def test_a_deleted_organization_ignores_every_later_event(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    deliver(hook, "organizationMembership.created", member_data("org_a", "user_a", "org:admin", 10))
    deliver(hook, "organization.deleted", deleted("org_a"))
    for kind, data in [
        ("organization.updated", org_data("org_a", "Back again", 10**12)),
        ("organization.created", org_data("org_a", "Back again", 10**12)),
        ("organizationMembership.created", member_data("org_a", "user_b", "org:admin", 10**12)),
        ("organizationMembership.updated", member_data("org_a", "user_a", "org:admin", 10**12)),
        ("organization.deleted", deleted("org_a")),
    ]:
        result, _, _ = deliver(hook, kind, data)
        assert (result.status, result.json) == (200, {"received": True}), kind
    assert org_row(admin_conn, "org_a") == ("", None, at(1), True)  # the membership's copy
    assert member_row(admin_conn, "org_a", "user_a") == ("org:admin", [], True)
    assert member_row(admin_conn, "org_a", "user_b") is None
    assert db.run(lambda conn: organizations.ensure(conn, "org_a")) is None


def test_a_deletion_delivered_first_still_wins(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    deliver(hook, "organization.deleted", deleted("org_a"))
    deliver(hook, "organization.created", org_data("org_a", "Acme", 1000))
    deliver(hook, "organizationMembership.created", member_data("org_a", "user_a", "org:admin", 10))
    assert org_row(admin_conn, "org_a") == ("", None, None, True)
    assert member_row(admin_conn, "org_a", "user_a") is None


def _history(conn: psycopg.Connection[Any], user_id: str | None, org_id: str | None) -> None:
    conn.execute(
        """INSERT INTO search_history (id, "userId", "organizationId", keywords, location,
               language, "matchType", provider, "responseTime")
           VALUES (gen_random_uuid()::text, %s, %s, '{k}', 'US', 'en', 'exact', 'mock', 5)""",
        (user_id, org_id),
    )


def _team_search(conn: psycopg.Connection[Any], org_id: str, user_id: str | None) -> None:
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", "organizationId", name, keywords,
               "updatedAt") VALUES (gen_random_uuid()::text, %s, %s, 'Team', '{a}', now())""",
        (user_id, org_id),
    )


def _reservation(conn: psycopg.Connection[Any], user_id: str, org_id: str | None) -> None:
    conn.execute(
        """INSERT INTO keyword_reservations (id, "userId", "organizationId", keywords,
               "reservedAt", "expiresAt")
           VALUES (gen_random_uuid()::text, %s, %s, 3, now(), now() + interval '1 minute')""",
        (user_id, org_id),
    )


def test_deletion_removes_the_organizations_data_and_nothing_else(
    hook: Caller, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    for user_id in ("user_a", "user_b"):
        db.run(lambda s, u=user_id: users.create(s, u, f"{u}@example.com"))
    for org_id in ("org_a", "org_b"):  # org_b: the control, a team of the same people
        for user_id, role in (("user_a", "org:admin"), ("user_b", "org:member")):
            deliver(hook, "organizationMembership.created", member_data(org_id, user_id, role, 10))
        _team_search(admin_conn, org_id, "user_a")
        _team_search(admin_conn, org_id, None)  # its creator was erased
        _reservation(admin_conn, "user_b", org_id)
        _history(admin_conn, "user_a", org_id)
        _history(admin_conn, None, org_id)
    _history(admin_conn, "user_a", None)
    _reservation(admin_conn, "user_a", None)
    admin_conn.execute(
        """INSERT INTO saved_searches (id, "userId", name, keywords, "updatedAt")
           VALUES ('mine', 'user_a', 'Mine', '{a}', now())"""
    )
    admin_conn.execute(
        """UPDATE organizations SET "stripeCustomerId" = 'cus_a', "stripeSubscriptionId" =
           'sub_a', "subscriptionStatus" = 'active', tier = 'PRO' WHERE id = 'org_a'"""
    )
    caplog.set_level(logging.DEBUG, logger="keyflash")

    result, _, _ = deliver(hook, "organization.deleted", deleted("org_a"))

    assert (result.status, result.json) == (200, {"received": True})

    def counts(sql: str) -> tuple[Any, ...] | None:
        return admin_conn.execute(sql).fetchone()

    assert counts(
        """SELECT count(*) FILTER (WHERE "organizationId" = 'org_a'),
                  count(*) FILTER (WHERE "organizationId" = 'org_b'),
                  count(*) FILTER (WHERE "organizationId" IS NULL) FROM saved_searches"""
    ) == (0, 2, 1)
    assert counts(
        """SELECT count(*) FILTER (WHERE "organizationId" = 'org_a'),
                  count(*) FILTER (WHERE "organizationId" = 'org_b'),
                  count(*) FILTER (WHERE "organizationId" IS NULL) FROM keyword_reservations"""
    ) == (0, 1, 1)
    # History: the creator-less team row is gone; the member's row is their own again.
    assert admin_conn.execute(
        """SELECT "userId", "organizationId", count(*) FROM search_history
           GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST"""
    ).fetchall() == [(None, "org_b", 1), ("user_a", None, 2), ("user_a", "org_b", 1)]
    assert counts(
        """SELECT count(*) FILTER (WHERE "deletedAt" IS NOT NULL AND "organizationId" = 'org_a'),
                  count(*) FILTER (WHERE "deletedAt" IS NULL AND "organizationId" = 'org_b')
           FROM organization_members"""
    ) == (2, 2)
    # The tombstone keeps what billing needs to recognise the organization's Stripe events.
    assert counts(
        """SELECT name, slug, "stripeCustomerId", "stripeSubscriptionId", tier::text,
                  "deletedAt" IS NOT NULL FROM organizations WHERE id = 'org_a'"""
    ) == ("", None, "cus_a", "sub_a", "PRO", True)
    assert org_row(admin_conn, "org_b") == ("Acme", None, at(1), False)
    assert membership_seen("org_a", "user_a") is None
    assert membership_seen("org_b", "user_a") is not None
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.getMessage()[:1] == "{"]
    removed = [line for line in logged if line["event"] == "organization_data_removed"]
    assert removed == [
        {
            "event": "organization_data_removed",
            "ts": removed[0]["ts"],
            "requestId": removed[0]["requestId"],
            "searchesDeleted": 2,
            "reservationsDeleted": 1,
            "membersRemoved": 2,
            "historyDeleted": 1,
            "historyDetached": 1,
        }
    ]
    warned = [line for line in logged if line["event"].endswith("_with_live_subscription")]
    assert [line["status"] for line in warned] == ["active"]

    # A second delivery of a deletion (a new Svix message) finds nothing left to do.
    caplog.clear()
    again, _, _ = deliver(hook, "organization.deleted", deleted("org_a"))
    assert (again.status, again.json) == (200, {"received": True})
    assert "_with_live_subscription" not in caplog.text


def test_the_deletion_uses_the_history_index(admin_conn: psycopg.Connection[Any]) -> None:
    """search_history is partitioned and large: the organization's rows are found through the
    partial index on ("organizationId", "searchedAt"), never by scanning every partition."""
    admin_conn.execute("SET enable_seqscan = off")  # an empty table: judge the plan, not costs
    for statement in (
        """EXPLAIN DELETE FROM search_history WHERE "organizationId" = 'org_a'
           AND "userId" IS NULL""",
        """EXPLAIN UPDATE search_history SET "organizationId" = NULL
           WHERE "organizationId" = 'org_a' AND "userId" IS NOT NULL""",
    ):
        plan = "\n".join(row[0] for row in admin_conn.execute(statement).fetchall())
        assert "organizationId_searchedAt_idx" in plan or "organizationid_searchedat" in plan, plan
        assert "Seq Scan" not in plan, plan


# --- concurrency ---------------------------------------------------------------------------


@pytest.fixture
def lambda_only(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Caller]:
    """The Lambda handler, with a connection per concurrent delivery."""
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield Caller("lambda_v2", api_env)
    db.dispose_engine()


def test_racing_membership_events_settle_on_the_newest(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Events of one new organization and membership racing on their own connections: one
    organization row, one membership row, the newest event's state."""
    for round_ in range(4):
        org_id, base = f"org_{round_}", 10_000 * (round_ + 1)
        sent = [
            ("organizationMembership.created", "org:admin", base),
            ("organizationMembership.updated", "org:member", base + 1),
            ("organizationMembership.updated", "org:billing", base + 2),
            ("organizationMembership.deleted", "org:billing", base + 3 - round_ % 2),
        ]
        start = threading.Barrier(len(sent))

        def one(
            event: tuple[str, str, int], barrier: threading.Barrier = start, org_id: str = org_id
        ) -> int:
            asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum wants a loop per thread
            kind, role, stamp = event
            barrier.wait()
            data = member_data(org_id, "user_a", role, stamp, org_at=stamp)
            return deliver(lambda_only, kind, data)[0].status

        with ThreadPoolExecutor(max_workers=len(sent)) as pool:
            assert set(pool.map(one, reversed(sent))) == {200}
        # Round 1 and 3: the deletion carries the last update's stamp and still wins.
        assert member_row(admin_conn, org_id, "user_a") == ("org:billing", [], True)
        assert org_row(admin_conn, org_id) == ("Acme", None, at(base + 3 - round_ % 2), False)


def test_a_deletion_racing_membership_events_leaves_no_live_member(
    lambda_only: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Whichever commits first, a deleted organization ends with every membership tombstoned:
    the membership's upsert of the organization row and the tombstone serialise on that row."""
    for round_ in range(4):
        org_id = f"org_{round_}"
        deliver(lambda_only, "organization.created", org_data(org_id, "Acme", 1))
        sent: list[tuple[str, dict[str, Any]]] = [("organization.deleted", deleted(org_id))]
        sent += [
            ("organizationMembership.created", member_data(org_id, f"user_{i}", "org:admin", 5))
            for i in range(3)
        ]
        start = threading.Barrier(len(sent))

        def one(
            event: tuple[str, dict[str, Any]], barrier: threading.Barrier = start
        ) -> tuple[int, Any]:
            asyncio.set_event_loop(asyncio.new_event_loop())
            barrier.wait()
            result = deliver(lambda_only, *event)[0]
            return result.status, result.json

        with ThreadPoolExecutor(max_workers=len(sent)) as pool:
            outcomes = list(pool.map(one, sent[round_ % 2 :] + sent[: round_ % 2]))
        assert outcomes == [(200, {"received": True})] * len(sent)
        assert org_row(admin_conn, org_id) == ("", None, at(1), True)
        live = admin_conn.execute(
            """SELECT count(*) FROM organization_members
               WHERE "organizationId" = %s AND "deletedAt" IS NULL""",
            [org_id],
        ).fetchone()
        assert live == (0,)


# --- refusals and logs ---------------------------------------------------------------------------

MEMBER = member_data("org_a", "user_a", "org:admin", 1000)


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("organization.created", {"id": "org_a", "updated_at": 1}),  # no name
        ("organization.created", {"id": "org_a", "name": "A"}),  # no updated_at
        ("organization.updated", {"id": "", "name": "A", "updated_at": 1}),
        ("organization.updated", {"id": "org_a", "name": "", "updated_at": 1}),
        ("organization.updated", {"id": "org_a", "name": "A", "updated_at": "1"}),
        ("organization.updated", {"id": "org_a", "name": "A", "updated_at": -1}),
        ("organization.updated", {"id": "org_a", "name": "A" * 300, "updated_at": 1}),
        ("organization.updated", {"id": ["org_a"], "name": "A", "updated_at": 1}),
        ("organization.deleted", {"deleted": True}),
        ("organization.deleted", {"id": None}),
        ("organizationMembership.created", {**MEMBER, "public_user_data": {}}),
        ("organizationMembership.created", {**MEMBER, "public_user_data": None}),
        ("organizationMembership.created", {**MEMBER, "organization": {"id": "org_a"}}),
        ("organizationMembership.created", {**MEMBER, "role": ""}),
        ("organizationMembership.updated", {**MEMBER, "role": None}),
        ("organizationMembership.updated", {**MEMBER, "permissions": "org:x"}),
        ("organizationMembership.updated", {**MEMBER, "permissions": [""]}),
        ("organizationMembership.updated", {**MEMBER, "permissions": ["p"] * 201}),
        ("organizationMembership.deleted", {**MEMBER, "updated_at": 1.5}),
        ("organizationMembership.deleted", {**MEMBER, "updated_at": 10**20}),
        ("organizationMembership.created", {k: v for k, v in MEMBER.items() if k != "created_at"}),
        ("organizationMembership.created", {**MEMBER, "created_at": "1000"}),
        ("organizationMembership.updated", {**MEMBER, "created_at": -1}),
        ("organizationMembership.deleted", []),
    ],
)
def test_signed_but_malformed_organization_events_are_400(
    hook: Caller, admin_conn: psycopg.Connection[Any], kind: str, data: Any
) -> None:
    payload = json.dumps({"type": kind, "data": data})
    result = hook("webhooks_clerk", "POST", PATH, body=payload, headers=signed_headers(payload))
    assert result.status == 400, result.text
    assert (result.json["error"], result.json["message"]) == (
        "Client Error",
        "Invalid webhook payload",
    )
    assert ledger(admin_conn) == []
    assert admin_conn.execute("SELECT count(*) FROM organizations").fetchone() == (0,)


def test_other_organization_events_are_acknowledged_and_ignored(
    hook: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    for kind in ("organizationInvitation.created", "organizationDomain.created"):
        result, _, _ = deliver(hook, kind, {"id": "x", "organization_id": "org_a"})
        assert (result.status, result.json) == (200, {"received": True})
    assert ledger(admin_conn) == []


def test_no_ids_names_or_emails_reach_the_logs(
    hook: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyflash")
    for kind in STORY:
        body = json.dumps(fixture(kind))
        result = hook("webhooks_clerk", "POST", PATH, body=body, headers=signed_headers(body))
        assert result.status == 200, result.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert '"type":"organizationMembership.deleted"' in logged and '"outcome":"deleted"' in logged
    for secret in ("org_2pQf", "user_2pQf", "orgmem_", "Northwind", "northwind", "@example.org"):
        assert secret not in logged
