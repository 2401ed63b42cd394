"""GET, PUT, DELETE /api/searches/{id}: one of the caller's saved searches (spec §2.4).

Another user's search answers 404 exactly like a missing one, so existence never leaks.
"""

from __future__ import annotations

from starlette.responses import Response

from shared import storage
from shared.auth import CurrentUser
from shared.contracts import saved_searches as contract
from shared.http.app import create_app, lambda_handler
from shared.http.errors import ApiError
from shared.http.responses import ok

app = create_app(title="Saved search", summary="Read, rename or delete one saved search.")


def _search_id(raw: str) -> str:
    search_id = contract.valid_search_id(raw)
    if search_id is None:
        raise ApiError(400, contract.INVALID_ID)
    return search_id


@app.get("/api/searches/{search_id}", response_model=None)
def get_search(search_id: str, user: CurrentUser) -> Response:
    sid = _search_id(search_id)
    found = storage.get_search(user.user_id, sid)
    if found is None:
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"search": contract.record(found)})


@app.put("/api/searches/{search_id}", response_model=None)
def update_search(search_id: str, body: contract.UpdateSavedSearch, user: CurrentUser) -> Response:
    sid = _search_id(search_id)
    updated = storage.update_search(user.user_id, sid, name=body.name, description=body.description)
    if updated is None:
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"search": contract.record(updated)})


@app.delete("/api/searches/{search_id}", response_model=None)
def delete_search(search_id: str, user: CurrentUser) -> Response:
    sid = _search_id(search_id)
    if not storage.delete_search(user.user_id, sid):
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"success": True})


handler = lambda_handler(app)
