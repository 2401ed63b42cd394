"""The permission matrix: the only place that decides what a member may do in an organization.

Every org route declares the permission it needs and asks `allows`. A role grants the
permissions `ROLE_PERMISSIONS` lists; Clerk custom permissions in the session token
(`ActiveOrg.permissions`) add to them, so a member given `org:searches:manage` or
`org:billing:manage` in Clerk holds it. A role not in the matrix grants nothing of its own.
docs/organizations.md shows the matrix (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

SEARCHES_READ = "org:searches:read"
SEARCHES_MANAGE = "org:searches:manage"
MEMBERS_READ = "org:members:read"
USAGE_READ = "org:usage:read"
KEYWORDS_SEARCH = "org:keywords:search"
BILLING_MANAGE = "org:billing:manage"

ADMIN = "org:admin"
MEMBER = "org:member"

PERMISSIONS = frozenset(
    {SEARCHES_READ, SEARCHES_MANAGE, MEMBERS_READ, USAGE_READ, KEYWORDS_SEARCH, BILLING_MANAGE}
)
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        ADMIN: PERMISSIONS,
        MEMBER: frozenset({SEARCHES_READ, MEMBERS_READ, USAGE_READ, KEYWORDS_SEARCH}),
    }
)


def allows(role: str, custom: frozenset[str], needed: str) -> bool:
    """Whether `role` plus the token's custom permissions grant `needed`. `needed` must be one
    of ours: a route declaring a misspelt permission fails loudly instead of denying quietly."""
    if needed not in PERMISSIONS:
        raise ValueError(f"unknown permission {needed!r}")
    return needed in custom or needed in ROLE_PERMISSIONS.get(role, frozenset())
