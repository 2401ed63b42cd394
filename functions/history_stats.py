"""GET /api/history/stats: the caller's search totals over the last `days` (1..365, default 30).

Totals and per-provider figures come from one aggregate query over `[now - days, now)`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.clock import utcnow
from shared.contracts import history as contract
from shared.contracts import paging
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import CurrentUser
from shared.http.openapi import body, whole_number_query
from shared.http.responses import ok
from shared.repositories import search_history

app = create_app(title="Search stats", summary="The caller's search totals per provider.")


DAYS = whole_number_query(
    "days",
    "Window in days",
    minimum=1,
    maximum=contract.MAX_DAYS,
    default=contract.DEFAULT_DAYS,
)


@app.get(
    "/api/history/stats",
    response_model=None,
    responses={200: body("The caller's search figures over the window", "HistoryStats")},
    openapi_extra=DAYS,
)
def history_stats(
    user: CurrentUser,
    days: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> Response:
    window = paging.bounded_int(
        days,
        name="days",
        default=contract.DEFAULT_DAYS,
        minimum=1,
        maximum=contract.MAX_DAYS,
    )
    until = utcnow()
    since = until - timedelta(days=window)
    stats = db.read(
        lambda conn: search_history.stats(conn, since=since, until=until, user_id=user.user_id)
    )
    return ok(contract.stats_body(stats, since=since, until=until))


lambda_handler = make_lambda_handler(app)
