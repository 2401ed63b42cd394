"""Lifecycle and privacy of team data (issue 18, item 6): a member's erasure removes their
memberships and personal rows, leaves the searches they shared with the team there without a
creator and the team's history anonymised, gives keywords held against a team's quota back;
the export holds memberships and contributions; admin analytics cut per organization. Real
Postgres, both lanes."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest

from shared import accounts, config, db
from shared.clock import utcnow
from shared.errors import UserNotFoundError
from shared.quotas import OrgLimits
from shared.repositories import (
    org_quota,
    organizations,
    personal_data,
    reservations,
    search_history,
    users,
)
from shared.repositories.personal_data import Erasure
from tests.core.test_concurrency import WORKERS, race
from tests.core.test_personal_data import rows_mentioning
from tests.support.http import Caller, Keys

pytestmark = pytest.mark.usefixtures("db_env")

ADMIN = "user_admin"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
IDENTIFIERS = {"user_a", "user_a@example.com"}


@pytest.fixture
def call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def make_org(
    conn: psycopg.Connection[Any], org_id: str, *, this_month: int = 0, total: int = 0
) -> None:
    db.run(lambda conn: organizations.ensure(conn, org_id, slug=org_id.removeprefix("org_")))
    conn.execute(
        """UPDATE organizations SET "keywordSearchesThisMonth" = %s, "keywordSearchesTotal" = %s
           WHERE id = %s""",
        (this_month, total, org_id),
    )


def member(
    conn: psycopg.Connection[Any], org_id: str, user_id: str, *, removed: bool = False
) -> None:
    conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, permissions,
               "updatedAt", "deletedAt")
           VALUES (%s, %s, 'org:member', ARRAY['org:searches:read'], now(),
                   CASE WHEN %s THEN now() END)""",
        (org_id, user_id, removed),
    )


def saved(conn: psycopg.Connection[Any], search_id: str, user_id: str, org_id: str | None) -> None:
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", "organizationId", name, keywords,
               "updatedAt") VALUES (%s, %s, %s, %s, '{espresso}', now())""",
        (search_id, user_id, org_id, f"search {search_id}"),
    )


def searched(conn: psycopg.Connection[Any], user_id: str, org_id: str | None) -> str:
    """A history row of `user_id` (made for `org_id`, or personal), with an IP and user agent."""
    row = search_history.NewSearch(
        user_id=user_id, keywords=["espresso"], location="US", language="en",
        match_type="exact", provider="mock", cache_hit=False, response_time=9,
        user_agent="UA/1", ip_address="198.51.100.0",
    )  # fmt: skip
    row_id = db.run(partial(search_history.record, search=row))
    conn.execute('UPDATE search_history SET "organizationId" = %s WHERE id = %s', (org_id, row_id))
    return row_id


def reserved(
    conn: psycopg.Connection[Any],
    hold_id: str,
    user_id: str,
    org_id: str,
    keywords: int,
    at: datetime | None = None,
) -> None:
    """A team search in flight: its keywords counted against the organization and held."""
    at = (at or utcnow()).replace(tzinfo=None)  # the column is UTC without a zone
    conn.execute(
        """INSERT INTO keyword_reservations (id, "userId", "organizationId", keywords,
               "reservedAt", "expiresAt") VALUES (%s, %s, %s, %s, %s, %s)""",
        (hold_id, user_id, org_id, keywords, at, at + timedelta(minutes=5)),
    )


def counters(conn: psycopg.Connection[Any], org_id: str) -> tuple[int, int]:
    row = conn.execute(
        """SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM organizations
           WHERE id = %s""",
        (org_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def make_user(user_id: str) -> None:
    db.run(lambda conn: users.create(conn, user_id, f"{user_id}@example.com"))


@pytest.fixture
def team(admin_conn: psycopg.Connection[Any]) -> dict[str, str]:
    """user_a and user_b share org_x; user_a was also in org_y (removed since). Each has
    personal and team searches and history; each holds keywords against org_x's quota."""
    for user_id in ("user_a", "user_b"):
        make_user(user_id)
    make_org(admin_conn, "org_x", this_month=10, total=40)
    make_org(admin_conn, "org_y")
    member(admin_conn, "org_x", "user_a")
    member(admin_conn, "org_x", "user_b")
    member(admin_conn, "org_y", "user_a", removed=True)
    saved(admin_conn, "s_a_team", "user_a", "org_x")
    saved(admin_conn, "s_a_own", "user_a", None)
    saved(admin_conn, "s_b_team", "user_b", "org_x")
    reserved(admin_conn, "hold_a", "user_a", "org_x", 3)
    reserved(admin_conn, "hold_b", "user_b", "org_x", 2)
    return {
        "a_team": searched(admin_conn, "user_a", "org_x"),
        "a_own": searched(admin_conn, "user_a", None),
        "b_team": searched(admin_conn, "user_b", "org_x"),
    }


