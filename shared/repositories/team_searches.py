"""A team's saved searches: rows of `saved_searches` with the organization's id.

Every statement is scoped by `organizationId`, so another organization's search (or anyone's
personal one) looks exactly like a missing one. `userId` is the member who created it (NULL once
that user is erased: the search stays with the team). Whether the caller may read or change
them is decided before, by the route's permission (`shared.http.orgs`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, insert, select, text
from sqlalchemy.orm import defer

from shared.clock import utcnow
from shared.db import Conn
from shared.errors import OrganizationNotFoundError, SavedSearchLimitError, UserNotFoundError
from shared.ids import new_uuid
from shared.models.saved_searches import SavedSearch
from shared.repositories import saved_searches
from shared.repositories.saved_searches import NewSavedSearch
from shared.telemetry import database_operation

MAX_PER_ORG = 200

_SEARCHES = cast(Table, SavedSearch.__table__)


# The creator's row kept from being erased, then the org's row (not deleted) locked for the
# count: one round trip. The creator's lock comes first (a one-time filter, evaluated before the
# organizations scan), the order an erasure takes the two in (the user's row, then the
# organizations it gives keywords back to), so the two never deadlock. The count runs in a later
# statement, whose snapshot sees what the lock waited for.
_LOCK = text(
    """
    WITH creator AS (SELECT id FROM users WHERE id = :user FOR KEY SHARE),
    team AS (
        SELECT id FROM organizations
        WHERE id = :org AND "deletedAt" IS NULL AND EXISTS (SELECT 1 FROM creator)
        FOR UPDATE
    )
    SELECT (SELECT id FROM creator) AS creator, (SELECT id FROM team) AS team
    """
)


@database_operation("createTeamSearch")
def create(
    conn: Conn,
    org_id: str,
    user_id: str,
    search: NewSavedSearch,
    *,
    now: datetime | None = None,
) -> SavedSearch:
    """Insert a team search created by `user_id` unless the org already has `MAX_PER_ORG`.

    Run in `shared.db.transaction()`: the org's row is locked first (with the creator's), so
    concurrent creates for one team queue up and each counts what the previous ones committed;
    then one INSERT … SELECT inserts only under the cap. Raises `OrganizationNotFoundError`
    (missing or deleted), `UserNotFoundError` (the creator has no row: erased meanwhile) or
    `SavedSearchLimitError`."""
    locked = conn.session.execute(_LOCK, {"org": org_id, "user": user_id}).one()
    if locked.creator is None:
        raise UserNotFoundError(user_id)
    if locked.team is None:
        raise OrganizationNotFoundError(org_id)
    moment = now or utcnow()
    values: dict[str, Any] = {
        "id": new_uuid(),
        "userId": user_id,
        "organizationId": org_id,
        "name": search.name,
        "description": search.description,
        "keywords": search.keywords,
        "keywordCount": len(search.keywords),
        "location": search.location,
        "language": search.language,
        "matchType": search.match_type,
        "results": search.results,
        "resultCount": None if search.results is None else len(search.results),
        "createdAt": moment,
        "updatedAt": moment,
        "lastAccessedAt": moment,
    }
    count = (
        select(func.count())
        .select_from(_SEARCHES)
        .where(_SEARCHES.c.organizationId == org_id)
        .scalar_subquery()
    )
    source = select(
        *[
            bindparam(f"p_{name}", value, type_=_SEARCHES.c[name].type)
            for name, value in values.items()
        ]
    ).where(count < MAX_PER_ORG)
    statement = insert(_SEARCHES).from_select(list(values), source).returning(*_SEARCHES.columns)
    created: SavedSearch | None = conn.session.scalars(
        select(SavedSearch).from_statement(statement)
    ).one_or_none()
    if created is None:
        raise SavedSearchLimitError(MAX_PER_ORG)
    return created


@database_operation("listTeamSearches")
def list_for_org(conn: Conn, org_id: str, *, limit: int = MAX_PER_ORG) -> list[SavedSearch]:
    """The team's searches, most recently updated first, without `results` (the list answers
    summaries; reading `results` of one raises)."""
    statement = (
        select(SavedSearch)
        .options(defer(SavedSearch.results, raiseload=True))
        .where(SavedSearch.organization_id == org_id)
        .order_by(SavedSearch.updated_at.desc(), SavedSearch.id.desc())
        .limit(limit)
    )
    return list(conn.session.scalars(statement))


@database_operation("getTeamSearch")
def get(
    conn: Conn, org_id: str, search_id: str, *, now: datetime | None = None
) -> SavedSearch | None:
    """The team's search, touching `lastAccessedAt` in the same statement."""
    return saved_searches.get_scoped(conn, _team(org_id), search_id, now=now)


@database_operation("updateTeamSearch")
def update_search(
    conn: Conn,
    org_id: str,
    search_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    now: datetime | None = None,
) -> SavedSearch | None:
    """Change name and/or description; None when the search is not the team's."""
    return saved_searches.update_scoped(
        conn, _team(org_id), search_id, name=name, description=description, now=now
    )


@database_operation("deleteTeamSearch")
def delete_search(conn: Conn, org_id: str, search_id: str) -> bool:
    """True when the team's search existed and is now gone."""
    return saved_searches.delete_scoped(conn, _team(org_id), search_id)


def _team(org_id: str) -> ColumnElement[bool]:
    return SavedSearch.organization_id == org_id
