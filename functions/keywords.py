"""POST /api/keywords: keyword metrics, metered per keyword (docs/original-app.md#post-apikeywords,
#tiers-trials-and-quotas).

Order: rate limit → body → auth → the team permission (a token with an active organization:
`org:keywords:search`; the search then counts against the organization's quota and is recorded
for the team, docs/organizations.md#team-quota) → `shared.keyword_search.search` (reserve →
cache → provider → record: two database round trips) → the answer. docs/keyword-search.md
describes each answer; an open circuit answers 503 with `Retry-After`, provider failures 502,
and upstream text never reaches the client (docs/original-app.md#d13).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from shared import keyword_search, ratelimit, rbac
from shared.auth import Identity
from shared.clock import iso_ms, seconds_until, utcnow
from shared.config import get_settings
from shared.contracts.keywords import KeywordSearch
from shared.errors import (
    AccountDeletedError,
    OrganizationNotFoundError,
    QuotaExceededError,
    TrialExpiredError,
)
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import identify, unauthenticated
from shared.http.body import parse_json, validated
from shared.http.client_ip import client_ip, stored_ip, stored_user_agent
from shared.http.errors import ORG_NOT_FOUND, ApiError
from shared.http.methods import method_not_allowed
from shared.http.openapi import body
from shared.http.provider_errors import provider_deadline, provider_failed
from shared.http.responses import ok
from shared.ratelimit import Decision, limit_request

app = create_app(title="Keyword search", summary="Search volume, CPC, competition and intent.")

RATE_LIMITED = (
    "Rate limit exceeded. Try again in {retry_after} seconds. Limit: {limit} requests/hour."
)
SIGN_IN = "Authentication required. Please sign in to use KeyFlash."
TRIAL_EXPIRED = "Your 7-day free trial has expired. Upgrade to Pro to continue using KeyFlash."
UPGRADE_HINT = "Upgrade to Pro for 1,000 keywords/month."
RESET_HINT = "Your limit resets at the start of next month."
TEAM_QUOTA = (
    "Your team's monthly keyword limit reached ({used}/{limit}). "
    "It resets at the start of next month."
)
NO_TEAM_SEARCH = "You do not have permission to search keywords for this organization"
RATE_ENDPOINT = "keywords"  # the rate-limit counters' name: `rate:keywords:{identity}`


def rate_limit(request: Request) -> Decision:
    """Runs before the body is read: anonymous and invalid requests spend the budget too."""
    identity = identify(request)
    request.state.identity = identity
    limit = get_settings().rate_limit_requests_per_hour
    return limit_request(
        request, RATE_ENDPOINT, limit, RATE_LIMITED, user_id=identity.user_id if identity else None
    )


@app.get("/api/keywords", response_model=None, include_in_schema=False)
def wrong_method() -> Response:
    raise method_not_allowed(["POST"], "Use POST to search for keywords")


async def search_body(
    request: Request, decision: Annotated[Decision, Depends(rate_limit)]
) -> KeywordSearch:
    """The body, read only after the rate limit (which the `decision` parameter orders first),
    and parsed as JSON whatever the Content-Type, an empty body being `{}` (the original's rule).
    """
    return validated(KeywordSearch, parse_json(await request.body()))


EXAMPLE = {"keywords": ["espresso machine", "latte art"], "matchType": "phrase", "location": "US"}
BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {"schema": KeywordSearch.model_json_schema(), "example": EXAMPLE}
    },
}


RESPONSES: dict[int | str, dict[str, object]] = {
    200: body("Each keyword's metrics", "KeywordAnswer"),
    401: {"description": "No valid session token"},
    403: {
        "description": "The free trial has expired (billing on), or the member may not search "
        "for the token's active organization"
    },
    404: {"description": "The token's active organization was deleted"},
    409: {"description": "The token's email belongs to another account"},
    429: {"description": "Rate limit or monthly keyword quota (the user's or the team's) exceeded"},
    502: {"description": "The keyword provider failed (its text is never shown)"},
    503: {
        "description": "The keyword provider cannot be called now (`reason`: provider_busy, "
        "provider_circuit_open, provider_not_configured); `Retry-After` when retrying helps"
    },
}


@app.post(
    "/api/keywords",
    response_model=None,
    responses=RESPONSES,
    openapi_extra={"requestBody": BODY_SCHEMA},
)
def search(
    request: Request,
    body: Annotated[KeywordSearch, Depends(search_body)],
    decision: Annotated[Decision, Depends(rate_limit)],
) -> Response:
    started = time.perf_counter()
    deadline = provider_deadline(request)
    identity: Identity | None = request.state.identity
    if identity is None:
        raise unauthenticated(request, SIGN_IN)
    org = identity.org
    if org is not None and not rbac.allows(org.role, org.permissions, rbac.KEYWORDS_SEARCH):
        raise ApiError(403, NO_TEAM_SEARCH)
    query = keyword_search.Query(
        keywords=body.keywords,
        match_type=body.matchType,
        location=body.location,
        language=body.language or "en",
    )
    try:
        result = keyword_search.search(
            identity, query, deadline=deadline, origin=_origin(request), started=started
        )
    except AccountDeletedError:
        request.state.user_id = None  # as for every route (`shared.http.app`), in its words
        ratelimit.forget(RATE_ENDPOINT, identity.user_id)  # written back by the check, first
        request.state.rate_limit_headers = {}  # that window is gone with it
        raise unauthenticated(request, SIGN_IN) from None
    except TrialExpiredError:
        raise ApiError(403, TRIAL_EXPIRED) from None
    except OrganizationNotFoundError:
        raise ApiError(404, ORG_NOT_FOUND) from None
    except QuotaExceededError as refused:
        raise _quota_exceeded(refused, team=org is not None) from None
    except keyword_search.ProviderFailed as failed:
        provider_failed(failed.error, failed.provider_key)
    request.state.usage_recorded = True  # the search's own statement wrote the usage row
    answer: dict[str, Any] = {"data": result.data, "cached": result.cached}
    if result.cache_healthy is not None:
        answer["cacheHealthy"] = result.cache_healthy
    answer.update(timestamp=iso_ms(utcnow()), mockData=result.mock, provider=result.provider_name)
    return ok(answer, headers=decision.headers())


def _quota_exceeded(refused: QuotaExceededError, *, team: bool) -> ApiError:
    """429 with the remaining keywords, naming whose limit it is: the user's or the team's, and
    for a spent monthly quota the seconds until it resets as `Retry-After` (a trial never
    resets; with keywords left, a smaller request passes now)."""
    if team:
        message = TEAM_QUOTA.format(used=refused.used, limit=refused.limit)
    else:
        hint = UPGRADE_HINT if refused.trial else RESET_HINT
        message = f"Monthly keyword limit reached ({refused.used}/{refused.limit}). {hint}"
    headers = {"X-Quota-Remaining": str(max(0, refused.limit - refused.used))}
    if refused.resets_at is not None and refused.used >= refused.limit:
        headers["Retry-After"] = str(seconds_until(refused.resets_at, utcnow()))
    return ApiError(429, message, headers=headers)


def _origin(request: Request) -> keyword_search.Origin:
    """The caller's address and user agent as they are stored (IP_STORAGE, TRUST_PROXY)."""
    settings = get_settings()
    peer = request.client.host if request.client else None
    ip = client_ip(request.headers, peer, trust_proxy=settings.proxy_trust)
    return keyword_search.Origin(
        ip=stored_ip(ip, settings.ip_storage),
        user_agent=stored_user_agent(request.headers.get("user-agent")),
    )


lambda_handler = make_lambda_handler(app)
