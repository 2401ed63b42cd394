"""Organizations and their members: Clerk Organizations as the core knows them.

A request names its active organization in the session token; the webhook mirror (Clerk's
`organization.*` and `organizationMembership.*` events) may not have arrived yet, so the first
request of a new organization creates its row from the token (`ensure`), and the mirror fills in
the name later. A deleted organization stays as a tombstone (`deletedAt`): every read here
treats it as missing, so nothing of it is reachable once Clerk has deleted it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import exists, select, text

from shared.clock import utcnow
from shared.db import Conn
from shared.models.organizations import Organization, OrganizationMember
from shared.models.users import User
from shared.repositories.rows import db_time
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
    conn: Conn, org_id: str, *, slug: str | None = None, now: datetime | None = None
) -> Organization | None:
    """The organization, created from what a token says (its slug, or its id, stands in for the
    name until Clerk's event arrives) when missing; None when it was deleted."""
    statement = select(Organization).from_statement(_ENSURE)
    values = {"id": org_id, "name": slug or org_id, "slug": slug, "now": now or utcnow()}
    for _ in range(3):
        found = conn.session.scalars(statement, values).one_or_none()
        if found is not None:
            return None if found.deleted_at is not None else found
    raise RuntimeError("organization neither found nor created after 3 attempts")


@database_operation("getOrganization")
def get(conn: Conn, org_id: str) -> Organization | None:
    """The organization unless it is missing or deleted."""
    return conn.session.scalars(
        select(Organization).where(Organization.id == org_id, Organization.deleted_at.is_(None))
    ).one_or_none()


@database_operation("getOrganizationMembership")
def membership(conn: Conn, org_id: str, user_id: str) -> OrganizationMember | None:
    """The user's current membership as the mirror knows it: None when there is none, it was
    removed, or the organization was deleted."""
    return conn.session.scalars(
        select(OrganizationMember)
        .join(Organization, Organization.id == OrganizationMember.organization_id)
        .where(
            OrganizationMember.organization_id == org_id,
            OrganizationMember.user_id == user_id,
            OrganizationMember.deleted_at.is_(None),
            Organization.deleted_at.is_(None),
        )
    ).one_or_none()


# --------------------------------------------------------------------------- the Clerk mirror
# Each Clerk event is one upsert that applies only when it is newer than what the row holds
# (`clerkUpdatedAt`); a tombstoned organization takes no change at all. See shared.organizations.

MirrorOutcome = Literal["created", "updated", "stale", "organization_deleted"]


@dataclass(frozen=True, slots=True)
class MirroredOrganization:
    id: str
    name: str
    slug: str | None
    changed_at: datetime  # Clerk's updated_at


@dataclass(frozen=True, slots=True)
class MirroredMembership:
    organization_id: str
    user_id: str
    role: str
    permissions: tuple[str, ...]
    joined_at: datetime  # Clerk's created_at, kept as the row's createdAt
    changed_at: datetime  # Clerk's updated_at
    deleted: bool  # organizationMembership.deleted


@dataclass(frozen=True, slots=True)
class Removal:
    """What `organization.deleted` removed (counts only: they are logged)."""

    searches_deleted: int
    reservations_deleted: int
    members_removed: int
    history_deleted: int
    history_detached: int
    subscription_status: str | None


_UPSERT_ORGANIZATION = text(
    """
    INSERT INTO organizations AS o (id, name, slug, "clerkUpdatedAt", "monthlyResetAt",
                                    "createdAt", "updatedAt")
    VALUES (:id, :name, :slug, :changed_at, :now, :now, :now)
    ON CONFLICT (id) DO UPDATE
        SET name = excluded.name, slug = excluded.slug,
            "clerkUpdatedAt" = excluded."clerkUpdatedAt", "updatedAt" = excluded."updatedAt"
        WHERE o."deletedAt" IS NULL
          AND (o."clerkUpdatedAt" IS NULL OR excluded."clerkUpdatedAt" > o."clerkUpdatedAt")
    RETURNING xmax = 0
    """
)


@database_operation("mirrorOrganization")
def mirror_organization(
    conn: Conn, org: MirroredOrganization, *, now: datetime | None = None
) -> MirrorOutcome:
    """Create the organization, or take Clerk's name and slug when `org` is newer than what was
    applied. An organization first seen in a token (`ensure`, no stamp) takes any event. Locks
    the row either way, so the caller's membership change and a deletion never interleave."""
    values = {
        "id": org.id,
        "name": org.name,
        "slug": org.slug,
        "changed_at": db_time(org.changed_at),
        "now": db_time(now or utcnow()),
    }
    inserted = conn.session.execute(_UPSERT_ORGANIZATION, values).scalar_one_or_none()
    if inserted is not None:
        return "created" if inserted else "updated"
    return "organization_deleted" if _is_deleted(conn, org.id) else "stale"


def _is_deleted(conn: Conn, org_id: str) -> bool:
    deleted = conn.session.execute(
        text('SELECT "deletedAt" IS NOT NULL FROM organizations WHERE id = :id'), {"id": org_id}
    ).scalar_one_or_none()
    return bool(deleted)


# Applies when newer; at the same stamp a deletion wins over a live row (Clerk's deleted
# membership may carry the stamp of its last update), so a late `created` never resurrects it.
# `createdAt` is when the member joined (Clerk's created_at), taken with the rest: a membership
# created again after its removal joined anew.
_UPSERT_MEMBERSHIP = text(
    """
    INSERT INTO organization_members AS m ("organizationId", "userId", role, permissions,
                                           "clerkUpdatedAt", "deletedAt", "createdAt", "updatedAt")
    SELECT o.id, :user_id, :role, :permissions, :changed_at, :deleted_at, :joined_at, :now
    FROM organizations o WHERE o.id = :org_id AND o."deletedAt" IS NULL
    ON CONFLICT ("organizationId", "userId") DO UPDATE
        SET role = excluded.role, permissions = excluded.permissions,
            "clerkUpdatedAt" = excluded."clerkUpdatedAt", "deletedAt" = excluded."deletedAt",
            "createdAt" = excluded."createdAt", "updatedAt" = excluded."updatedAt"
        WHERE m."clerkUpdatedAt" IS NULL
           OR excluded."clerkUpdatedAt" > m."clerkUpdatedAt"
           OR (excluded."clerkUpdatedAt" = m."clerkUpdatedAt"
               AND excluded."deletedAt" IS NOT NULL AND m."deletedAt" IS NULL)
    RETURNING xmax = 0
    """
)


@database_operation("mirrorMembership")
def mirror_membership(
    conn: Conn, member: MirroredMembership, *, now: datetime | None = None
) -> MirrorOutcome:
    """Apply one membership event when it is newer than what the row holds: a deletion is a
    tombstone (`deletedAt`), a newer `created`/`updated` makes the membership live again.
    Nothing happens for an organization that is missing or deleted (the caller mirrors the
    event's organization first, in the same transaction)."""
    at = db_time(now or utcnow())
    values = {
        "org_id": member.organization_id,
        "user_id": member.user_id,
        "role": member.role,
        "permissions": list(member.permissions),
        "joined_at": db_time(member.joined_at),
        "changed_at": db_time(member.changed_at),
        "deleted_at": at if member.deleted else None,
        "now": at,
    }
    inserted = conn.session.execute(_UPSERT_MEMBERSHIP, values).scalar_one_or_none()
    if inserted is not None:
        return "created" if inserted else "updated"
    exists = conn.session.execute(
        text('SELECT 1 FROM organizations WHERE id = :id AND "deletedAt" IS NULL'),
        {"id": member.organization_id},
    ).first()
    return "stale" if exists else "organization_deleted"


def live_team(org_id: str, member_id: str | None) -> Any:
    """The organization's id while it is not deleted, its row share-locked (FOR SHARE), for a
    statement writing the member's team data (`docs/organizations.md`, the deletion).

    FOR SHARE conflicts with the tombstone's update: a deletion waits for the writer's
    transaction (and then finds its rows), or the writer waits for the deletion's and then finds
    the tombstone, so nothing names a deleted organization. The member's row is share-locked
    first (FOR KEY SHARE, a one-time filter evaluated before the organization is touched), the
    order an erasure takes them in, so the two never deadlock."""
    team = select(Organization.id).where(
        Organization.id == org_id, Organization.deleted_at.is_(None)
    )
    if member_id is not None:
        member = select(User.id).where(User.id == member_id)
        member = member.with_for_update(read=True, key_share=True)
        team = team.where(exists(member))
    return team.with_for_update(read=True)


# The tombstone: name and slug cleared; tier, counters and the Stripe ids and status kept, so
# billing recognises a deleted organization's customer (and never brings the row back).
_TOMBSTONE = text(
    """
    INSERT INTO organizations AS o (id, name, slug, "deletedAt", "monthlyResetAt", "createdAt",
                                    "updatedAt")
    VALUES (:id, '', NULL, :now, :now, :now, :now)
    ON CONFLICT (id) DO UPDATE
        SET name = '', slug = NULL, "deletedAt" = excluded."deletedAt",
            "updatedAt" = excluded."updatedAt"
        WHERE o."deletedAt" IS NULL
    RETURNING "subscriptionStatus"
    """
)

# Everything of the organization, in one statement (its own snapshot, taken after the tombstone
# holds the row lock): team searches and reservations deleted, memberships tombstoned, the
# team's history rows without a person deleted and the others left as their member's own.
# search_history is partitioned; `"organizationId" = :id` uses its partial index.
_REMOVE_DATA = text(
    """
    WITH searches AS (
        DELETE FROM saved_searches WHERE "organizationId" = :id RETURNING 1
    ), reservations AS (
        DELETE FROM keyword_reservations WHERE "organizationId" = :id RETURNING 1
    ), members AS (
        UPDATE organization_members SET "deletedAt" = :now, "updatedAt" = :now
        WHERE "organizationId" = :id AND "deletedAt" IS NULL RETURNING 1
    ), orphans AS (
        DELETE FROM search_history
        WHERE "organizationId" = :id AND "userId" IS NULL RETURNING 1
    ), detached AS (
        UPDATE search_history SET "organizationId" = NULL
        WHERE "organizationId" = :id AND "userId" IS NOT NULL RETURNING 1
    )
    SELECT (SELECT count(*) FROM searches), (SELECT count(*) FROM reservations),
           (SELECT count(*) FROM members), (SELECT count(*) FROM orphans),
           (SELECT count(*) FROM detached)
    """
)


@database_operation("deleteOrganization")
def delete(conn: Conn, org_id: str, *, now: datetime | None = None) -> Removal:
    """Tombstone the organization (final: Clerk never reuses an id) and remove its data, in the
    caller's transaction. Two statements on purpose: the tombstone waits for every transaction
    holding the organization's row (a quota charge, a writer that locked it live) to finish, so
    the removal's snapshot sees their rows; a later writer finds the tombstone. Idempotent: a
    second run finds nothing left."""
    at = db_time(now or utcnow())
    status = conn.session.execute(_TOMBSTONE, {"id": org_id, "now": at}).one_or_none()
    searches, reservations, members, orphans, detached = conn.session.execute(
        _REMOVE_DATA, {"id": org_id, "now": at}
    ).one()
    return Removal(
        searches_deleted=searches,
        reservations_deleted=reservations,
        members_removed=members,
        history_deleted=orphans,
        history_detached=detached,
        subscription_status=None if status is None else status[0],
    )
