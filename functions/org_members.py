"""GET /api/orgs/{orgId}/members: a team's members as the Clerk webhook mirror knows them
(docs/organizations.md#routes-and-access). Needs `org:members:read`; user ids, roles and when
they joined, never emails."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, rbac
from shared.contracts import teams
from shared.http.app import create_app, make_lambda_handler
from shared.http.orgs import RESPONSES, OrgAccess, permitted
from shared.http.responses import ok
from shared.repositories import team_members

app = create_app(title="Team members", summary="List a team's members.")


@app.get("/api/orgs/{org_id}/members", response_model=None, responses=RESPONSES)
def list_members(
    access: Annotated[OrgAccess, Depends(permitted(rbac.MEMBERS_READ))],
) -> Response:
    """The live members (removed ones left out), earliest joined first."""
    found = db.run(lambda conn: team_members.list_live(conn, access.org_id), idempotent=True)
    return ok({"members": [teams.member(row) for row in found]})


lambda_handler = make_lambda_handler(app)
