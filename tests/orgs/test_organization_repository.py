"""The organizations repository's basics and what the organization columns change for personal
data: created from a token when the mirror has not spoken, tombstones hide everything, and a
team's search is never a personal one."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from shared import config, db
from shared.repositories import organizations, saved_searches, users
from tests.core.test_concurrency import WORKERS, race

pytestmark = pytest.mark.usefixtures("db_env")

SEARCH = saved_searches.NewSavedSearch(
    name="Coffee", keywords=["espresso"], location="US", language="en", match_type="broad"
)


def _team_search(conn: psycopg.Connection[Any], org_id: str, user_id: str | None) -> None:
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", "organizationId", name, keywords,
               "updatedAt") VALUES (gen_random_uuid()::text, %s, %s, 'Team', '{a}', now())""",
        (user_id, org_id),
    )


def test_ensure_creates_from_the_token_once_and_returns_the_same_row() -> None:
    first = db.run(lambda conn: organizations.ensure(conn, "org_1", slug="acme"))
    again = db.run(lambda conn: organizations.ensure(conn, "org_1", slug="renamed"))
    assert first is not None and again is not None
    assert (first.id, first.name, first.slug) == ("org_1", "acme", "acme")
    assert (again.name, again.slug, again.created_at) == ("acme", "acme", first.created_at)
    assert again.keyword_searches_this_month == 0


def test_a_deleted_organization_is_missing_everywhere(admin_conn: psycopg.Connection[Any]) -> None:
    db.run(lambda conn: organizations.ensure(conn, "org_gone"))
    admin_conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, "updatedAt")
           VALUES ('org_gone', 'user_a', 'org:admin', now())"""
    )
    assert db.run(lambda conn: organizations.membership(conn, "org_gone", "user_a")) is not None
    admin_conn.execute("""UPDATE organizations SET "deletedAt" = now() WHERE id = 'org_gone'""")
    assert db.run(lambda conn: organizations.get(conn, "org_gone")) is None
    assert db.run(lambda conn: organizations.ensure(conn, "org_gone")) is None
    assert db.run(lambda conn: organizations.membership(conn, "org_gone", "user_a")) is None


def test_a_removed_membership_is_no_membership(admin_conn: psycopg.Connection[Any]) -> None:
    db.run(lambda conn: organizations.ensure(conn, "org_2"))
    admin_conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, "updatedAt",
               "deletedAt") VALUES ('org_2', 'user_b', 'org:member', now(), now())"""
    )
    assert db.run(lambda conn: organizations.membership(conn, "org_2", "user_b")) is None
    assert db.run(lambda conn: organizations.membership(conn, "org_2", "nobody")) is None


def test_ensure_raced_from_twenty_connections_makes_one_row(
    monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", str(WORKERS))
    config.get_settings.cache_clear()
    db.dispose_engine()
    try:
        outcomes = race(lambda _: db.run(lambda conn: organizations.ensure(conn, "org_race")), 40)
    finally:
        db.dispose_engine()
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert {o.id for o in outcomes} == {"org_race"}
    count = admin_conn.execute("SELECT count(*) FROM organizations").fetchone()
    assert count == (1,)


def test_team_searches_are_not_personal(admin_conn: psycopg.Connection[Any]) -> None:
    """A search the user created for a team: not listed, read, renamed or deleted through the
    personal routes' repository, and not counted against the personal cap of 50."""
    db.run(lambda conn: users.create(conn, "user_c", "c@example.com"))
    db.run(lambda conn: organizations.ensure(conn, "org_3"))
    _team_search(admin_conn, "org_3", "user_c")
    (team_id,) = admin_conn.execute(
        """SELECT id FROM saved_searches WHERE "organizationId" = 'org_3'"""
    ).fetchone() or ("",)
    assert db.run(lambda conn: saved_searches.list_for_user(conn, "user_c")).items == []
    assert db.run(lambda conn: saved_searches.get(conn, "user_c", team_id)) is None
    assert (
        db.run(lambda conn: saved_searches.update_search(conn, "user_c", team_id, name="x")) is None
    )
    assert db.run(lambda conn: saved_searches.delete_search(conn, "user_c", team_id)) is False
    for _ in range(saved_searches.MAX_PER_USER - 1):
        _team_search(admin_conn, "org_3", "user_c")
    created = db.transaction(lambda conn: saved_searches.create(conn, "user_c", SEARCH))
    assert created.organization_id is None
    assert (
        db.run(lambda conn: saved_searches.list_for_user(conn, "user_c")).items[0].id == created.id
    )


def test_every_search_has_an_owner(admin_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        admin_conn.execute(
            """INSERT INTO saved_searches (id, name, keywords, "updatedAt")
               VALUES ('orphan', 'x', '{a}', now())"""
        )
