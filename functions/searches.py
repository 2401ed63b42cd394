"""GET, POST /api/searches: list and create the caller's saved searches
(docs/original-app.md#saved-searches-apisearches)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import storage
from shared.auth import again_if_erased
from shared.contracts import saved_searches as contract
from shared.errors import SavedSearchLimitError
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError
from shared.http.openapi import body
from shared.http.responses import ok

app = create_app(title="Saved searches", summary="List and create the caller's saved searches.")


@app.get(
    "/api/searches",
    response_model=None,
    responses={200: body("The caller's saved searches", "SavedSearchList")},
)
def list_searches(user: CurrentUser) -> Response:
    """The caller's saved searches (at most 50), most recently updated first."""
    found = storage.list_searches(user.user_id)
    return ok({"searches": [contract.summary(search) for search in found]})


@app.post(
    "/api/searches",
    status_code=201,
    response_model=None,
    responses={201: body("The saved search", "SavedSearchAnswer")},
    openapi_extra=body_schema(contract.CreateSavedSearch, contract.CREATE_EXAMPLE),
)
def create_search(
    user: CurrentUser,
    body: Annotated[contract.CreateSavedSearch, Depends(json_body(contract.CreateSavedSearch))],
) -> Response:
    """Save a search; a user may keep 50."""
    new = contract.new_search(body)
    try:
        created = again_if_erased(user, lambda: storage.create_search(user.user_id, new))
    except SavedSearchLimitError:
        raise ApiError(400, contract.LIMIT_REACHED) from None
    return ok({"search": contract.record(created)}, status=201)


lambda_handler = make_lambda_handler(app)
