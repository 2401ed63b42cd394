"""The organization checks of the org Stripe sessions
(docs/organizations.md#billing-per-organization).

After the personal routes' checks (`shared.http.stripe_sessions`: 503, 401, 429), an
organization's session needs an id shaped like Clerk's (else 400) and the caller to be in the
organization (the token's active org, else the mirror's membership; else 404, the same as no such
organization) with `org:billing:manage` (`shared.rbac`; else 403). A module of its own so that
checkout and the billing portal, which serve only the caller's own account, do not load the org
routes' layer at cold start.
"""

from __future__ import annotations

from starlette.requests import Request

from shared import db, rbac
from shared.http import orgs, stripe_sessions
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.models.organizations import Organization
from shared.models.users import User
from shared.repositories import organizations

BILLING_FORBIDDEN = "You do not have permission to manage this organization's billing"


def org_caller(
    request: Request, org_id: str, endpoint: str, refused: str
) -> tuple[User, Organization]:
    """The caller's row and the organization whose billing they manage, after the shared
    checks: the org routes' own access rule (`shared.http.orgs.org_access`: 400 for an id no
    organization can have, 404 unless they are in it), then 403 unless they hold
    `org:billing:manage`."""
    identity = stripe_sessions.checked(request, endpoint, refused)
    access = orgs.org_access(org_id, identity)
    user = stripe_sessions.provisioned(identity)
    if not rbac.allows(access.role, access.permissions, rbac.BILLING_MANAGE):
        raise ApiError(403, BILLING_FORBIDDEN)
    org = db.run(lambda conn: organizations.get(conn, org_id), idempotent=True)
    if org is None:  # deleted since the access check
        raise ApiError(404, ORG_NOT_FOUND)
    return user, org
