"""Team searches in flight when their organization is deleted (Clerk's `organization.deleted`):
whatever the interleaving, no `search_history` row or reservation names the deleted
organization afterwards, and its counters no longer move. Real Postgres connections, both
lanes: two explicit interleavings held open on row locks, then many racing rounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from shared import db
from shared.clock import utcnow
from shared.db import Conn
from shared.errors import OrganizationNotFoundError
from shared.quotas import OrgLimits
from shared.repositories import api_usage, org_quota, organizations, reservations, search_history
from shared.repositories import users as users_repo
from tests.core.test_concurrency import WORKERS, race
from tests.orgs.test_team_quota import wide_pool  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("db_env", "wide_pool")

LIMITS = OrgLimits(free=100_000, pro=100_000, enterprise=100_000)


def _user(user_id: str) -> None:
    db.run(lambda conn: users_repo.create(conn, user_id, f"{user_id}@example.com"))


def _reserve(conn: Conn, org_id: str, user_id: str, hold_id: str) -> org_quota.OrgUsage:
    now = utcnow()
    return org_quota.reserve_keywords(
        conn, org_id, user_id, 2, slug=None, limits=LIMITS, enforce=True, now=now,
        hold=reservations.Hold(hold_id, now + timedelta(minutes=5)),
    )  # fmt: skip


def _record(conn: Conn, org_id: str, user_id: str, hold_id: str) -> str:
    """The search's last statement, as `shared.keyword_search` writes it."""
    search = search_history.NewSearch(
        user_id=user_id, keywords=["espresso", "latte"], location="US", language="en",
        match_type="exact", provider="mock", cache_hit=False, response_time=9,
        organization_id=org_id,
    )  # fmt: skip
    usage = api_usage.Request("/api/keywords", "POST", 200, 9, user_id=user_id)
    return search_history.record_with_usage(conn, search, usage, reservation_id=hold_id)


def _naming(admin_conn: psycopg.Connection[Any], org_id: str) -> tuple[int, int]:
    """History rows and reservations still naming the organization."""
    row = admin_conn.execute(
        """SELECT (SELECT count(*) FROM search_history WHERE "organizationId" = %(id)s),
                  (SELECT count(*) FROM keyword_reservations WHERE "organizationId" = %(id)s)""",
        {"id": org_id},
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def _backend_pid(conn: Conn) -> int:
    return int(conn.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _blocked_or_done(
    admin_conn: psycopg.Connection[Any], blocker: int, worker: threading.Thread
) -> None:
    """Return once `worker` has finished or some backend waits on a lock `blocker` holds."""
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        row = admin_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (blocker,),
        ).fetchone()
        if row is not None and row[0]:
            return
        time.sleep(0.01)  # polling a condition, not timing it


def _while_open(
    admin_conn: psycopg.Connection[Any], first: Callable[[Conn], Any], then: Callable[[], Any]
) -> list[Any]:
    """Run `first` in a transaction kept open until `then`, on another connection, has finished
    or is waiting on one of its locks; then commit. Returns what `then` returned (or raised)."""
    outcome: list[Any] = []

    def second() -> None:
        try:
            outcome.append(then())
        except Exception as error:  # asserted by the caller
            outcome.append(error)

    def work(conn: Conn) -> None:
        first(conn)
        worker = threading.Thread(target=second)
        worker.start()
        _blocked_or_done(admin_conn, _backend_pid(conn), worker)
        work.worker = worker  # type: ignore[attr-defined]

    db.transaction(work)
    work.worker.join(timeout=30)  # type: ignore[attr-defined]
    assert not work.worker.is_alive()  # type: ignore[attr-defined]
    return outcome


def test_a_search_recorded_while_the_deletion_commits_stays_only_the_members(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """The deletion has tombstoned the organization and removed its data, not yet committed,
    when the search records itself: the record waits for it and then writes a personal row."""
    _user("user_a")
    db.run(lambda conn: _reserve(conn, "org_gone", "user_a", "hold_a"))
    [row_id] = _while_open(
        admin_conn,
        lambda conn: organizations.delete(conn, "org_gone"),
        lambda: db.run(lambda conn: _record(conn, "org_gone", "user_a", "hold_a")),
    )
    assert _naming(admin_conn, "org_gone") == (0, 0)
    assert admin_conn.execute(
        'SELECT "userId", "organizationId" FROM search_history WHERE id = %s', (row_id,)
    ).fetchone() == ("user_a", None)


def test_a_deletion_waits_for_a_search_being_recorded_and_detaches_its_row(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """The search's record is written, not yet committed, when the deletion arrives: the
    deletion waits for it and then finds the row, which it detaches."""
    _user("user_a")
    db.run(lambda conn: _reserve(conn, "org_gone", "user_a", "hold_a"))
    recorded: list[str] = []
    [removal] = _while_open(
        admin_conn,
        lambda conn: recorded.append(_record(conn, "org_gone", "user_a", "hold_a")),
        lambda: db.transaction(lambda conn: organizations.delete(conn, "org_gone")),
    )
    assert isinstance(removal, organizations.Removal), removal
    assert (removal.history_detached, removal.reservations_deleted) == (1, 0)
    assert _naming(admin_conn, "org_gone") == (0, 0)


def test_searches_racing_the_deletion_never_leave_rows_naming_it(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Round after round, members' searches (records of held reservations, and new
    reservations) race the deletion on their own connections: nothing names the organization
    afterwards, a reservation is either counted before the tombstone or refused as the 404's
    error, and the tombstone counts only what was reserved before it."""
    members = [f"user_{index}" for index in range(WORKERS - 1)]
    for user_id in members:
        _user(user_id)
    for round_ in range(8):
        org_id = f"org_race{round_}"
        for user_id in members[::2]:
            db.run(lambda conn, u=user_id, o=org_id: _reserve(conn, o, u, f"{o}_{u}"))

        def task(index: int, org_id: str = org_id) -> Any:
            if index == 0:
                return db.transaction(lambda conn: organizations.delete(conn, org_id))
            user_id = members[index - 1]
            if index % 2:  # a search holding keywords records itself
                return db.run(lambda conn: _record(conn, org_id, user_id, f"{org_id}_{user_id}"))
            return db.run(lambda conn: _reserve(conn, org_id, user_id, f"{org_id}_new_{user_id}"))

        outcomes = race(task, WORKERS)
        counted = [o for o in outcomes if isinstance(o, org_quota.OrgUsage)]
        unexpected = [
            o
            for o in outcomes
            if isinstance(o, Exception) and not isinstance(o, OrganizationNotFoundError)
        ]
        assert not unexpected, unexpected
        assert _naming(admin_conn, org_id) == (0, 0), f"round {round_}"
        assert admin_conn.execute(
            """SELECT "keywordSearchesThisMonth" FROM organizations
               WHERE id = %s AND "deletedAt" IS NOT NULL""",
            (org_id,),
        ).fetchone() == (2 * (len(members[::2]) + len(counted)),)
        recorded = admin_conn.execute(
            """SELECT count(*) FROM search_history WHERE "userId" = ANY(%s)
                   AND "organizationId" IS NULL AND keywords = '{espresso,latte}'""",
            (members,),
        ).fetchone()
        assert recorded == ((round_ + 1) * len(members[::2]),)
