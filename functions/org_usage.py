"""GET /api/orgs/{orgId}/usage: a team's tier and pooled monthly keyword usage
(docs/organizations.md#routes-and-access, #team-quota). Needs `org:usage:read`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, rbac
from shared.clock import utcnow
from shared.config import get_settings
from shared.contracts import teams
from shared.http.app import create_app, make_lambda_handler
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.http.openapi import body
from shared.http.orgs import RESPONSES, OrgAccess, permitted
from shared.http.responses import ok
from shared.quotas import OrgLimits, org_usage_view
from shared.repositories import organizations

app = create_app(title="Team usage", summary="A team's tier and monthly keyword usage.")


@app.get(
    "/api/orgs/{org_id}/usage",
    response_model=None,
    responses={
        **RESPONSES,
        200: body(
            "The team's keywords this month against its tier's limit",
            "TeamUsageAnswer",
        ),
    },
)
def get_usage(access: Annotated[OrgAccess, Depends(permitted(rbac.USAGE_READ))]) -> Response:
    """This month's keywords (the lazy monthly reset applied on read) against the tier's limit."""
    org = db.run(lambda conn: organizations.get(conn, access.org_id), idempotent=True)
    if org is None:  # deleted since access was checked
        raise ApiError(404, ORG_NOT_FOUND)
    settings = get_settings()
    view = org_usage_view(org, OrgLimits.from_settings(settings), utcnow())
    return ok(teams.usage(org, view, enforced=settings.billing_enabled))


lambda_handler = make_lambda_handler(app)
