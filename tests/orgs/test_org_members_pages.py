"""`GET /api/orgs/{orgId}/members` of a large organization (Clerk sets no member limit): keyset
pages (`limit`, `cursor`, `nextCursor`, as `/api/history`) that each stay far under the
platforms' payload limits, list every member exactly once however many, and stay exact while
members join and leave between pages. Through the Lambda handler, the platforms' limits
applied, both lanes."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from shared import db
from shared.contracts.teams import DEFAULT_MEMBERS, MAX_MEMBERS
from tests.support.http import Caller, Keys, Result

pytestmark = pytest.mark.usefixtures("db_env")

ORG = "org_2BigTeam"
READER = "user_2reader"
VERCEL_LIMIT = 4_500_000


@pytest.fixture
def call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def add_members(
    admin: psycopg.Connection[Any], count: int, *, prefix: str = "m", start_ms: int = 0
) -> None:
    """`count` live members with Clerk-length ids, in bulk, seven joining in each millisecond
    (ties on `joinedAt` are the rule in a bulk enrollment)."""
    admin.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, permissions,
               "createdAt", "updatedAt")
           SELECT %(org)s, 'user_' || %(prefix)s || lpad(i::text, 26, '0'), 'org:member',
                  ARRAY['org:members:read'],
                  timestamp '2026-01-01' + (%(start)s + i / 7) * interval '1 millisecond', now()
           FROM generate_series(1, %(count)s) AS i""",
        {"org": ORG, "prefix": prefix, "count": count, "start": start_ms},
    )


@pytest.fixture
def big_team(admin_conn: psycopg.Connection[Any]) -> None:
    admin_conn.execute(
        'INSERT INTO organizations (id, name, "updatedAt") VALUES (%s, %s, now())', (ORG, ORG)
    )


def page(call: Caller, **query: str) -> Result:
    token = call.token(READER, v=2, o={"id": ORG, "rol": "member", "slg": "big"})
    return call(
        "org_members",
        "GET",
        f"/api/orgs/{ORG}/members",
        headers={"authorization": f"Bearer {token}"},
        query=query or None,
    )


def every_page(call: Caller, *, limit: int) -> list[dict[str, Any]]:
    members: list[dict[str, Any]] = []
    query = {"limit": str(limit)}
    while True:
        answer = page(call, **query)
        assert answer.status == 200, answer.text[:300]
        assert len(answer.json["members"]) <= limit
        members += answer.json["members"]
        if "nextCursor" not in answer.json:
            return members
        query["cursor"] = answer.json["nextCursor"]


def live_ids(admin: psycopg.Connection[Any]) -> list[str]:
    rows = admin.execute(
        """SELECT "userId" FROM organization_members
           WHERE "organizationId" = %s AND "deletedAt" IS NULL ORDER BY "createdAt", "userId" """,
        (ORG,),
    ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.usefixtures("big_team")
def test_forty_five_thousand_members_page_completely_each_page_small(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    add_members(admin_conn, 45_000)
    first = page(call)
    assert first.status == 200, first.text[:300]
    assert len(first.json["members"]) == DEFAULT_MEMBERS
    largest = page(call, limit=str(MAX_MEMBERS))
    assert len(largest.text.encode()) < VERCEL_LIMIT / 10
    members = every_page(call, limit=MAX_MEMBERS)
    ids = [m["userId"] for m in members]
    assert ids == live_ids(admin_conn)  # every member once, earliest joined first
    assert len(ids) == 45_000


@pytest.mark.usefixtures("big_team")
def test_members_joining_and_leaving_between_pages_leave_no_gap_or_duplicate(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Members who stay are listed once; one who leaves before their page is not listed; one
    who joins after the pages began is listed (they join last)."""
    add_members(admin_conn, 3_000)
    before = live_ids(admin_conn)
    seen: list[str] = []
    query = {"limit": "250"}
    for round_ in range(100):
        answer = page(call, **query)
        assert answer.status == 200, answer.text[:300]
        seen += [m["userId"] for m in answer.json["members"]]
        if "nextCursor" not in answer.json:
            break
        query["cursor"] = answer.json["nextCursor"]
        admin_conn.execute(  # two leave: one already listed, one not yet
            """UPDATE organization_members SET "deletedAt" = now()
               WHERE "organizationId" = %s AND "userId" IN (%s, %s)""",
            (ORG, seen[-1], before[min(len(seen) + 10, len(before) - 1)]),
        )
        add_members(admin_conn, 5, prefix=f"j{round_}x", start_ms=1_000_000 * (round_ + 1))
    assert len(seen) == len(set(seen))
    left_unlisted = set(before) - set(seen)
    remaining = set(live_ids(admin_conn))
    assert left_unlisted and not left_unlisted & remaining  # only leavers were missed
    assert remaining - set(before) <= set(seen)  # every joiner still there was listed


@pytest.mark.usefixtures("big_team")
def test_pages_are_whole_whatever_the_sessions_time_zone(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Join times are UTC in a column without a zone: a cursor compared as a `timestamptz`
    shifted them by the session's offset (Europe/Berlin: every member after the first page
    looked an hour older than the cursor, and the list ended there)."""
    add_members(admin_conn, 250)
    database = sql.Identifier(admin_conn.info.dbname)
    admin_conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'Europe/Berlin'").format(database))
    try:
        db.dispose_engine()  # new sessions take the database's time zone
        ids = [m["userId"] for m in every_page(call, limit=100)]
    finally:
        admin_conn.execute(sql.SQL("ALTER DATABASE {} RESET timezone").format(database))
        db.dispose_engine()
    assert ids == live_ids(admin_conn)


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": str(MAX_MEMBERS + 1)},
        {"limit": "ten"},
        {"limit": "-1"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WyIyMDI2LTAxLTAxVDAwOjAwOjAwLjAwMFoiLCIiXQ"},  # ["…", ""]: empty id
        {"cursor": "x" * 5000},
    ],
)
@pytest.mark.usefixtures("big_team")
def test_a_bad_limit_or_cursor_is_a_400_in_the_envelope(
    call: Caller, query: dict[str, str]
) -> None:
    answer = page(call, **query)
    assert answer.status == 400, answer.text
    assert answer.json["statusCode"] == 400 and answer.json["message"]
