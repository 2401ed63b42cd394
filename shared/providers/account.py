"""The provider account's state that every container shares through Redis: its request budget
and whether the upstream rejected its credentials or balance.

The budget:

DataForSEO's Google Ads Live endpoints allow 12 requests per minute per account, whatever number
of containers send them. Each container's circuit breaker cannot know what the others sent, so
the budget lives in Redis: a sliding 60 s log (a sorted set of request times), checked and
spent in ONE script round trip. A sliding log rather than a fixed window, because a fixed window
lets twice the limit through across a boundary (12 at :59 and 12 at :00), which the upstream
would answer with "too many requests".

When the budget is spent, `spend` raises `ProviderRateLimitedError` with an honest `retry_after`:
the seconds until the oldest request in the window leaves it. When Redis is down, slow, not
configured or answers something other than two integers, RATE_LIMIT_FAIL_SAFE decides, as for
the rate limiter: closed (the default) refuses (`Retry-After` from
`shared.redis.failure_retry_after`), open lets the request through
unmetered. Times come from the container's clock (Lambda's is NTP-synced), in milliseconds.

The rejection: a 401/402 (or DataForSEO's 40100/40200/40203) seen by any container is kept for
REJECTION_TTL_S, so `/api/health` (its own function, so another container) reports the
configuration error. It expires rather than being cleared on success, which would cost every
successful search a Redis write.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from typing import NoReturn

from shared.config import get_settings
from shared.providers.base import ProviderConfigurationError, ProviderRateLimitedError
from shared.redis import failure_retry_after, get_redis, script_integers
from shared.telemetry import log_event

WINDOW_MS = 60_000
REJECTION_TTL_S = 300

# KEYS[1] the log; ARGV: limit, now (ms), window (ms), a unique member for this request.
# Returns {1, 0} when spent, else {0, ms until the oldest entry leaves the window}.
_SCRIPT = """
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
"""


def key(provider: str) -> str:
    return f"provider-budget:{provider}"


def rejection_key(provider: str) -> str:
    return f"provider-rejected:{provider}"


def reject(provider: str, detail: str, *, shown: str) -> NoReturn:
    """The upstream rejected the account: log `detail` (which may quote the upstream, scrubbed)
    as configuration, remember `shown` for /api/health (`report_rejection`; our own words, never
    the upstream's text: health answers anyone) and raise `ProviderConfigurationError`."""
    log_event("provider_configuration", level=logging.ERROR, provider=provider, detail=detail)
    report_rejection(provider, shown)
    raise ProviderConfigurationError(detail)


def report_rejection(provider: str, message: str) -> None:
    """Remember that the upstream rejected the account (best effort: logging is the record)."""
    client = get_redis()
    try:
        if client is not None:
            client.set(rejection_key(provider), message, ex=REJECTION_TTL_S)
    except Exception as error:
        log_event(
            "provider_rejection_unsaved",
            level=logging.WARNING,
            provider=provider,
            error=type(error).__name__,
        )


def rejection(provider: str) -> str | None:
    """The rejection some container saw within REJECTION_TTL_S, or None (also when unknown)."""
    client = get_redis()
    try:
        value = client.get(rejection_key(provider)) if client is not None else None
    except Exception:
        return None
    return value if isinstance(value, str) else None


def spend(provider: str, per_minute: int, *, now_ms: int | None = None) -> None:
    """Take one request from `provider`'s budget of `per_minute` (0: unlimited), else raise."""
    if per_minute <= 0:
        return
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    client = get_redis()
    try:
        if client is None:
            raise ConnectionError("Redis is not configured")
        reply = client.eval(
            _SCRIPT,
            keys=[key(provider)],
            args=[str(per_minute), str(now_ms), str(WINDOW_MS), secrets.token_hex(8)],
        )
        spent, wait_ms = script_integers(reply)  # else a failure too
    except Exception as error:
        fail_safe = get_settings().rate_limit_fail_safe
        log_event(
            "provider_budget_unavailable",
            level=logging.WARNING,
            provider=provider,
            failSafe=fail_safe,
            error=type(error).__name__,
        )
        if fail_safe == "open":
            return
        raise ProviderRateLimitedError(
            f"{provider} request budget unknown (Redis unavailable)",
            retry_after=failure_retry_after(),
        ) from None
    if spent != 1:
        retry_after = max(1, math.ceil(wait_ms / 1000))
        log_event(
            "provider_budget_spent", provider=provider, limit=per_minute, retryAfter=retry_after
        )
        raise ProviderRateLimitedError(
            f"{provider} account budget of {per_minute} requests/minute is spent",
            retry_after=retry_after,
        )
