"""Organizations and their members: Clerk Organizations as the core knows them.

A request names its active organization in the session token; the webhook mirror (Clerk's
`organization.*` and `organizationMembership.*` events) may not have arrived yet, so the first
request of a new organization creates its row from the token (`ensure`), and the mirror fills in
the name later. A deleted organization stays as a tombstone (`deletedAt`): every read here
treats it as missing, so nothing of it is reachable once Clerk has deleted it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.models import Organization, OrganizationMember
from shared.telemetry import database_operation

# Read the row if it exists, else insert it; one statement. A racing insert of the same id makes
# this one do nothing and return no row (its snapshot predates the winner): re-run, as
# `users.get_or_create` does.
_ENSURE = text(
    """
    WITH existing AS (SELECT * FROM organizations WHERE id = :id),
    inserted AS (
        INSERT INTO organizations (id, name, slug, "monthlyResetAt", "createdAt", "updatedAt")
        SELECT :id, :name, :slug, :now, :now, :now
        WHERE NOT EXISTS (SELECT 1 FROM existing)
        ON CONFLICT (id) DO NOTHING
        RETURNING *
    )
    SELECT * FROM existing UNION ALL SELECT * FROM inserted
    """
)


@database_operation("ensureOrganization")
def ensure(
    session: Session, org_id: str, *, slug: str | None = None, now: datetime | None = None
) -> Organization | None:
    """The organization, created from what a token says (its slug, or its id, stands in for the
    name until Clerk's event arrives) when missing; None when it was deleted."""
    statement = select(Organization).from_statement(_ENSURE)
    values = {"id": org_id, "name": slug or org_id, "slug": slug, "now": now or utcnow()}
    for _ in range(3):
        found = session.scalars(statement, values).one_or_none()
        if found is not None:
            return None if found.deleted_at is not None else found
    raise RuntimeError("organization neither found nor created after 3 attempts")


@database_operation("getOrganization")
def get(session: Session, org_id: str) -> Organization | None:
    """The organization unless it is missing or deleted."""
    return session.scalars(
        select(Organization).where(Organization.id == org_id, Organization.deleted_at.is_(None))
    ).one_or_none()


@database_operation("getOrganizationMembership")
def membership(session: Session, org_id: str, user_id: str) -> OrganizationMember | None:
    """The user's current membership as the mirror knows it: None when there is none, it was
    removed, or the organization was deleted."""
    return session.scalars(
        select(OrganizationMember)
        .join(Organization, Organization.id == OrganizationMember.organization_id)
        .where(
            OrganizationMember.organization_id == org_id,
            OrganizationMember.user_id == user_id,
            OrganizationMember.deleted_at.is_(None),
            Organization.deleted_at.is_(None),
        )
    ).one_or_none()
