"""Who may act in the organization a path names (`/api/orgs/{org_id}/…`): one dependency.

The caller (a valid session token, else 401) acts in the org when the token's active org is it
(role and permissions from the token; a first sight creates the org's row, `organizations.ensure`)
or, failing that, when the webhook mirror holds a live membership (role and permissions from the
mirror). Anyone else and a deleted org get the same 404, so a response never tells whether an
org exists; an id not shaped like Clerk's (`org_` + letters and digits) is a 400 before any
lookup, as malformed ids are on every route (its shape says nothing about what exists). A member
then needs the route's permission (`shared.rbac.allows`), else 403.
docs/organizations.md#routes-and-access.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from shared import db, rbac
from shared.auth import Identity
from shared.db import Conn
from shared.http.auth import CurrentUser
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.org_ids import ORG_ID
from shared.repositories import organizations

INVALID_ORG_ID = "Invalid organization ID format"
FORBIDDEN = "You do not have permission to do this in this organization"
RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "The org id (or search id, or body) is malformed"},
    401: {"description": "No valid session token"},
    403: {"description": "A member whose role and permissions lack the route's permission"},
    404: {"description": "No such organization for the caller (missing, deleted, or not theirs)"},
}


@dataclass(frozen=True, slots=True)
class OrgAccess:
    """The caller's standing in the path's organization, once membership is established."""

    org_id: str
    user_id: str
    role: str
    permissions: frozenset[str]


def _resolve(conn: Conn, org_id: str, user: Identity) -> OrgAccess | None:
    token_org = user.org
    if token_org is not None and token_org.id == org_id:
        if organizations.ensure(conn, org_id, slug=token_org.slug) is None:
            return None  # deleted: the token is no longer proof of anything
        return OrgAccess(org_id, user.user_id, token_org.role, token_org.permissions)
    member = organizations.membership(conn, org_id, user.user_id)
    if member is None:
        return None
    return OrgAccess(org_id, user.user_id, member.role, frozenset(member.permissions or ()))


def org_access(org_id: str, user: CurrentUser) -> OrgAccess:
    """The caller's membership of `org_id` (token first, then the mirror), else 404; 400 for an
    id of the wrong shape."""
    if ORG_ID.fullmatch(org_id) is None:
        raise ApiError(400, INVALID_ORG_ID)
    access = db.run(lambda conn: _resolve(conn, org_id, user), idempotent=True)
    if access is None:
        raise ApiError(404, ORG_NOT_FOUND)
    return access


def permitted(needed: str) -> Callable[[OrgAccess], OrgAccess]:
    """A dependency: the caller's access when their role or permissions grant `needed`, else 403
    (an unknown `needed` fails when the route is declared, not on a request)."""
    if needed not in rbac.PERMISSIONS:
        raise ValueError(f"unknown permission {needed!r}")

    def check(access: Annotated[OrgAccess, Depends(org_access)]) -> OrgAccess:
        if not rbac.allows(access.role, access.permissions, needed):
            raise ApiError(403, FORBIDDEN)
        return access

    return check
