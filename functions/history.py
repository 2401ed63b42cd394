"""GET /api/history: the caller's keyword searches, newest first, one keyset page at a time.

`limit` (1..100, default 20) sets the page size; `nextCursor`, present while more rows exist,
is passed back as `cursor` for the next page. Keyset paging stays fast at any depth and never
skips or repeats a row when new searches arrive between pages.

A page also stops at `pages.PAGE_BUDGET_BYTES` of items (its cursor then points after the last
item sent): a row may hold 200 keywords of 100 characters, so 100 such rows would be more JSON than
Vercel (4.5 MB) or Lambda (6 MB) can answer.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.contracts import history as contract
from shared.contracts import paging
from shared.http import pages
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.openapi import body, whole_number_query
from shared.http.responses import ok
from shared.repositories import search_history

app = create_app(title="Search history", summary="The caller's keyword searches, newest first.")


LIMIT = whole_number_query(
    "limit",
    "Page size",
    minimum=1,
    maximum=contract.MAX_LIMIT,
    default=contract.DEFAULT_LIMIT,
)


@app.get(
    "/api/history",
    response_model=None,
    responses={200: body("A page of the caller's searches, newest first", "HistoryPage")},
    openapi_extra=LIMIT,
)
def list_history(
    user: CurrentUser,
    limit: Annotated[str | None, Query(include_in_schema=False)] = None,
    cursor: Annotated[str | None, Query(description="`nextCursor` of the previous page")] = None,
) -> Response:
    size = paging.bounded_int(
        limit,
        name="limit",
        default=contract.DEFAULT_LIMIT,
        minimum=1,
        maximum=contract.MAX_LIMIT,
    )
    after = None if cursor is None else paging.decode_cursor(cursor)
    page = db.read(
        lambda conn: search_history.list_for_user(conn, user.user_id, limit=size, cursor=after)
    )
    items = pages.within_budget([contract.history_item(row) for row in page.items])
    next_cursor = page.next_cursor
    if len(items) < len(page.items):  # the rest comes with the next page
        last = page.items[len(items) - 1]
        next_cursor = (last.searched_at, last.id)
    body: dict[str, object] = {"history": items}
    if next_cursor is not None:
        body["nextCursor"] = paging.encode_cursor(next_cursor)
    return ok(body)


lambda_handler = make_lambda_handler(app)
