"""A team's members as listed to its members: the webhook mirror's live memberships."""

from __future__ import annotations

from sqlalchemy import Text, bindparam, select, tuple_

from shared.db import Conn
from shared.models import UTCDateTime
from shared.models.organizations import OrganizationMember
from shared.repositories.pagination import Cursor, Page, page_of
from shared.telemetry import database_operation


@database_operation("listOrganizationMembers")
def list_live(
    conn: Conn, org_id: str, *, limit: int, after: Cursor | None = None
) -> Page[OrganizationMember]:
    """Current memberships (tombstones left out), earliest joined first, one keyset page on
    (createdAt, userId) after `after`: a member who joins between pages comes after the
    cursor (they joined last), one who leaves is not listed again, and none repeats or is
    skipped (ties on createdAt are broken by userId)."""
    joined = tuple_(OrganizationMember.created_at, OrganizationMember.user_id)
    statement = (
        select(OrganizationMember)
        .where(
            OrganizationMember.organization_id == org_id, OrganizationMember.deleted_at.is_(None)
        )
        .order_by(OrganizationMember.created_at, OrganizationMember.user_id)
        .limit(limit + 1)
    )
    if after is not None:
        moment, user_id = after  # typed: an untyped time is a timestamptz, shifted by the session
        cursor = tuple_(
            bindparam("after_time", moment, type_=UTCDateTime()),
            bindparam("after_id", user_id, type_=Text()),
        )
        statement = statement.where(joined > cursor)
    rows = conn.session.scalars(statement).all()
    return page_of(rows, limit, lambda row: row, lambda row: (row.created_at, row.user_id))
