"""GET, PUT, DELETE /api/searches/{id}: one of the caller's saved searches
(docs/original-app.md#saved-searches-apisearches).

Another user's search answers 404 exactly like a missing one, so existence never leaks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import storage
from shared.contracts import saved_searches as contract
from shared.errors import UnstorableSearchError
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError, valid_or_400
from shared.http.openapi import body
from shared.http.responses import ok

app = create_app(title="Saved search", summary="Read, rename or delete one saved search.")
FOUND = body("The saved search", "SavedSearchAnswer")
DELETED = body("Deleted", "Success")


@app.get("/api/searches/{search_id}", response_model=None, responses={200: FOUND})
def get_search(search_id: str, user: CurrentUser) -> Response:
    sid = valid_or_400(contract.valid_search_id(search_id), contract.INVALID_ID)
    found = storage.get_search(user.user_id, sid)
    if found is None:
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"search": contract.record(found)})


@app.put(
    "/api/searches/{search_id}",
    response_model=None,
    responses={200: FOUND},
    openapi_extra=body_schema(contract.UpdateSavedSearch, contract.UPDATE_EXAMPLE),
)
def update_search(
    search_id: str,
    user: CurrentUser,
    body: Annotated[contract.UpdateSavedSearch, Depends(json_body(contract.UpdateSavedSearch))],
) -> Response:
    sid = valid_or_400(contract.valid_search_id(search_id), contract.INVALID_ID)
    try:
        updated = storage.update_search(
            user.user_id, sid, name=body.name, description=body.description
        )
    except UnstorableSearchError:  # only the legacy store has it, and Postgres cannot hold it
        raise ApiError(409, contract.UNSTORABLE) from None
    if updated is None:
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"search": contract.record(updated)})


@app.delete("/api/searches/{search_id}", response_model=None, responses={200: DELETED})
def delete_search(search_id: str, user: CurrentUser) -> Response:
    sid = valid_or_400(contract.valid_search_id(search_id), contract.INVALID_ID)
    if not storage.delete_search(user.user_id, sid):
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"success": True})


lambda_handler = make_lambda_handler(app)
