"""GET, PUT, DELETE /api/orgs/{orgId}/searches/{id}: one of a team's saved searches
(docs/organizations.md#routes-and-access).

Reading needs `org:searches:read`, changing `org:searches:manage` (`shared.http.orgs`). Another
team's search, or a personal one, answers 404 exactly like a missing one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, rbac
from shared.contracts import saved_searches as personal
from shared.contracts import teams
from shared.http.app import create_app, make_lambda_handler
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError, valid_or_400
from shared.http.openapi import body
from shared.http.orgs import RESPONSES, OrgAccess, permitted
from shared.http.responses import ok
from shared.repositories import team_searches

app = create_app(title="Team search", summary="Read, rename or delete one of a team's searches.")

Reader = Annotated[OrgAccess, Depends(permitted(rbac.SEARCHES_READ))]
Manager = Annotated[OrgAccess, Depends(permitted(rbac.SEARCHES_MANAGE))]
PATH = "/api/orgs/{org_id}/searches/{search_id}"
FOUND = {**RESPONSES, 200: body("The team's search", "TeamSearchAnswer")}


@app.get(PATH, response_model=None, responses=FOUND)
def get_team_search(search_id: str, access: Reader) -> Response:
    sid = valid_or_400(personal.valid_search_id(search_id), personal.INVALID_ID)
    found = db.run(lambda conn: team_searches.get(conn, access.org_id, sid))
    if found is None:
        raise ApiError(404, personal.NOT_FOUND)
    return ok({"search": teams.record(found)})


@app.put(
    PATH,
    response_model=None,
    responses=FOUND,
    openapi_extra=body_schema(personal.UpdateSavedSearch, personal.UPDATE_EXAMPLE),
)
def update_team_search(
    search_id: str,
    access: Manager,
    body: Annotated[personal.UpdateSavedSearch, Depends(json_body(personal.UpdateSavedSearch))],
) -> Response:
    sid = valid_or_400(personal.valid_search_id(search_id), personal.INVALID_ID)
    updated = db.run(
        lambda conn: team_searches.update_search(
            conn, access.org_id, sid, name=body.name, description=body.description
        )
    )
    if updated is None:
        raise ApiError(404, personal.NOT_FOUND)
    return ok({"search": teams.record(updated)})


@app.delete(
    PATH,
    response_model=None,
    responses={**RESPONSES, 200: body("Deleted", "Success")},
)
def delete_team_search(search_id: str, access: Manager) -> Response:
    sid = valid_or_400(personal.valid_search_id(search_id), personal.INVALID_ID)
    if not db.run(lambda conn: team_searches.delete_search(conn, access.org_id, sid)):
        raise ApiError(404, personal.NOT_FOUND)
    return ok({"success": True})


lambda_handler = make_lambda_handler(app)
