"""GET /api/me/export: everything stored about the caller, as one JSON document (GDPR access).

Seven reads (user, saved searches, search history, API usage, the webhook-ledger and metric rows
that mention the user, the flags that name them) in one read-only transaction, so the document
is one consistent snapshot; each row carries every stored column (flags: their keys only).
"""

from __future__ import annotations

from starlette.responses import Response

from shared import db
from shared.auth import CurrentUser
from shared.contracts import account
from shared.http.app import create_app, lambda_handler
from shared.http.responses import ok
from shared.repositories import personal_data

app = create_app(title="Data export", summary="Everything stored about the caller.")


@app.get("/api/me/export", response_model=None)
def export_me(user: CurrentUser) -> Response:
    data = db.transaction(lambda s: personal_data.export(s, user.user_id))
    return ok(
        account.export(data),
        headers={"Content-Disposition": 'attachment; filename="keyflash-export.json"'},
    )


handler = lambda_handler(app)
