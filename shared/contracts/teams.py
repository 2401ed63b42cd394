"""`/api/orgs/{orgId}/…` JSON shapes: a team's saved searches (the personal contract plus who
created each), its members and its usage (docs/organizations.md#routes-and-access)."""

from __future__ import annotations

from typing import Any

from shared.clock import iso_ms
from shared.contracts import compact, saved_searches
from shared.models.organizations import Organization, OrganizationMember
from shared.models.saved_searches import SavedSearch
from shared.quotas import OrgUsageView
from shared.repositories.team_searches import MAX_PER_ORG

# A members page: 500 of the longest (255-character ids, 100-character roles, all escaped) stay
# under 1.2 MB, far from Vercel's 4.5 MB; Clerk organizations have no member limit.
DEFAULT_MEMBERS, MAX_MEMBERS = 100, 500
LIMIT_REACHED = (
    f"Failed to save search. Your team may have reached the limit of {MAX_PER_ORG} saved searches."
)


def summary(search: SavedSearch) -> dict[str, Any]:
    """The personal list item plus `createdBy` (the creator's user id; null once erased)."""
    return {**saved_searches.summary(search), "createdBy": search.user_id}


def record(search: SavedSearch) -> dict[str, Any]:
    """The personal record plus `createdBy`."""
    return {**saved_searches.record(search), "createdBy": search.user_id}


def member(row: OrganizationMember) -> dict[str, Any]:
    """`{userId, role, joinedAt}`: no email or other personal data."""
    return {"userId": row.user_id, "role": row.role, "joinedAt": iso_ms(row.created_at)}


def usage(org: Organization, view: OrgUsageView, *, enforced: bool) -> dict[str, Any]:
    """`{tier, usage: {thisMonth, total, limit?, remaining?, resetsAt}}`; `limit` and `remaining`
    are left out while quotas are not enforced (BILLING_ENABLED=false), as on /api/me."""
    return {
        "tier": view.tier.value,
        "usage": compact(
            {
                "thisMonth": view.used,
                "total": org.keyword_searches_total,
                "limit": view.limit if enforced else None,
                "remaining": view.remaining if enforced else None,
                "resetsAt": iso_ms(view.resets_at),
            }
        ),
    }
