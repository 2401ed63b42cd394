"""GET /api/history: the caller's keyword searches, newest first, one keyset page at a time.

`limit` (1..100, default 20) sets the page size; `nextCursor`, present while more rows exist,
is passed back as `cursor` for the next page. Keyset paging stays fast at any depth and never
skips or repeats a row when new searches arrive between pages.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.auth import CurrentUser
from shared.contracts import history as contract
from shared.http.app import create_app, lambda_handler
from shared.http.responses import ok
from shared.repositories import search_history

app = create_app(title="Search history", summary="The caller's keyword searches, newest first.")


@app.get("/api/history", response_model=None)
def list_history(
    user: CurrentUser,
    limit: Annotated[str | None, Query(description="Page size, 1..100 (default 20)")] = None,
    cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page")] = None,
) -> Response:
    size = contract.bounded_int(
        limit,
        name="limit",
        default=contract.DEFAULT_LIMIT,
        minimum=1,
        maximum=contract.MAX_LIMIT,
    )
    after = None if cursor is None else contract.decode_cursor(cursor)
    page = db.run(
        lambda s: search_history.list_for_user(s, user.user_id, limit=size, cursor=after),
        idempotent=True,
    )
    body: dict[str, object] = {"history": [contract.history_item(row) for row in page.items]}
    if page.next_cursor is not None:
        body["nextCursor"] = contract.encode_cursor(page.next_cursor)
    return ok(body)


handler = lambda_handler(app)
