"""Saved searches: at most 50 per user, every call scoped by the owner's id.

Scoping every statement by `userId` means another user's search looks exactly like a missing
one, so existence never leaks across accounts. These are personal searches only
(`organizationId` NULL): a team's searches, though their creator's `userId` is on them, are
reached through the team (docs/organizations.md), never through the personal routes or quota.
The request paths' list and create are statements built once
(`shared.db.HotStatement`), their rows mapped by `shared.repositories.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb
from sqlalchemy import (
    ColumnElement,
    Integer,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)

from shared.clock import utcnow
from shared.db import Conn, HotStatement, driver_connection, execute_hot
from shared.errors import SavedSearchLimitError, UserNotFoundError
from shared.ids import new_uuid
from shared.models import UTCDateTime
from shared.models.saved_searches import SavedSearch
from shared.models.users import User
from shared.repositories.pagination import Cursor, Page, page_of
from shared.repositories.rows import RowMapper, db_time
from shared.telemetry import database_operation

MAX_PER_USER = 50


@dataclass(frozen=True, slots=True)
class NewSavedSearch:
    name: str
    keywords: list[str]
    location: str
    language: str
    match_type: str
    description: str | None = None
    results: list[dict[str, Any]] | None = None


def _require_transaction(conn: Conn) -> None:
    if driver_connection(conn).info.transaction_status == TransactionStatus.IDLE:
        raise RuntimeError("saved_searches.create must run inside shared.db.transaction()")


_SEARCHES = cast(Table, SavedSearch.__table__)


def _personal(user_id: str) -> ColumnElement[bool]:
    """The user's own searches, not the teams' they created."""
    return and_(SavedSearch.user_id == user_id, SavedSearch.organization_id.is_(None))


_COLUMNS = list(_SEARCHES.columns)
_SUMMARY_COLUMNS = [column for column in _COLUMNS if column.name != "results"]
_search_from = RowMapper(SavedSearch, _COLUMNS)
_summary_from = RowMapper(SavedSearch, _SUMMARY_COLUMNS)
_OWNER_LOCK = HotStatement(
    lambda: select(User.id).where(User.id == bindparam("p_user_id", type_=Text())).with_for_update()
)


_NOT_INSERTED = ("lastRunAt", "organizationId")  # a personal search belongs to no team


def _create_statement() -> Any:
    """INSERT … SELECT <binds> WHERE (the user's count) < MAX_PER_USER RETURNING *, binds named
    `p_<column>`."""
    user_id = bindparam("p_userId", type_=Text())
    count = (
        select(func.count())
        .select_from(_SEARCHES)
        .where(_SEARCHES.c.userId == user_id, _SEARCHES.c.organizationId.is_(None))
    ).scalar_subquery()
    names = [column.name for column in _COLUMNS if column.name not in _NOT_INSERTED]
    source = select(
        *[bindparam(f"p_{name}", type_=_SEARCHES.c[name].type) for name in names]
    ).where(count < MAX_PER_USER)
    return insert(_SEARCHES).from_select(names, source).returning(*_COLUMNS)


_CREATE = HotStatement(_create_statement)


@database_operation("createSavedSearch")
def create(
    conn: Conn,
    user_id: str,
    search: NewSavedSearch,
    *,
    search_id: str | None = None,
    now: datetime | None = None,
) -> SavedSearch:
    """Insert a saved search unless the user already has `MAX_PER_USER` of them.

    Must run in `transaction()`: the owner's row is locked first, so concurrent creates for one
    user queue up and each counts the rows the previous ones committed.
    """
    _require_transaction(conn)
    if execute_hot(conn, _OWNER_LOCK, {"p_user_id": user_id}).fetchone() is None:
        raise UserNotFoundError(user_id)
    moment = db_time(now or utcnow())
    params: dict[str, Any] = {
        "p_id": search_id or new_uuid(),
        "p_userId": user_id,
        "p_name": search.name,
        "p_description": search.description,
        "p_keywords": search.keywords,
        "p_keywordCount": len(search.keywords),
        "p_location": search.location,
        "p_language": search.language,
        "p_matchType": search.match_type,
        "p_results": None if search.results is None else Jsonb(search.results),
        "p_resultCount": None if search.results is None else len(search.results),
        "p_createdAt": moment,
        "p_updatedAt": moment,
        "p_lastAccessedAt": moment,
    }
    row = execute_hot(conn, _CREATE, params).fetchone()
    if row is None:
        raise SavedSearchLimitError(MAX_PER_USER)
    return _search_from(row)


@database_operation("getSavedSearch")
def get(
    conn: Conn, user_id: str, search_id: str, *, now: datetime | None = None
) -> SavedSearch | None:
    """The user's saved search, touching `lastAccessedAt` in the same statement."""
    return get_scoped(conn, _personal(user_id), search_id, now=now)


def get_scoped(
    conn: Conn, scope: ColumnElement[bool], search_id: str, *, now: datetime | None = None
) -> SavedSearch | None:
    """The search within `scope` (its owner: a user's personal searches, or a team's),
    touching `lastAccessedAt` in the same statement."""
    statement = (
        update(SavedSearch)
        .where(scope, SavedSearch.id == search_id)
        .values(last_accessed_at=now or utcnow())
        .returning(SavedSearch)
    )
    return conn.session.scalars(
        statement, execution_options={"synchronize_session": False}
    ).one_or_none()


@database_operation("listSavedSearches")
def list_for_user(
    conn: Conn,
    user_id: str,
    *,
    limit: int = MAX_PER_USER,
    cursor: Cursor | None = None,
) -> Page[SavedSearch]:
    """Most recently updated first (the original API's order), keyset on (updatedAt, id).

    `results` is not loaded (it reads as None): the list answers summaries, and 50 searches'
    results could be tens of megabytes in memory."""
    params: dict[str, Any] = {"p_user_id": user_id, "p_limit": limit + 1}
    if cursor is not None:
        params.update(p_after_time=db_time(cursor[0]), p_after_id=cursor[1])
    statement = _LIST if cursor is None else _LIST_AFTER
    rows = execute_hot(conn, statement, params).fetchall()
    return page_of(rows, limit, _summary_from, lambda search: (search.updated_at, search.id))


def _list_statement(*, after: bool) -> Any:
    """Newest first, one more row than a page; `after`: past the cursor (p_after_time/_id)."""
    columns = _SEARCHES.c
    statement = (
        select(*_SUMMARY_COLUMNS)
        .where(
            columns.userId == bindparam("p_user_id", type_=Text()),
            columns.organizationId.is_(None),
        )
        .order_by(columns.updatedAt.desc(), columns.id.desc())
        .limit(bindparam("p_limit", type_=Integer()))
    )
    if after:
        cursor = tuple_(  # a row comparison: one index range (see shared.repositories.pagination)
            bindparam("p_after_time", type_=UTCDateTime()), bindparam("p_after_id", type_=Text())
        )
        statement = statement.where(tuple_(columns.updatedAt, columns.id) < cursor)
    return statement


_LIST = HotStatement(partial(_list_statement, after=False))
_LIST_AFTER = HotStatement(partial(_list_statement, after=True))


@database_operation("updateSavedSearch")
def update_search(
    conn: Conn,
    user_id: str,
    search_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> SavedSearch | None:
    """Change name and/or description; None when the search is not the user's."""
    return update_scoped(
        conn, _personal(user_id), search_id, name=name, description=description, now=now
    )


def update_scoped(
    conn: Conn,
    scope: ColumnElement[bool],
    search_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> SavedSearch | None:
    """Change name and/or description of the search within `scope`; None when it is not."""
    values: dict[str, Any] = {"updated_at": now or utcnow()}
    if name is not None:
        values["name"] = name
    if description is not None:
        values["description"] = description
    statement = (
        update(SavedSearch)
        .where(scope, SavedSearch.id == search_id)
        .values(**values)
        .returning(SavedSearch)
    )
    return conn.session.scalars(
        statement, execution_options={"synchronize_session": False}
    ).one_or_none()


@database_operation("deleteSavedSearch")
def delete_search(conn: Conn, user_id: str, search_id: str) -> bool:
    """True when the user's search existed and is now gone."""
    return delete_scoped(conn, _personal(user_id), search_id)


def delete_scoped(conn: Conn, scope: ColumnElement[bool], search_id: str) -> bool:
    """True when the search within `scope` existed and is now gone."""
    result = conn.session.execute(
        delete(SavedSearch).where(scope, SavedSearch.id == search_id).returning(SavedSearch.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None
