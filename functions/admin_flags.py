"""GET, POST /api/admin/flags: list and create feature flags (admins only).

The list comes in pages by key: up to PAGE_FLAGS flags and `pages.PAGE_BUDGET_BYTES` of them (a
flag may name 1,000 users of 255 characters: 18 such flags would be more than Vercel answers; a
flag larger than a page is listed abridged, `contract.record`);
`nextCursor`, present while more flags exist, is passed back as `cursor`. It is the page's last
key, whatever a writer stored there (the original app's Prisma client is not held to the key
rule POST applies), so any key text can hold is a cursor.

Admins are the users in ADMIN_USER_IDS or with the ADMIN_ROLE_CLAIM role (`shared.auth`):
anyone else gets 403, a caller without a session 401. A new flag records its creator. The
writing container's flag snapshot is refreshed at once; others follow within
FLAGS_CACHE_SECONDS.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query
from starlette.responses import Response

from shared import db, flags
from shared.contracts import flags as contract
from shared.http import pages
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser
from shared.http.body import body_schema, json_body
from shared.http.errors import ApiError, valid_or_400
from shared.http.openapi import body
from shared.http.responses import ok
from shared.repositories import feature_flags

app = create_app(title="Feature flags (admin)", summary="List and create feature flags.")


PAGE_FLAGS = 100
INVALID_CURSOR = "cursor must be the nextCursor of a previous page"  # i.e. a storable key


@app.get(
    "/api/admin/flags",
    response_model=None,
    responses={200: body("A page of flags, by key", "FlagPage")},
)
def list_flags(
    admin: AdminUser,
    cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page")] = None,
) -> Response:
    after = None if cursor is None else valid_or_400(contract.stored_key(cursor), INVALID_CURSOR)
    rows = db.read(lambda conn: feature_flags.list_page(conn, after=after, limit=PAGE_FLAGS + 1))
    items = pages.within_budget([contract.record(flag) for flag in rows[:PAGE_FLAGS]])
    body: dict[str, Any] = {"flags": items}
    if len(items) < len(rows):
        body["nextCursor"] = items[-1]["key"]
    return ok(body)


EXAMPLE = {"key": "new-dashboard", "enabled": True, "rolloutPercent": 25, "allowedUsers": []}


@app.post(
    "/api/admin/flags",
    status_code=201,
    response_model=None,
    responses={201: body("The flag", "FlagAnswer")},
    openapi_extra=body_schema(contract.CreateFlag, EXAMPLE),
)
def create_flag(
    admin: AdminUser,
    body: Annotated[contract.CreateFlag, Depends(json_body(contract.CreateFlag))],
) -> Response:
    created = db.run(
        lambda conn: feature_flags.create(conn, body.key, body.values(), created_by=admin.user_id)
    )
    if created is None:
        raise ApiError(409, contract.ALREADY_EXISTS)
    flags.invalidate_cache()
    return ok({"flag": contract.record(created)}, status=201)


lambda_handler = make_lambda_handler(app)
