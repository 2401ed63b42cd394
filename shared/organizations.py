"""Clerk's organization events mirrored into `organizations` and `organization_members`.

Svix delivers late, twice, and in any order, so every event is applied exactly once (the
delivery claimed in the webhook ledger in the transaction of its effect) and only when it is
newer than what its row holds (Clerk's `updated_at`, kept as `clerkUpdatedAt`):
- `organization.created` / `organization.updated`: the organization's name and slug.
- `organizationMembership.created` / `.updated` / `.deleted`: the member's role and permissions,
  or the membership's tombstone. The event's own copy of the organization is mirrored first, so a
  membership that arrives before its organization creates it.
- `organization.deleted` (it carries only the id): final, as Clerk never reuses an id. The row
  becomes a tombstone and the organization's data goes in the same transaction
  (`shared.repositories.organizations.delete`); later events for it change nothing.
Logs carry the event type, the outcome and counts; never ids, names or emails.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from shared import db
from shared.accounts import CLERK, MAX_MILLISECONDS
from shared.db import Conn
from shared.org_ids import is_org_id
from shared.repositories import organizations, subscriptions, webhook_events
from shared.repositories.organizations import Removal
from shared.telemetry import log_event

ORGANIZATION_EVENTS = frozenset({"organization.created", "organization.updated"})
MEMBERSHIP_EVENTS = frozenset(
    {
        "organizationMembership.created",
        "organizationMembership.updated",
        "organizationMembership.deleted",
    }
)
ORGANIZATION_DELETED = "organization.deleted"
# Clerk's role keys from before the `org:` prefix (its webhook examples still send them).
LEGACY_ROLES = {"admin": "org:admin", "basic_member": "org:member"}

Id = Annotated[str, Field(min_length=1, max_length=255)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
Millis = Annotated[int, Field(ge=0, le=MAX_MILLISECONDS, strict=True)]
Permission = Annotated[str, Field(min_length=1, max_length=100)]


def _org_id(value: str) -> str:
    """Shaped as every org route and session token wants it: a row no route reaches is no use."""
    if not is_org_id(value):
        raise ValueError("not a Clerk organization id")
    return value


OrgId = Annotated[str, AfterValidator(_org_id)]


def _at(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


class ClerkOrganization(BaseModel):
    """The parts of Clerk's Organization object we keep (logo, metadata, creator: ignored)."""

    id: OrgId
    name: Name
    slug: Annotated[str, Field(max_length=256)] | None = None
    updated_at: Millis

    def mirrored(self) -> organizations.MirroredOrganization:
        return organizations.MirroredOrganization(
            self.id, self.name, self.slug or None, _at(self.updated_at)
        )


class ClerkPublicUserData(BaseModel):
    user_id: Id  # name, identifier (an email) and images are never read


class ClerkMembership(BaseModel):
    """Clerk's OrganizationMembership object, trimmed to what the mirror keeps."""

    role: Annotated[str, Field(min_length=1, max_length=100)]
    permissions: Annotated[list[Permission], Field(max_length=200)] = []
    organization: ClerkOrganization
    public_user_data: ClerkPublicUserData
    created_at: Millis  # when the member joined: a re-created membership has its own
    updated_at: Millis

    def mirrored(self, *, deleted: bool) -> organizations.MirroredMembership:
        return organizations.MirroredMembership(
            organization_id=self.organization.id,
            user_id=self.public_user_data.user_id,
            role=normalise_role(self.role),
            permissions=tuple(dict.fromkeys(self.permissions)),
            joined_at=_at(self.created_at),
            changed_at=_at(self.updated_at),
            deleted=deleted,
        )


class DeletedOrganization(BaseModel):
    """organization.deleted's data: `{id, object, deleted: true}`, nothing else."""

    id: OrgId


OrganizationEvent = ClerkOrganization | ClerkMembership | DeletedOrganization
EVENT_MODELS: dict[str, type[OrganizationEvent]] = {
    **dict.fromkeys(ORGANIZATION_EVENTS, ClerkOrganization),
    **dict.fromkeys(MEMBERSHIP_EVENTS, ClerkMembership),
    ORGANIZATION_DELETED: DeletedOrganization,
}


def normalise_role(role: str) -> str:
    """The role as the session token's `org_role` spells it: `org:`-prefixed."""
    role = LEGACY_ROLES.get(role, role)
    return role if role.startswith("org:") else f"org:{role}"


def _effect(conn: Conn, kind: str, event: OrganizationEvent) -> str | Removal:
    if isinstance(event, ClerkOrganization):
        return organizations.mirror_organization(conn, event.mirrored())
    if isinstance(event, ClerkMembership):
        outcome = organizations.mirror_organization(conn, event.organization.mirrored())
        if outcome == "organization_deleted":
            return outcome
        deleted = kind == "organizationMembership.deleted"
        return organizations.mirror_membership(conn, event.mirrored(deleted=deleted))
    return organizations.delete(conn, event.id)


def _apply(conn: Conn, delivery: str, kind: str, event: OrganizationEvent) -> str | Removal | None:
    """Claim the delivery and apply its effect in the caller's transaction; None = duplicate."""
    if webhook_events.claim(conn, delivery, kind, None, provider=CLERK) is None:
        return None
    outcome = _effect(conn, kind, event)
    webhook_events.mark_processed(conn, delivery)
    return outcome


def _log_removal(removal: Removal) -> None:
    if removal.subscription_status in subscriptions.LIVE_STATUSES:
        # Nothing here cancels it: Stripe holds the billing relationship, as for an erased
        # user (docs/billing.md); support finds the organization by the subscription's events.
        log_event(
            "organization_deleted_with_live_subscription",
            level=logging.WARNING,
            status=removal.subscription_status,
        )
    log_event(
        "organization_data_removed",
        searchesDeleted=removal.searches_deleted,
        reservationsDeleted=removal.reservations_deleted,
        membersRemoved=removal.members_removed,
        historyDeleted=removal.history_deleted,
        historyDetached=removal.history_detached,
    )


def apply_organization_event(delivery: str, kind: str, event: OrganizationEvent) -> dict[str, bool]:
    """Apply one verified Clerk organization or membership event exactly once."""
    outcome = db.transaction(lambda conn: _apply(conn, delivery, kind, event))
    if outcome is None:
        log_event("clerk_webhook", type=kind, outcome="duplicate")
        return {"received": True, "duplicate": True}
    if isinstance(outcome, Removal):
        _log_removal(outcome)
        outcome = "deleted"
    log_event("clerk_webhook", type=kind, outcome=outcome)
    return {"received": True}
