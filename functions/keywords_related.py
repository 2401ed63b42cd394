"""POST /api/keywords/related: keyword ideas around one seed, rate limited but not metered
(docs/original-app.md#post-apikeywordsrelated; docs/related-and-briefs.md).

Order, as the original: auth → rate limit (RELATED_KEYWORDS_RATE_LIMIT_PER_HOUR, per user) →
body → cache → provider. The provider's full list is cached for 7 days and `limit` trims only
the response. No quota, no tier: the configured provider serves everyone.

Fixes over the original (docs/original-app.md#d2, #d13): the call goes through a circuit
breaker of its own (one per warm container: `providers.related_provider`) and the account's
request budget; the cache key
includes the provider, and an entry is served only in the route's shape (else a logged miss);
`cacheHealthy` reports whether the write succeeded; a provider without
related keywords answers 501 (the original's 501 reached clients as a 500), an open circuit
503 with `Retry-After`, provider failures 502, and upstream text never reaches the client.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from shared import cache, providers
from shared.auth import Identity
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.contracts.related import RelatedKeywordsRequest
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import identify, unauthenticated
from shared.http.body import parse_json, validated
from shared.http.errors import ApiError
from shared.http.methods import method_not_allowed
from shared.http.openapi import body
from shared.http.provider_errors import provider_deadline, provider_failed
from shared.http.responses import ok
from shared.ratelimit import Decision, limit_request

app = create_app(title="Related keywords", summary="Keyword ideas around one seed keyword.")

RATE_LIMITED = (
    "Rate limit exceeded. Try again in {retry_after} seconds. Limit: {limit} requests/hour."
)
DEFAULT_LIMIT = 30
MAX_LIMIT = 100


def hourly_limit() -> int:
    """RELATED_KEYWORDS_RATE_LIMIT_PER_HOUR when above 0, capped at 100; else 30."""
    configured = get_settings().related_keywords_rate_limit_per_hour
    return min(configured, MAX_LIMIT) if configured > 0 else DEFAULT_LIMIT


def signed_in(request: Request) -> Identity:
    identity = identify(request)
    if identity is None:
        raise unauthenticated(request)
    return identity


def rate_limit(request: Request, identity: Annotated[Identity, Depends(signed_in)]) -> Decision:
    return limit_request(
        request, "keywords_related", hourly_limit(), RATE_LIMITED, user_id=identity.user_id
    )


async def related_body(
    request: Request, decision: Annotated[Decision, Depends(rate_limit)]
) -> RelatedKeywordsRequest:
    """Read only after auth and the rate limit; an empty body is `{}`."""
    return validated(RelatedKeywordsRequest, parse_json(await request.body()))


@app.get("/api/keywords/related", response_model=None, include_in_schema=False)
def wrong_method() -> Response:
    raise method_not_allowed(["POST"], "Use POST to get related keywords")


EXAMPLE = {"keyword": "espresso machine", "location": "US", "limit": 10}
BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": RelatedKeywordsRequest.model_json_schema(),
            "example": EXAMPLE,
        }
    },
}
RESPONSES: dict[int | str, dict[str, object]] = {
    200: body("The seed's related keywords", "RelatedAnswer"),
    401: {"description": "No valid session token"},
    429: {"description": "Rate limit exceeded"},
    501: {"description": "The configured provider has no related keywords"},
    502: {"description": "The keyword provider failed (its text is never shown)"},
    503: {
        "description": "The keyword provider cannot be called now (`reason`: provider_busy, "
        "provider_circuit_open, provider_not_configured); `Retry-After` when retrying helps"
    },
}


@app.post(
    "/api/keywords/related",
    response_model=None,
    responses=RESPONSES,
    openapi_extra={"requestBody": BODY_SCHEMA},
)
def related(
    request: Request,
    body: Annotated[RelatedKeywordsRequest, Depends(related_body)],
    decision: Annotated[Decision, Depends(rate_limit)],
) -> Response:
    deadline = provider_deadline(request)
    try:
        provider = providers.related_provider()
    except providers.ProviderError as error:
        provider_failed(error, "unknown")
    lookup = getattr(provider, "related_keywords", None)
    if not callable(lookup):
        raise ApiError(
            501, "not supported", label="Not Implemented",
            extra={"reason": "related_keywords_not_supported"},
        )  # fmt: skip
    options = providers.SearchOptions(
        match_type="phrase",
        location=providers.normalize_location(body.location),
        language=body.language or "en",
        deadline=deadline,
    )
    key = cache.related_key(body.keyword, options.location, options.language, provider.key)
    name = provider.name
    cached = cache.get_json(key, cache.RelatedEntry)
    if cached is not None and (problem := cache.related_problem(cached, body.keyword, name)):
        cache.refuse(key, problem)
        cached = None
    result: dict[str, Any]
    if cached is not None:
        rows = cached["data"]
        result = {"cached": True}
    else:
        try:
            rows = lookup(body.keyword, options)
        except providers.ProviderError as error:
            provider_failed(error, provider.key)
        entry: cache.RelatedEntry = {
            "data": rows,
            "metadata": {"cachedAt": iso_ms(utcnow()), "provider": name},
        }
        healthy = cache.set_json(key, entry)
        result = {"cached": False, "cacheHealthy": healthy}
    return ok(
        {
            "seedKeyword": body.keyword,
            "relatedKeywords": rows[: body.limit] if body.limit else rows,
            **result,
            "timestamp": iso_ms(utcnow()),
            "provider": name,
        },
        headers=decision.headers(),
    )


lambda_handler = make_lambda_handler(app)
