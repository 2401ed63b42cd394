"""`db.Conn`, what `work` receives: hot statements on the checked-out connection, and an ORM
session built only when asked for, closed when the call ends, in the same transaction."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, inspect, update

from shared import db, repositories
from shared.models.users import User
from shared.repositories import users

pytestmark = pytest.mark.usefixtures("db_env")


class Abandoned(Exception):
    """Raised by a test's work after its writes, so the transaction must roll them back."""


def user_rows(admin: psycopg.Connection[Any], user_id: str) -> list[tuple[Any, ...]]:
    return admin.execute(
        'SELECT "stripeCustomerId" FROM users WHERE id = %s', (user_id,)
    ).fetchall()


def hot_then_orm(conn: db.Conn, user_id: str) -> None:
    """A hot insert and an ORM update of the same row, each seeing the other's write."""
    users.create(conn, user_id, f"{user_id}@example.com")  # hot
    assert conn.session.get(User, user_id) is not None  # the ORM sees the hot write
    conn.session.execute(update(User).where(User.id == user_id).values(stripe_customer_id="cus_1"))
    seen = users.get(conn, user_id)  # hot, sees the ORM write
    assert seen is not None and seen.stripe_customer_id == "cus_1"


def test_a_hot_and_an_orm_statement_roll_back_together(
    admin_conn: psycopg.Connection[Any],
) -> None:
    def work(conn: db.Conn) -> None:
        hot_then_orm(conn, "mixed_rollback")
        raise Abandoned

    with pytest.raises(Abandoned):
        db.transaction(work)
    assert user_rows(admin_conn, "mixed_rollback") == []
    # The pooled connection went back clean: the next call commits both kinds again.
    db.transaction(lambda conn: hot_then_orm(conn, "mixed_commit"))
    assert user_rows(admin_conn, "mixed_commit") == [("cus_1",)]


def test_the_session_is_built_only_when_asked_for_and_closed_when_the_call_ends() -> None:
    seen: list[db.Conn] = []

    def hot_only(conn: db.Conn) -> None:
        seen.append(conn)
        users.create(conn, "hot_only", "hot_only@example.com")

    db.transaction(hot_only)
    assert seen[0]._session is None  # hot-only work never built one

    def orm(conn: db.Conn) -> User | None:
        assert conn.session is conn.session  # built once per call
        return conn.session.get(User, "hot_only")

    loaded = db.run(orm, idempotent=True)
    assert loaded is not None
    # Closed at the end of the call: what it loaded is no longer attached to it.
    assert inspect(loaded).detached


def test_connection_level_listeners_see_hot_statements() -> None:
    sent: list[str] = []

    def work(conn: db.Conn) -> None:
        event.listen(conn.connection, "before_cursor_execute", lambda *a: sent.append(a[2]))
        event.listen(conn.connection, "after_cursor_execute", lambda *a: sent.append("after"))
        users.get(conn, "nobody")

    db.run(work, idempotent=True)
    assert len(sent) == 2 and "FROM users" in sent[0] and sent[1] == "after"


def test_every_hot_statement_of_the_repositories_builds_and_compiles() -> None:
    """They are built on their first run, not at import: a broken builder of a shape requests
    rarely take would otherwise fail only when one does."""
    for module in pkgutil.iter_modules(repositories.__path__):
        importlib.import_module(f"{repositories.__name__}.{module.name}")
    db.compile_hot_statements()
    assert db.compile_hot_statements() == 0
    assert len(db._hot_statements) >= 20
    assert all(isinstance(statement.compiled()[0], str) for statement in db._hot_statements)


def test_every_hot_statement_fits_psycopg_s_parse_cache() -> None:
    """psycopg converts a statement's `%(name)s` placeholders on every run unless the statement
    is at most MAX_CACHED_STATEMENT_LENGTH characters with at most MAX_CACHED_STATEMENT_PARAMS
    parameters; past that each run of the keyword reservation parsed ~6 KB anew."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS

    for module in pkgutil.iter_modules(repositories.__path__):
        importlib.import_module(f"{repositories.__name__}.{module.name}")
    too_big = []
    for statement in db._hot_statements:
        sql, _ = statement.compiled()
        names = set(re.findall(r"%\((\w+)\)s", sql))
        if len(sql) > MAX_CACHED_STATEMENT_LENGTH or len(names) > MAX_CACHED_STATEMENT_PARAMS:
            too_big.append((len(sql), len(names), sql[:80]))
    assert too_big == []
