"""POST /api/content-brief: a writing brief from Google's first results page, rate limited
but not metered (docs/original-app.md#post-apicontent-brief, #serp-and-content-brief;
docs/related-and-briefs.md).

Order, as the original: rate limit (20 an hour) → auth → body → cache → results page. With
DataForSEO credentials the page is live and the brief is cached for a day; without them
production answers 503 and other environments build the brief from the mock page (never
cached). Fixes: a live failure is a 502/503 in every environment (the original served mock
data outside production and labelled it a fallback), the call goes through its own circuit
breaker, a cached brief carries every rate-limit header, and an entry under the brief's key
(shared with the original app) is served only when it is a brief: anything else is a logged
miss.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from shared import brief, cache, providers
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.contracts.related import ContentBriefRequest
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import identify, unauthenticated
from shared.http.body import parse_json, validated
from shared.http.methods import method_not_allowed
from shared.http.openapi import body
from shared.http.provider_errors import provider_deadline, provider_failed
from shared.http.responses import ok
from shared.ratelimit import Decision, limit_request
from shared.telemetry import log_event

app = create_app(title="Content brief", summary="A writing brief from Google's top results.")

HOURLY_LIMIT = 20
RATE_LIMITED = (
    "Rate limit exceeded. Content briefs are limited to 20 per hour. "
    "Try again in {retry_after} seconds."
)
SIGN_IN = "Authentication required. Please sign in to use content brief generation."


def rate_limit(request: Request) -> Decision:
    """Before auth and the body, as the original: anonymous requests spend the budget too."""
    identity = identify(request)
    return limit_request(
        request,
        "content_brief",
        HOURLY_LIMIT,
        RATE_LIMITED,
        user_id=identity.user_id if identity else None,
    )


async def brief_body(
    request: Request, decision: Annotated[Decision, Depends(rate_limit)]
) -> ContentBriefRequest:
    if getattr(request.state, "user_id", None) is None:
        raise unauthenticated(request, SIGN_IN)
    return validated(ContentBriefRequest, parse_json(await request.body()))


@app.get("/api/content-brief", response_model=None, include_in_schema=False)
def wrong_method() -> Response:
    raise method_not_allowed(["POST"], "Use POST to generate a content brief")


EXAMPLE = {"keyword": "espresso machine", "location": "US", "language": "en"}
BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {"schema": ContentBriefRequest.model_json_schema(), "example": EXAMPLE}
    },
}
RESPONSES: dict[int | str, dict[str, object]] = {
    200: body("The content brief", "BriefAnswer"),
    401: {"description": "No valid session token"},
    429: {"description": "Rate limit exceeded"},
    502: {"description": "DataForSEO failed or refused the request (its text is never shown)"},
    503: {
        "description": "DataForSEO cannot be called now (`reason`: provider_busy, "
        "provider_circuit_open, provider_not_configured); `Retry-After` when retrying helps"
    },
}


@app.post(
    "/api/content-brief",
    response_model=None,
    responses=RESPONSES,
    openapi_extra={"requestBody": BODY_SCHEMA},
)
def content_brief(
    request: Request,
    body: Annotated[ContentBriefRequest, Depends(brief_body)],
    decision: Annotated[Decision, Depends(rate_limit)],
) -> Response:
    settings = get_settings()
    key = cache.brief_key(body.keyword, body.location, body.language)
    cached = cache.get_json(key, cache.BriefEntry)
    if cached is not None:
        return _answer(cached, True, decision)
    live = bool(
        (settings.dataforseo_api_login or "").strip()
        and (settings.dataforseo_api_password or "").strip()
    )
    generated_at = iso_ms(utcnow())
    if not live:
        if settings.is_production:
            provider_failed(
                providers.ProviderConfigurationError("DataForSEO credentials are not set"),
                "dataforseo",
            )
        serp = brief.mock_serp(body.keyword)
        made = brief.build_brief(
            body.keyword, body.location, serp, provider="Mock", mock=True,
            generated_at=generated_at,
        )  # fmt: skip
        log_event("brief_not_cached", level=logging.WARNING, reason="mock_data")
        return _answer(made, False, decision)
    serp_provider = providers.serp_provider()
    options = providers.SearchOptions(
        match_type="phrase",
        location=providers.normalize_location(body.location),
        language=body.language,
        deadline=provider_deadline(request),
    )
    try:
        page = brief.parse_serp(serp_provider.organic_serp(body.keyword, options))
    except providers.ProviderError as error:
        provider_failed(error, serp_provider.key)
    made = brief.build_brief(
        body.keyword, body.location, page, provider=serp_provider.name, mock=False,
        generated_at=generated_at,
    )  # fmt: skip
    cache.set_json(key, made, ttl_seconds=cache.BRIEF_TTL_SECONDS)
    return _answer(made, False, decision)


def _answer(made: brief.Brief, cached: bool, decision: Decision) -> Response:
    return ok(
        {"brief": made, "cached": cached, "timestamp": iso_ms(utcnow())},
        headers=decision.headers(),
    )


lambda_handler = make_lambda_handler(app)
