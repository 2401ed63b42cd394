"""A team's members as listed to its members: the webhook mirror's live memberships."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from shared.db import Conn
from shared.models.organizations import OrganizationMember
from shared.telemetry import database_operation


@database_operation("listOrganizationMembers")
def list_live(conn: Conn, org_id: str) -> Sequence[OrganizationMember]:
    """Current memberships (tombstones left out), earliest joined first."""
    return conn.session.scalars(
        select(OrganizationMember)
        .where(
            OrganizationMember.organization_id == org_id, OrganizationMember.deleted_at.is_(None)
        )
        .order_by(OrganizationMember.created_at, OrganizationMember.user_id)
    ).all()
