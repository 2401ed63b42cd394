"""Saved searches: at most 50 per user, every call scoped by the owner's id.

Scoping every statement by `userId` means another user's search looks exactly like a missing
one, so existence never leaks across accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import delete, func, insert, literal, select, update
from sqlalchemy.orm import Session, defer

from shared.clock import utcnow
from shared.errors import SavedSearchLimitError, UserNotFoundError
from shared.ids import new_uuid
from shared.models import SavedSearch, User
from shared.repositories.pagination import Cursor, Page, keyset_page
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


def _require_transaction(session: Session) -> None:
    driver = session.connection().connection.driver_connection
    if driver is None or driver.info.transaction_status == TransactionStatus.IDLE:
        raise RuntimeError("saved_searches.create must run inside shared.db.transaction()")


@database_operation("createSavedSearch")
def create(
    session: Session,
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
    _require_transaction(session)
    owner = session.execute(select(User.id).where(User.id == user_id).with_for_update()).first()
    if owner is None:
        raise UserNotFoundError(user_id)
    now = now or utcnow()
    count = (
        select(func.count()).select_from(SavedSearch).where(SavedSearch.user_id == user_id)
    ).scalar_subquery()
    values: dict[str, Any] = {
        "id": search_id or new_uuid(),
        "user_id": user_id,
        "name": search.name,
        "description": search.description,
        "keywords": search.keywords,
        "keyword_count": len(search.keywords),
        "location": search.location,
        "language": search.language,
        "match_type": search.match_type,
        "results": search.results,
        "result_count": None if search.results is None else len(search.results),
        "created_at": now,
        "updated_at": now,
        "last_accessed_at": now,
    }
    columns = [getattr(SavedSearch, name) for name in values]
    source = select(
        *[
            literal(value, column.type)
            for value, column in zip(values.values(), columns, strict=True)
        ]
    ).where(count < MAX_PER_USER)
    statement = insert(SavedSearch).from_select(columns, source).returning(SavedSearch)
    created: SavedSearch | None = session.scalars(statement).one_or_none()
    if created is None:
        raise SavedSearchLimitError(MAX_PER_USER)
    return created


@database_operation("getSavedSearch")
def get(
    session: Session, user_id: str, search_id: str, *, now: datetime | None = None
) -> SavedSearch | None:
    """The user's saved search, touching `lastAccessedAt` in the same statement."""
    statement = (
        update(SavedSearch)
        .where(SavedSearch.id == search_id, SavedSearch.user_id == user_id)
        .values(last_accessed_at=now or utcnow())
        .returning(SavedSearch)
    )
    return session.scalars(
        statement, execution_options={"synchronize_session": False}
    ).one_or_none()


@database_operation("listSavedSearches")
def list_for_user(
    session: Session,
    user_id: str,
    *,
    limit: int = MAX_PER_USER,
    cursor: Cursor | None = None,
) -> Page[SavedSearch]:
    """Most recently updated first (the original API's order), keyset on (updatedAt, id).

    `results` is not loaded (raising if touched): the list answers summaries, and 50 searches'
    results could be tens of megabytes in memory."""
    return keyset_page(
        session,
        select(SavedSearch)
        .where(SavedSearch.user_id == user_id)
        .options(defer(SavedSearch.results, raiseload=True)),
        time_column=SavedSearch.updated_at,
        id_column=SavedSearch.id,
        cursor_of=lambda row: (row.updated_at, row.id),
        limit=limit,
        cursor=cursor,
    )


@database_operation("updateSavedSearch")
def update_search(
    session: Session,
    user_id: str,
    search_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> SavedSearch | None:
    """Change name and/or description; None when the search is not the user's."""
    values: dict[str, Any] = {"updated_at": now or utcnow()}
    if name is not None:
        values["name"] = name
    if description is not None:
        values["description"] = description
    statement = (
        update(SavedSearch)
        .where(SavedSearch.id == search_id, SavedSearch.user_id == user_id)
        .values(**values)
        .returning(SavedSearch)
    )
    return session.scalars(
        statement, execution_options={"synchronize_session": False}
    ).one_or_none()


@database_operation("deleteSavedSearch")
def delete_search(session: Session, user_id: str, search_id: str) -> bool:
    """True when the user's search existed and is now gone."""
    result = session.execute(
        delete(SavedSearch)
        .where(SavedSearch.id == search_id, SavedSearch.user_id == user_id)
        .returning(SavedSearch.id),
        execution_options={"synchronize_session": False},
    )
    return result.first() is not None