# --- erasure --------------------------------------------------------------------------------


def test_erasure_removes_memberships_and_keeps_team_searches_and_history_anonymous(
    call: Caller, admin_conn: psycopg.Connection[Any], team: dict[str, str]
) -> None:
    before_b = rows_mentioning(admin_conn, {"user_b"})

    result = call("me", "DELETE", "/api/me", user="user_a")
    assert (result.status, result.json) == (200, {"deleted": True})

    assert rows_mentioning(admin_conn, IDENTIFIERS) == {}  # nothing anywhere names user_a
    assert rows_mentioning(admin_conn, {"user_b"}) == before_b
    members = admin_conn.execute(
        """SELECT "organizationId", "userId" FROM organization_members ORDER BY 1, 2"""
    ).fetchall()
    assert members == [("org_x", "user_b")]
    searches = admin_conn.execute(
        """SELECT id, "userId", "organizationId" FROM saved_searches ORDER BY id"""
    ).fetchall()
    assert searches == [("s_a_team", None, "org_x"), ("s_b_team", "user_b", "org_x")]
    history = admin_conn.execute(
        """SELECT id, "userId", "organizationId", "ipAddress", "userAgent" FROM search_history"""
    ).fetchall()
    assert sorted(history, key=str) == sorted(
        [
            (team["a_team"], None, "org_x", None, None),  # the team's, anonymous
            (team["a_own"], None, None, None, None),  # personal: anonymised as before
            (team["b_team"], "user_b", "org_x", "198.51.100.0", "UA/1"),
        ],
        key=str,
    )
    holds = admin_conn.execute("SELECT id FROM keyword_reservations").fetchall()
    assert holds == [("hold_b",)]
    assert counters(admin_conn, "org_x") == (7, 37)  # user_a's 3 held keywords given back


def test_erasure_counts_its_team_steps_and_is_idempotent(
    admin_conn: psycopg.Connection[Any], team: dict[str, str]
) -> None:
    first = db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    assert (
        first.user_deleted,
        first.memberships_deleted,
        first.team_searches_kept,
        first.team_keywords_given_back,
        first.history_anonymised,
    ) == (True, 2, 1, 3, 2)
    again = db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    assert again == Erasure(False, 0, 0, 0, 0, 0, 0, 0, 0)
    assert counters(admin_conn, "org_x") == (7, 37)


def test_a_reservation_of_a_month_already_reset_gives_back_only_the_total(
    admin_conn: psycopg.Connection[Any],
) -> None:
    """The organization's monthly counter restarted since the search reserved: that month's
    keywords are no longer in it, so only the running total gives them back."""
    make_user("user_a")
    make_org(admin_conn, "org_x", this_month=4, total=50)
    reserved(admin_conn, "hold_old", "user_a", "org_x", 6, at=utcnow() - timedelta(days=40))
    reserved(admin_conn, "hold_new", "user_a", "org_x", 1)
    erasure = db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    assert erasure.team_keywords_given_back == 7
    assert counters(admin_conn, "org_x") == (3, 43)


def test_a_member_never_in_a_team_erases_as_before(admin_conn: psycopg.Connection[Any]) -> None:
    make_user("user_a")
    saved(admin_conn, "s_own", "user_a", None)
    erasure = db.transaction(lambda conn: accounts.erase(conn, "user_a"))
    assert (erasure.user_deleted, erasure.memberships_deleted, erasure.team_searches_kept) == (
        True,
        0,
        0,
    )
    assert admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone() == (0,)


def test_erasure_outside_a_transaction_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside a transaction"):
        db.run(lambda conn: personal_data.erase(conn, "user_a"))


