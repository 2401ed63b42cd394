"""POST /api/keywords: keyword metrics, metered per keyword (docs/original-app.md#post-apikeywords,
#tiers-trials-and-quotas).

Order: rate limit → body → auth → ONE statement that gets-or-creates the user, reserves the
keywords against the quota and writes the reservation row → cache → provider → ONE statement
writing the history row and the request's usage row and confirming the reservation. Two database
round trips on the success path. If the provider fails, the keywords are given back; if the
function is killed first, the reservation expires and the reconcile_reservations cron gives them
back. The provider must answer by the invocation's end minus a margin (see `provider_deadline`).
docs/keyword-search.md describes each answer.

Fixes over the original (docs/original-app.md#d2, #d3, #d13): the quota check and increment are one
atomic statement (`used + n <= limit`, no overshoot); the cache key includes the provider;
cached rows come back in the request's order; `cacheHealthy` reports whether the write really
succeeded; an open circuit answers 503 with `Retry-After`, provider failures 502, and upstream
text never reaches the client.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Annotated, Any, NoReturn

from fastapi import Depends
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from shared import cache, db, providers, storage
from shared.auth import Identity, forget, provision
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.contracts.keywords import KeywordSearch
from shared.errors import QuotaExceededError, TrialExpiredError, UserNotFoundError
from shared.http.app import create_app, lambda_handler
from shared.http.auth import identify
from shared.http.body import parse_json, validated
from shared.http.client_ip import client_ip, stored_ip, stored_user_agent
from shared.http.errors import ApiError
from shared.http.provider_errors import provider_deadline, provider_failed
from shared.http.responses import ok
from shared.ids import new_cuid
from shared.models import UserTier
from shared.quotas import Limits
from shared.ratelimit import Decision, limit_request
from shared.repositories import api_usage, reservations, search_history, users

app = create_app(title="Keyword search", summary="Search volume, CPC, competition and intent.")

RATE_LIMITED = (
    "Rate limit exceeded. Try again in {retry_after} seconds. Limit: {limit} requests/hour."
)
SIGN_IN = "Authentication required. Please sign in to use KeyFlash."
TRIAL_EXPIRED = "Your 7-day free trial has expired. Upgrade to Pro to continue using KeyFlash."
UPGRADE_HINT = "Upgrade to Pro for 1,000 keywords/month."
RESET_HINT = "Your limit resets at the start of next month."


def rate_limit(request: Request) -> Decision:
    """Runs before the body is read: anonymous and invalid requests spend the budget too."""
    identity = identify(request)
    request.state.identity = identity
    limit = get_settings().rate_limit_requests_per_hour
    return limit_request(
        request, "keywords", limit, RATE_LIMITED, user_id=identity.user_id if identity else None
    )


@app.get("/api/keywords", response_model=None, include_in_schema=False)
def wrong_method() -> Response:
    raise ApiError(
        405,
        "Use POST to search for keywords",
        label="Method Not Allowed",
        headers={"Allow": "POST"},
        extra={"supportedMethods": ["POST"]},
    )


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
    401: {"description": "No valid session token"},
    403: {"description": "The free trial has expired (billing on)"},
    409: {"description": "The token's email belongs to another account"},
    429: {"description": "Rate limit or monthly keyword quota exceeded"},
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
        raise ApiError(401, SIGN_IN)
    settings = get_settings()
    keywords = body.keywords
    reserved_at = utcnow()
    hold = reservations.Hold(
        new_cuid(), reserved_at + timedelta(seconds=settings.keyword_reservation_ttl_s)
    )
    usage = _reserve(identity, len(keywords), reserved_at, settings.billing_enabled, hold)
    storage.mirror_usage(identity.user_id)  # the legacy counter follows (dual/fallback only)

    mock_forced = settings.billing_enabled and usage.tier is UserTier.FREE
    try:
        provider = providers.mock_provider() if mock_forced else providers.get_provider()
    except providers.ProviderError as error:
        _give_back(error, "unknown", identity.user_id, hold.id, reserved_at)
    options = providers.SearchOptions(
        match_type=body.matchType,
        location=providers.normalize_location(body.location),
        language=body.language or "en",
        deadline=deadline,
    )
    key = cache.provider_keyword_key(
        keywords, options.location, options.language, options.match_type, provider.key
    )
    cached = None if mock_forced else cache.get_json(key)
    result: dict[str, Any]
    if isinstance(cached, dict) and isinstance(cached.get("data"), list):
        data = cache.in_request_order(cached["data"], keywords)
        metadata = cached.get("metadata")
        provider_name = (
            str(metadata.get("provider", "Unknown")) if isinstance(metadata, dict) else "Unknown"
        )
        result = {"data": data, "cached": True}
    else:
        data = _fetch(provider, keywords, options, identity.user_id, hold.id, reserved_at)
        provider_name = provider.name
        result = {"data": data, "cached": False}
        if not mock_forced:
            metadata = {
                "cachedAt": iso_ms(utcnow()),
                "ttl": cache.KEYWORD_TTL_SECONDS,
                "provider": provider.name,
            }
            result["cacheHealthy"] = cache.set_json(key, {"data": data, "metadata": metadata})

    _record(
        request, identity, body, options, provider.key, data, bool(result["cached"]), started, hold
    )
    result.update(
        timestamp=iso_ms(utcnow()),
        mockData=provider_name == "Mock" or mock_forced,
        provider=provider_name,
    )
    return ok(result, headers=decision.headers())


def _reserve(
    identity: Identity, count: int, now: datetime, enforce: bool, hold: reservations.Hold
) -> users.Usage:
    limits = Limits.from_settings(get_settings())
    try:

        def reserve(session: Session) -> users.Usage:
            usage = users.reserve_keywords(
                session, identity.user_id, identity.email, count, limits=limits, enforce=enforce,
                now=now, hold=hold,
            )  # fmt: skip
            storage.count_legacy_usage(session, identity.user_id, count, now)  # dual/fallback
            return usage

        return db.run(reserve)
    except TrialExpiredError:
        raise ApiError(403, TRIAL_EXPIRED) from None
    except QuotaExceededError as refused:
        hint = UPGRADE_HINT if refused.trial else RESET_HINT
        raise ApiError(
            429,
            f"Monthly keyword limit reached ({refused.used}/{refused.limit}). {hint}",
            headers={"X-Quota-Remaining": str(max(0, refused.limit - refused.used))},
        ) from None


def _fetch(
    provider: providers.Provider,
    keywords: list[str],
    options: providers.SearchOptions,
    user_id: str,
    reservation_id: str,
    reserved_at: datetime,
) -> list[dict[str, Any]]:
    """Call the provider; on failure give the reservation back."""
    try:
        return [dict(row) for row in provider.keyword_data(keywords, options)]
    except providers.ProviderError as error:
        _give_back(error, provider.key, user_id, reservation_id, reserved_at)


def _give_back(
    error: providers.ProviderError,
    provider_key: str,
    user_id: str,
    reservation_id: str,
    reserved_at: datetime,
) -> NoReturn:
    """Release the reservation, then answer as `provider_failed` does."""

    def release(session: Session) -> None:
        given_back = reservations.release(session, reservation_id)
        storage.count_legacy_usage(session, user_id, -given_back, reserved_at)  # dual/fallback

    db.run(release)
    storage.mirror_usage(user_id)
    provider_failed(error, provider_key)


def _record(
    request: Request,
    identity: Identity,
    body: KeywordSearch,
    options: providers.SearchOptions,
    provider_key: str,
    data: list[dict[str, Any]],
    cache_hit: bool,
    started: float,
    hold: reservations.Hold,
) -> None:
    """The history row and this request's usage row, in one statement that also confirms the
    reservation. Volumes average over the keywords that have one (missing data is not 0)."""
    settings = get_settings()
    peer = request.client.host if request.client else None
    ip = stored_ip(
        client_ip(request.headers, peer, trust_proxy=settings.proxy_trust), settings.ip_storage
    )
    agent = stored_user_agent(request.headers.get("user-agent"))
    volumes = [row["searchVolume"] for row in data if isinstance(row.get("searchVolume"), int)]
    elapsed = round((time.perf_counter() - started) * 1000)
    search_row = search_history.NewSearch(
        user_id=identity.user_id,
        keywords=body.keywords,
        location=options.location,
        language=options.language,
        match_type=options.match_type,
        provider=provider_key,
        cache_hit=cache_hit,
        response_time=elapsed,
        avg_volume=round(sum(volumes) / len(volumes)) if volumes else 0,
        total_volume=sum(volumes),
        user_agent=agent,
        ip_address=ip,
    )
    usage_row = api_usage.Request(
        endpoint="/api/keywords",
        method="POST",
        status_code=200,
        duration_ms=elapsed,
        user_id=identity.user_id,
        ip_address=ip,
        user_agent=agent,
    )
    try:
        db.run(
            lambda s: search_history.record_with_usage(
                s, search_row, usage_row, reservation_id=hold.id
            )
        )
    except UserNotFoundError:
        # Erased (DELETE /api/me, Clerk's user.deleted) since the reservation, which went with
        # the account (its keywords into the tombstone, its row by cascade). As the saved-search
        # route does: provision again (the new account continues the tombstoned trial) and
        # write the rows once more, with no reservation left to confirm.
        forget(identity.user_id)
        provision(identity)
        db.run(lambda s: search_history.record_with_usage(s, search_row, usage_row))
    request.state.usage_recorded = True


handler = lambda_handler(app)
