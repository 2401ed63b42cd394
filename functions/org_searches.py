"""GET, POST /api/orgs/{orgId}/searches: list and create a team's shared saved searches
(docs/organizations.md#routes-and-access).

Access is `shared.http.orgs`: a member of the org (by token or mirror) reads with
`org:searches:read` and creates with `org:searches:manage`; anyone else gets 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, rbac
from shared.auth import again_if_erased
from shared.contracts import saved_searches as personal
from shared.contracts import teams
from shared.errors import OrganizationNotFoundError, SavedSearchLimitError
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.http.openapi import body
from shared.http.orgs import RESPONSES, OrgAccess, permitted
from shared.http.responses import ok
from shared.repositories import team_searches

app = create_app(title="Team searches", summary="List and create a team's saved searches.")

Reader = Annotated[OrgAccess, Depends(permitted(rbac.SEARCHES_READ))]
Manager = Annotated[OrgAccess, Depends(permitted(rbac.SEARCHES_MANAGE))]


@app.get(
    "/api/orgs/{org_id}/searches",
    response_model=None,
    responses={
        **RESPONSES,
        200: body("The team's saved searches", "TeamSearchList"),
    },
)
def list_team_searches(access: Reader) -> Response:
    """The team's saved searches (at most 200), most recently updated first."""
    found = db.run(lambda conn: team_searches.list_for_org(conn, access.org_id), idempotent=True)
    return ok({"searches": [teams.summary(search) for search in found]})


@app.post(
    "/api/orgs/{org_id}/searches",
    status_code=201,
    response_model=None,
    responses={
        **RESPONSES,
        201: body("The saved search", "TeamSearchAnswer"),
    },
    openapi_extra=body_schema(personal.CreateSavedSearch, personal.CREATE_EXAMPLE),
)
def create_team_search(
    access: Manager,
    user: CurrentUser,  # the Identity `access` came from (FastAPI caches it per request)
    body: Annotated[personal.CreateSavedSearch, Depends(json_body(personal.CreateSavedSearch))],
) -> Response:
    """Save a search for the team (the body of POST /api/searches); a team may keep 200."""
    new = personal.new_search(body)
    try:
        created = again_if_erased(
            user,
            lambda: db.transaction(
                lambda conn: team_searches.create(conn, access.org_id, user.user_id, new)
            ),
        )
    except SavedSearchLimitError:
        raise ApiError(400, teams.LIMIT_REACHED) from None
    except OrganizationNotFoundError:  # deleted since access was checked
        raise ApiError(404, ORG_NOT_FOUND) from None
    return ok({"search": teams.record(created)}, status=201)


lambda_handler = make_lambda_handler(app)
