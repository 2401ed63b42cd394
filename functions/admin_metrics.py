"""GET /api/admin/metrics: one system metric as a time series (admins only).

`?metric=<name>&from=<ISO>&to=<ISO>&bucket=minute|hour|day` → `{metric, bucket, from, to,
points: [{bucket, avg, min, max, count, nonFinite?}]}`, UTC buckets, oldest first, empty buckets
absent; stored NaN and ±Infinity are counted in `nonFinite`, not aggregated.
Defaults: the last 24 h in hour buckets. The range is capped per bucket size (7 days of
minutes, 366 of hours, 1,096 of days) so one call cannot ask for an unbounded series.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.clock import utcnow
from shared.contracts import admin as contract
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser
from shared.http.openapi import body, required_query
from shared.http.responses import ok
from shared.repositories import system_metrics

app = create_app(title="System metrics (admin)", summary="One metric as a bucketed series.")


METRIC = required_query(
    "metric",
    f"Metric name, 1..{contract.MAX_METRIC_NAME} characters",
    {"type": "string", "minLength": 1, "maxLength": contract.MAX_METRIC_NAME},
)


@app.get(
    "/api/admin/metrics",
    response_model=None,
    responses={200: body("The metric's points, oldest first", "MetricSeries")},
    openapi_extra=METRIC,
)
def metric_series(
    admin: AdminUser,
    metric: Annotated[str | None, Query(include_in_schema=False)] = None,
    start: Annotated[str | None, Query(alias="from", description="ISO 8601 start")] = None,
    end: Annotated[str | None, Query(alias="to", description="ISO 8601 end (exclusive)")] = None,
    bucket: Annotated[str | None, Query(description="minute, hour (default) or day")] = None,
) -> Response:
    query = contract.series_query(metric, start, end, bucket, now=utcnow())
    points = db.read(
        lambda conn: system_metrics.series(
            conn, query.metric, start=query.start, end=query.end, bucket=query.bucket
        ),
        analytics=True,
    )
    return ok(contract.series_body(query, points))


lambda_handler = make_lambda_handler(app)
