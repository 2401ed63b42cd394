"""How a function answers when a keyword provider fails, and when the provider must have
answered: shared by keyword search, related keywords and content briefs
(docs/keyword-search.md#answers). Upstream text never reaches the client."""

from __future__ import annotations

import logging
from typing import NoReturn

from starlette.requests import Request

from shared.config import get_settings
from shared.http.errors import ApiError
from shared.http.invocation import invocation_deadline
from shared.providers import (
    ProviderConfigurationError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
)
from shared.telemetry import log_event


def provider_deadline(request: Request) -> float:
    """When (`time.monotonic()`) the provider must have answered: `invocation_deadline`, the
    invocation's end being KEYWORDS_MAX_DURATION_S from now where Lambda's context is absent."""
    return invocation_deadline(request, get_settings().keywords_max_duration_s)


def provider_failed(error: ProviderError, provider_key: str) -> NoReturn:
    """Log, then answer: 503 with `Retry-After` when retrying later helps (budget spent,
    upstream rate limit, circuit open), 503 for configuration, else 502."""
    log_event(
        "provider_failed",
        level=logging.ERROR if error.outage else logging.WARNING,
        provider=provider_key,
        error=type(error).__name__,
    )
    if isinstance(error, ProviderUnavailableError):
        reason = (
            "provider_busy"
            if isinstance(error, ProviderRateLimitedError)
            else "provider_circuit_open"
        )
        retry = {"Retry-After": str(error.retry_after)}
        raise ApiError(503, "unavailable", headers=retry, extra={"reason": reason}) from None
    if isinstance(error, ProviderConfigurationError):
        raise ApiError(503, "configuration", extra={"reason": "provider_not_configured"}) from None
    raise ApiError(502, "provider failed", label="Bad Gateway") from None
