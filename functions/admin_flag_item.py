"""GET, PUT, DELETE /api/admin/flags/{key}: one feature flag (admins only).

PUT changes only the fields it is given. Any key a row can hold is addressed, not only those
POST takes (another writer may have stored one): a key with NUL or an unpaired surrogate is a
400, an unknown one a 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, flags
from shared.contracts import flags as contract
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError, valid_or_400
from shared.http.openapi import body
from shared.http.responses import ok
from shared.repositories import feature_flags

app = create_app(title="Feature flag (admin)", summary="Read, change or delete one flag.")
FOUND = body("The flag", "FlagAnswer")


@app.get("/api/admin/flags/{key}", response_model=None, responses={200: FOUND})
def get_flag(key: str, admin: AdminUser) -> Response:
    flag_key = valid_or_400(contract.stored_key(key), contract.UNSTORABLE_KEY)
    found = db.read(lambda conn: feature_flags.get_by_key(conn, flag_key))
    if found is None:
        raise ApiError(404, contract.NOT_FOUND)
    return ok({"flag": contract.record(found)})


UPDATE_EXAMPLE = {"enabled": True, "rolloutPercent": 50}


@app.put(
    "/api/admin/flags/{key}",
    response_model=None,
    responses={200: FOUND},
    openapi_extra=body_schema(contract.UpdateFlag, UPDATE_EXAMPLE),
)
def update_flag(
    key: str,
    admin: AdminUser,
    body: Annotated[contract.UpdateFlag, Depends(json_body(contract.UpdateFlag))],
) -> Response:
    flag_key = valid_or_400(contract.stored_key(key), contract.UNSTORABLE_KEY)
    changes = body.changes()
    updated = db.run(lambda conn: feature_flags.update_flag(conn, flag_key, **changes))
    if updated is None:
        raise ApiError(404, contract.NOT_FOUND)
    flags.invalidate_cache()
    return ok({"flag": contract.record(updated)})


@app.delete(
    "/api/admin/flags/{key}",
    response_model=None,
    responses={200: body("Deleted", "Success")},
)
def delete_flag(key: str, admin: AdminUser) -> Response:
    flag_key = valid_or_400(contract.stored_key(key), contract.UNSTORABLE_KEY)
    if not db.run(lambda conn: feature_flags.delete_flag(conn, flag_key)):
        raise ApiError(404, contract.NOT_FOUND)
    flags.invalidate_cache()
    return ok({"success": True})


lambda_handler = make_lambda_handler(app)
