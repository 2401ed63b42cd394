"""GET /api/admin/analytics/trends: one materialized report as a series (admins only).

`?metric=usage-by-tier|keyword-trends|provider-performance&from=<ISO>&to=<ISO>` → the report's
buckets (UTC months or ISO weeks) starting in [from, to), with how old the figures are: the
rollup cron refreshes the views, and a failed refresh leaves the last contents in place.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.clock import utcnow
from shared.contracts import trends as contract
from shared.db import Conn
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser
from shared.http.openapi import body, required_query
from shared.http.responses import ok
from shared.repositories import reports

app = create_app(title="Trends (admin)", summary="Monthly usage, keyword and provider trends.")


METRIC = required_query("metric", "The report", {"enum": list(contract.METRICS)})


@app.get(
    "/api/admin/analytics/trends",
    response_model=None,
    responses={200: body("The metric's points, oldest first", "Trends")},
    openapi_extra=METRIC,
)
def trends(
    admin: AdminUser,
    metric: Annotated[str | None, Query(include_in_schema=False)] = None,
    start: Annotated[str | None, Query(alias="from", description="ISO 8601 start")] = None,
    end: Annotated[str | None, Query(alias="to", description="ISO 8601 end (exclusive)")] = None,
) -> Response:
    now = utcnow()
    query = contract.trends_query(metric, start, end, now=now)

    def gather(conn: Conn) -> dict[str, object]:
        window = {"start": query.start, "end": query.end}
        rows: list[reports.UsageRow] | list[reports.KeywordRow] | list[reports.ProviderRow]
        if query.report == "report_usage_by_tier":
            rows = reports.usage_by_tier(conn, **window)
        elif query.report == "report_keyword_trends":
            rows = reports.keyword_trends(conn, **window, top=contract.TOP_PER_WEEK)
        else:
            rows = reports.provider_performance(conn, **window, top=contract.TOP_PER_WEEK)
        freshness = reports.freshness(conn, query.report)
        return contract.trends_body(query, rows, freshness, now=now)

    return ok(db.read(gather, analytics=True))


lambda_handler = make_lambda_handler(app)
