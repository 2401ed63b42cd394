"""GET /api/admin/analytics?days=N[&organizationId=org_…]: the admin dashboard's figures
(admins only).

`days` is 1..90 (default 7) UTC calendar days ending today. Each figure is one query, all on
one connection: searches per day (zero-filled), totals with cache-hit rate and providers over
the window, searches and average response time over the last 24 h, the top 10 keywords
(`lower(btrim(keyword))` of `unnest(keywords)`) and the subscription counts (the users',
always). With `organizationId`, the search figures count only the searches made for that
organization (`search_history."organizationId"`); an organization without searches answers
zeros, whether or not it exists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Query
from starlette.responses import Response

from shared import db
from shared.clock import utcnow
from shared.contracts import admin as contract
from shared.db import Conn
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser
from shared.http.openapi import body, whole_number_query
from shared.http.responses import ok
from shared.repositories import search_history, users

app = create_app(title="Analytics (admin)", summary="Searches, keywords and subscriptions.")
TOP_KEYWORDS = 10
DAYS = whole_number_query(
    "days",
    "Window in UTC calendar days ending today",
    minimum=1,
    maximum=contract.MAX_DAYS,
    default=contract.DEFAULT_DAYS,
)


@app.get(
    "/api/admin/analytics",
    response_model=None,
    responses={200: body("The dashboard's figures", "Analytics")},
    openapi_extra=DAYS,
)
def analytics(
    admin: AdminUser,
    days: Annotated[str | None, Query(include_in_schema=False)] = None,
    organization_id: Annotated[
        str | None,
        Query(alias="organizationId", description="Only this organization's searches (org_…)"),
    ] = None,
) -> Response:
    window = contract.days_param(days)
    org = contract.organization_param(organization_id)
    now = utcnow()
    since = contract.window_start(now, window)

    def gather(conn: Conn) -> contract.Analytics:
        return contract.Analytics(
            days=window,
            organization_id=org,
            since=since,
            until=now,
            per_day=search_history.searches_per_day(
                conn, since=since, until=now, organization_id=org
            ),
            window=search_history.stats(conn, since=since, until=now, organization_id=org),
            last_day=search_history.stats(
                conn, since=now - timedelta(hours=24), until=now, organization_id=org
            ),
            top_keywords=search_history.top_keywords(
                conn, since=since, until=now, limit=TOP_KEYWORDS, organization_id=org
            ),
            subscriptions=users.subscription_metrics(conn),
        )

    return ok(contract.analytics_body(db.read(gather, analytics=True)))


lambda_handler = make_lambda_handler(app)
