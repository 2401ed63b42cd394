"""GET, POST /api/admin/flags: list and create feature flags (admins only).

Admins are the users in ADMIN_USER_IDS or with the ADMIN_ROLE_CLAIM role (`shared.auth`):
anyone else gets 403, a caller without a session 401. A new flag records its creator. The
writing container's flag snapshot is refreshed at once; others follow within
FLAGS_CACHE_SECONDS.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from shared import db, flags
from shared.contracts import flags as contract
from shared.http.app import create_app, lambda_handler
from shared.http.auth import AdminUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError
from shared.http.responses import ok
from shared.repositories import feature_flags

app = create_app(title="Feature flags (admin)", summary="List and create feature flags.")


@app.get("/api/admin/flags", response_model=None)
def list_flags(admin: AdminUser) -> Response:
    rows = db.run(feature_flags.list_all, idempotent=True)
    return ok({"flags": [contract.record(flag) for flag in rows]})


EXAMPLE = {"key": "new-dashboard", "enabled": True, "rolloutPercent": 25, "allowedUsers": []}


@app.post(
    "/api/admin/flags",
    status_code=201,
    response_model=None,
    openapi_extra=body_schema(contract.CreateFlag, EXAMPLE),
)
def create_flag(
    admin: AdminUser,
    body: Annotated[contract.CreateFlag, Depends(json_body(contract.CreateFlag))],
) -> Response:
    created = db.run(
        lambda s: feature_flags.create(s, body.key, body.values(), created_by=admin.user_id)
    )
    if created is None:
        raise ApiError(409, contract.ALREADY_EXISTS)
    flags.invalidate_cache()
    return ok({"flag": contract.record(created)}, status=201)


handler = lambda_handler(app)
