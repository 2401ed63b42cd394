"""GET /api/orgs/{orgId}/members: a team's members as the Clerk webhook mirror knows them
(docs/organizations.md#routes-and-access), one keyset page at a time. Needs
`org:members:read`; user ids, roles and when they joined, never emails.

`limit` (1..MAX_MEMBERS, default DEFAULT_MEMBERS) and `cursor`/`nextCursor` follow
`/api/history`'s rules: a Clerk organization has no member limit, and one answer for all of
them would pass the platforms' payload limits (about 43,000 members on Vercel).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from starlette.responses import Response

from shared import db, rbac
from shared.contracts import paging, teams
from shared.http.app import create_app, make_lambda_handler
from shared.http.openapi import body, whole_number_query
from shared.http.orgs import RESPONSES, OrgAccess, permitted
from shared.http.responses import ok
from shared.repositories import team_members

app = create_app(title="Team members", summary="List a team's members.")

LIMIT = whole_number_query(
    "limit",
    "Page size",
    minimum=1,
    maximum=teams.MAX_MEMBERS,
    default=teams.DEFAULT_MEMBERS,
)


@app.get(
    "/api/orgs/{org_id}/members",
    response_model=None,
    responses={
        **RESPONSES,
        200: body("A page of the team's members", "MemberPage"),
    },
    openapi_extra=LIMIT,
)
def list_members(
    access: Annotated[OrgAccess, Depends(permitted(rbac.MEMBERS_READ))],
    limit: Annotated[str | None, Query(include_in_schema=False)] = None,
    cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page")] = None,
) -> Response:
    """The live members (removed ones left out), earliest joined first."""
    size = paging.bounded_int(
        limit, name="limit", default=teams.DEFAULT_MEMBERS, minimum=1, maximum=teams.MAX_MEMBERS
    )
    after = None if cursor is None else paging.decode_cursor(cursor, paging.CLERK_IDS)
    page = db.run(
        lambda conn: team_members.list_live(conn, access.org_id, limit=size, after=after),
        idempotent=True,
    )
    body: dict[str, object] = {"members": [teams.member(row) for row in page.items]}
    if page.next_cursor is not None:
        body["nextCursor"] = paging.encode_cursor(page.next_cursor)
    return ok(body)


lambda_handler = make_lambda_handler(app)