def waiting_on(conn: psycopg.Connection[Any], blocker: int, timeout: float = 10.0) -> bool:
    """Whether some backend comes to wait on a lock `blocker` holds within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (blocker,),
        ).fetchone()
        if row is not None and row[0]:
            return True
        time.sleep(0.01)  # polling a condition, not timing it
    return False


def test_erasure_racing_a_team_search_gives_both_holds_back_without_deadlock(
    admin_conn: psycopg.Connection[Any], direct_database_url: str
) -> None:
    """A team search share-locks the user's row, then charges its organization's row. The
    erasure takes the user's row first too: it waits for the search, which then completes, and
    gives back both the earlier hold and the new one. Taken in opposite orders, the two would
    deadlock and Postgres would abort one of them."""
    make_user("user_a")
    make_org(admin_conn, "org_x", this_month=2, total=2)
    reserved(admin_conn, "hold_1", "user_a", "org_x", 2)
    outcome: list[Any] = []
    with psycopg.connect(direct_database_url) as search:
        search.execute("SELECT 1 FROM users WHERE id = 'user_a' FOR KEY SHARE")
        search.execute(
            """UPDATE organizations SET "keywordSearchesThisMonth" = "keywordSearchesThisMonth"
                   + 3, "keywordSearchesTotal" = "keywordSearchesTotal" + 3 WHERE id = 'org_x'"""
        )

        def erase() -> None:
            try:
                outcome.append(db.transaction(lambda conn: accounts.erase(conn, "user_a")))
            except Exception as error:  # reported below
                outcome.append(error)

        worker = threading.Thread(target=erase)
        worker.start()
        assert waiting_on(admin_conn, search.info.backend_pid), "the erasure did not wait"
        search.execute("SET LOCAL lock_timeout = '10s'")
        reserved(search, "hold_2", "user_a", "org_x", 3)
        search.commit()
        worker.join(timeout=30)
    assert not worker.is_alive()
    [erasure] = outcome
    assert isinstance(erasure, Erasure), erasure
    assert (erasure.user_deleted, erasure.team_keywords_given_back) == (True, 5)
    assert counters(admin_conn, "org_x") == (0, 0)
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)


# --- export ---------------------------------------------------------------------------------


def test_export_holds_memberships_and_the_team_searches_the_user_created(
    call: Caller, team: dict[str, str]
) -> None:
    result = call("me_export", "GET", "/api/me/export", user="user_a")
    assert result.status == 200, result.text
    body = result.json
    memberships = {m["organizationId"]: m for m in body["organizationMemberships"]}
    assert memberships.keys() == {"org_x", "org_y"}  # a removed one is still stored: exported
    assert memberships["org_x"]["role"] == "org:member"
    assert memberships["org_x"]["permissions"] == ["org:searches:read"]
    assert {"createdAt", "updatedAt", "userId"} <= memberships["org_x"].keys()
    assert "deletedAt" not in memberships["org_x"] and "deletedAt" in memberships["org_y"]
    searches = {s["id"]: s.get("organizationId") for s in body["savedSearches"]}
    assert searches == {"s_a_team": "org_x", "s_a_own": None}
    history = {h["id"]: h.get("organizationId") for h in body["searchHistory"]}
    assert history == {team["a_team"]: "org_x", team["a_own"]: None}
    assert "user_b" not in result.text
    assert "team" in body["onErasure"]  # what stays with the team, told


def test_export_of_a_user_in_no_team_has_an_empty_membership_list(call: Caller) -> None:
    make_user("user_c")
    body = call("me_export", "GET", "/api/me/export", user="user_c").json
    assert body["organizationMemberships"] == []


# --- admin analytics per organization ---------------------------------------------------------


@pytest.fixture
def admin(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Caller:
    from functions import admin_analytics

    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    monkeypatch.setattr(admin_analytics, "utcnow", lambda: NOW)
    return Caller("lambda_v2", api_env)


def seed_team_history(conn: psycopg.Connection[Any]) -> None:
    make_user("user_a")
    for org_id, keywords, took, at in [
        ("org_x", ["Espresso", "latte"], 100, "2026-11-20T10:00:00"),
        ("org_x", ["espresso"], 300, "2026-11-19T09:00:00"),
        ("org_y", ["tea"], 50, "2026-11-20T11:00:00"),
        (None, ["cocoa"], 70, "2026-11-20T12:00:00"),
    ]:
        row = search_history.NewSearch(
            user_id="user_a", keywords=keywords, location="US", language="en",
            match_type="exact", provider="mock", cache_hit=False, response_time=took,
        )  # fmt: skip
        when = datetime.fromisoformat(at).replace(tzinfo=UTC)
        row_id = db.run(lambda s, r=row, t=when: search_history.record(s, r, now=t))
        conn.execute(
            'UPDATE search_history SET "organizationId" = %s WHERE id = %s', (org_id, row_id)
        )


def analytics(admin: Caller, **query: str) -> Any:
    return admin("admin_analytics", "GET", "/api/admin/analytics", user=ADMIN, query=query)


def test_analytics_cut_to_one_organization_counts_only_its_searches(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_team_history(admin_conn)
    result = analytics(admin, days="2", organizationId="org_x")
    assert result.status == 200, result.text
    body = result.json
    assert body["organizationId"] == "org_x"
    assert body["searches"]["total"] == 2
    assert body["searches"]["perDay"] == [
        {"date": "2026-11-19", "searches": 1},
        {"date": "2026-11-20", "searches": 1},
    ]
    assert body["searches"]["providers"] == {
        "mock": {"searches": 2, "avgResponseTime": 200.0, "cacheHitRate": 0.0}
    }
    assert body["last24h"] == {"searches": 1, "avgResponseTime": 100.0}
    assert body["topKeywords"] == [
        {"keyword": "espresso", "searches": 2},
        {"keyword": "latte", "searches": 1},
    ]
    everyone = analytics(admin, days="2").json
    assert "organizationId" not in everyone and everyone["searches"]["total"] == 4
    assert everyone["subscriptions"] == body["subscriptions"]  # the users' counts, always


def test_analytics_of_an_organization_without_searches_is_zeros(
    admin: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_team_history(admin_conn)
    body = analytics(admin, days="1", organizationId="org_unknown").json
    assert body["searches"] == {
        "total": 0,
        "perDay": [{"date": "2026-11-20", "searches": 0}],
        "providers": {},
    }
    assert body["topKeywords"] == [] and body["last24h"] == {"searches": 0}


@pytest.mark.parametrize(
    "value", ["", "x", "org_", "org x", "org_a/b", "ORG_x", "org_é", "org_" + "a" * 201]
)
def test_analytics_organization_validation(admin: Caller, value: str) -> None:
    result = analytics(admin, organizationId=value)
    assert result.status == 400, result.text
    assert result.json["message"].startswith("organizationId must be an organization id")


def test_stats_of_a_user_and_an_organization_at_once_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        db.run(
            lambda conn: search_history.stats(
                conn, since=NOW - timedelta(days=1), user_id="user_a", organization_id="org_x"
            )
        )


def test_erasure_raced_by_the_members_real_team_searches_leaves_the_team_nothing_charged(
    monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    """Nineteen reservations of the member's team searches (`org_quota.reserve_keywords`, one
    statement each) and the member's erasure, released together: no deadlock, and whatever
    each search managed to hold before the erasure is given back, while those after it find no
    user and charge nothing. The team ends with nothing counted and nothing held."""
    make_user("user_a")
    make_org(admin_conn, "org_x")
    limits = OrgLimits(free=10_000, pro=10_000, enterprise=10_000)

    def task(index: int) -> Any:
        if index == 0:
            return db.transaction(lambda conn: accounts.erase(conn, "user_a"))
        now = utcnow()
        hold = reservations.Hold(f"hold_{index}", now + timedelta(minutes=5))
        return db.run(
            lambda conn: org_quota.reserve_keywords(
                conn, "org_x", "user_a", 2, slug="x", limits=limits, enforce=True, now=now,
                hold=hold,
            )
        )  # fmt: skip

    monkeypatch.setenv("DB_POOL_SIZE", str(WORKERS))  # a connection per thread
    config.get_settings.cache_clear()
    db.dispose_engine()
    try:
        outcomes = race(task, WORKERS)
    finally:
        db.dispose_engine()
    [erasure] = [o for o in outcomes if isinstance(o, Erasure)]
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(f, UserNotFoundError) for f in failures), failures
    held = len(outcomes) - 1 - len(failures)
    assert erasure.user_deleted and erasure.team_keywords_given_back == 2 * held
    assert counters(admin_conn, "org_x") == (0, 0)
    assert admin_conn.execute("SELECT count(*) FROM keyword_reservations").fetchone() == (0,)
