"""The caller's data export (GDPR access and portability): everything stored about them.

- `GET /api/me/export`: the document itself when it fits in one response (gzip-compressed when
  the client accepts gzip); otherwise the same as POST: 202 and an asynchronous export. A user
  whose rows are estimated (in the database) above DIRECT_BUILD_MAX_ESTIMATE goes straight to
  the asynchronous export, without the document being built here.
- `POST /api/me/export`: 202 with an export id; the exports cron builds the document in one
  snapshot and stores it gzip-compressed (an open export is returned instead of a second one;
  rate limited per user).
- `GET /api/me/export/{export_id}`: that export's status; once ready, a short-lived presigned
  URL to download it. Only the owner sees an export (anyone else gets 404).

The document is the same in both ways (`shared.exports.build`). A direct answer fits both
platforms as each carries it (`fits_both_platforms`): Vercel's 4.5 MB response body, and
Lambda's 6 MB result document, whose body is base64 when gzip-compressed and otherwise a JSON
string, where each `"` and `\\` of the document is escaped again.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from starlette.responses import Response

from shared import db, exports
from shared.auth import Identity, again_if_erased
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.contracts import compact
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.errors import ApiError, valid_or_400
from shared.http.openapi import body
from shared.http.responses import PRIVATE_NO_STORE, ok
from shared.models.data_exports import DataExport
from shared.ratelimit import limit_request
from shared.repositories import data_exports, personal_data

app = create_app(title="Data export", summary="Everything stored about the caller.")

DIRECT_MAX_BYTES = 4_000_000  # the body itself: Vercel's 4.5 MB
# The body as Lambda's result document carries it: the rest of its 6 MB (6,291,456 bytes) is far
# more than the status and headers need. A gzip body (base64: 5,333,336 at most) always fits.
LAMBDA_CARRIED_MAX_BYTES = 6_000_000
# Above this estimate the document is not even built here: a direct answer holds it whole (the
# JSON, a copy and its gzip) and takes seconds of the request's timeout; the job streams it.
DIRECT_BUILD_MAX_ESTIMATE = 16_000_000
GZIP_FLOOR_BYTES = 1024  # below this, gzip's header costs more than it saves
EXPORT_PATH = "/api/me/export"
EXPORT_ANSWER = "DataExportAnswer"
RATE_LIMITED = "Too many export requests. Try again in {retry_after} seconds."
NOT_FOUND = "Export not found"
INVALID_ID = "Invalid export ID"
_EXPORT_ID = re.compile(r"c[0-9a-z]{24}")  # a cuid (shared.ids.new_cuid)
NOT_CONFIGURED = "Exports are not available: storage is not configured"


def accepts_gzip(request: Request) -> bool:
    """Whether Accept-Encoding lists gzip (or *) with a non-zero quality."""
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        quality = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        if coding.strip().lower() in ("gzip", "*"):
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def fits_both_platforms(body: bytes, *, compressed: bool) -> bool:
    """Whether a direct answer of `body` fits Vercel and Lambda. Mangum sends a compressed body
    base64 and a JSON one as a string in the result document, where `"` and `\\` are escaped
    again (the document, being JSON, holds no raw control character): a body of quotes doubles.
    Non-ASCII counts once: the python3.12+ runtime (serverless.yml's `runtime`) writes the
    result with non-ASCII kept; an older one escapes it (six bytes for a two-byte character).
    """
    if len(body) > DIRECT_MAX_BYTES:
        return False
    if compressed:
        carried = 4 * -(-len(body) // 3)
    else:
        carried = len(body) + body.count(b'"') + body.count(b"\\")
    return carried <= LAMBDA_CARRIED_MAX_BYTES


def _view(export: DataExport) -> dict[str, Any]:
    settings = get_settings()
    key = export.object_key if export.status == "ready" and settings.backup_bucket else None
    link = exports.download_url(settings, key) if key else None
    return compact(
        {
            "id": export.id,
            "status": export.status,
            "createdAt": iso_ms(export.created_at),
            "finishedAt": iso_ms(export.finished_at) if export.finished_at else None,
            "expiresAt": iso_ms(export.expires_at) if export.expires_at else None,
            "bytes": export.bytes,
            "gzipBytes": export.gzip_bytes,
            "url": link.url if link else None,
            "urlExpiresAt": iso_ms(link.expires_at) if link else None,
        }
    )


def _request_export(request: Request, user: Identity) -> Response:
    settings = get_settings()
    if not settings.backup_bucket:
        raise ApiError(503, NOT_CONFIGURED)
    limit_request(
        request, "me_export", settings.export_requests_per_hour, RATE_LIMITED, user_id=user.user_id
    )
    now = utcnow()
    requested = again_if_erased(
        user, lambda: db.run(lambda conn: data_exports.request(conn, user.user_id, now=now))
    )
    location = f"{EXPORT_PATH}/{requested.export.id}"
    return ok(
        {"export": _view(requested.export)},
        status=202,
        headers={"Location": location, "Retry-After": "60"},
    )


@app.get(
    EXPORT_PATH,
    response_model=None,
    responses={
        200: body("Everything stored about the caller, as a download", "PersonalDataExport"),
        202: body(
            "Too large to answer here: an export was requested, as POST answers", EXPORT_ANSWER
        ),
    },
)
def export_me(request: Request, user: CurrentUser) -> Response:
    estimate = db.run(lambda conn: personal_data.estimated_bytes(conn, user.user_id))
    if estimate > DIRECT_BUILD_MAX_ESTIMATE:
        return _request_export(request, user)
    document = exports.build(user.user_id)
    headers = {
        "Content-Disposition": f'attachment; filename="{exports.FILENAME}"',
        "Cache-Control": PRIVATE_NO_STORE,
        "Vary": "Accept-Encoding",
    }
    body = document
    compressed = accepts_gzip(request) and len(document) >= GZIP_FLOOR_BYTES
    if compressed:
        body = exports.compress(document)
        headers["Content-Encoding"] = "gzip"
    if not fits_both_platforms(body, compressed=compressed):
        return _request_export(request, user)
    return Response(body, media_type="application/json", headers=headers)


@app.post(
    EXPORT_PATH,
    response_model=None,
    status_code=202,
    responses={202: body("The export requested (or the one in progress)", EXPORT_ANSWER)},
)
def request_export(request: Request, user: CurrentUser) -> Response:
    return _request_export(request, user)


@app.get(
    EXPORT_PATH + "/{export_id}",
    response_model=None,
    responses={200: body("The export", EXPORT_ANSWER)},
)
def export_status(export_id: str, user: CurrentUser) -> Response:
    valid = valid_or_400(export_id if _EXPORT_ID.fullmatch(export_id) else None, INVALID_ID)
    now = utcnow()
    found = db.run(lambda conn: data_exports.get(conn, user.user_id, valid, now=now))
    if found is None:
        raise ApiError(404, NOT_FOUND)
    return ok({"export": _view(found)})


lambda_handler = make_lambda_handler(app)
