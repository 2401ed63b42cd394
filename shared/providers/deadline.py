"""A provider call that ends by the request's deadline, whatever the upstream does
(`shared.deadline`, each step's timeout being the time left), and the one way each provider
request is timed and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from shared.deadline import DeadlineExceededError, run_within
from shared.providers.base import ProviderError
from shared.telemetry import log_event

T = TypeVar("T")


def call_within(deadline: float, work: Callable[[float], T], service: str) -> T:
    """`work(seconds left)`, but the caller waits no longer than `deadline` (a
    `time.monotonic()` value); a `ProviderError` naming `service` when time runs out."""
    try:
        return run_within(deadline, work, service)
    except DeadlineExceededError as error:
        raise ProviderError(str(error)) from None


def logged_request(
    *,
    provider: str,
    service: str,
    endpoint: str,
    keywords: int,
    deadline: float | None,
    call: Callable[[], T],
    scrub: Callable[[str], str],
    outcome: Callable[[T], dict[str, Any]] = lambda _: {},
) -> T:
    """`call()` (the provider's breaker around its HTTP request), logged as `provider_request`
    with its duration; upstream text is passed through `scrub` (credentials out). A deadline
    already past is our own failure, not the upstream's: nothing is sent and the breaker counts
    nothing. `outcome` adds fields of a success to its log line."""
    if deadline is not None and deadline <= time.monotonic():
        raise ProviderError(f"{service} was not called: no time left before the deadline")
    started = time.perf_counter()
    try:
        result = call()
    except ProviderError as error:
        log_event(
            "provider_request",
            level=logging.ERROR if error.outage else logging.WARNING,
            provider=provider,
            endpoint=endpoint,
            success=False,
            error=type(error).__name__,
            detail=scrub(str(error)),
            keywords=keywords,
            durationMs=round((time.perf_counter() - started) * 1000),
        )
        raise
    log_event(
        "provider_request",
        provider=provider,
        endpoint=endpoint,
        success=True,
        keywords=keywords,
        **outcome(result),
        durationMs=round((time.perf_counter() - started) * 1000),
    )
    return result
