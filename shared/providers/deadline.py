"""A provider call that ends by the request's deadline, whatever the upstream does, and the
one way each provider request is timed and logged.

httpx's timeouts apply to each network step (connect, each read), so a body trickled byte by
byte would outlast any of them. The call runs in a daemon thread that the caller waits for until
the deadline; each step's timeout is the time left, so the thread ends on its own at the latest
one step timeout later (its answer is dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from shared.providers.base import ProviderError
from shared.telemetry import log_event

T = TypeVar("T")


def call_within(deadline: float, work: Callable[[float], T], service: str) -> T:
    """`work(seconds left)`, but the caller waits no longer than `deadline` (a
    `time.monotonic()` value); a `ProviderError` naming `service` when time runs out."""
    budget = deadline - time.monotonic()
    if budget <= 0:
        raise ProviderError(f"{service} was not called: no time left before the deadline")
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(work(budget))
        except BaseException as error:  # handed to the caller below
            outcome.append(error)

    worker = threading.Thread(
        target=run, name=f"{service.lower().replace(' ', '-')}-request", daemon=True
    )
    worker.start()
    worker.join(budget)
    if not outcome:
        raise ProviderError(f"{service} did not answer within the {budget:.1f} s deadline")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


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
