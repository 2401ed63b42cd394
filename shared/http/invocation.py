"""When the invocation running a request ends, as far as the request's own work may go: what a
route calling a slow dependency (a keyword provider, Stripe) keeps its calls within, so the
client gets the route's documented answer rather than the platform's bare timeout."""

from __future__ import annotations

import time

from starlette.requests import Request

from shared.config import get_settings


def invocation_deadline(request: Request, fallback_s: float) -> float:
    """When (`time.monotonic()`) a dependency must have answered: the invocation's end (Lambda's
    context, else `fallback_s` from now) minus PROVIDER_DEADLINE_MARGIN_S, which the rest of the
    request (the usage row, the response) needs."""
    context = request.scope.get("aws.context")
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    remaining = remaining_ms() / 1000 if callable(remaining_ms) else fallback_s
    return time.monotonic() + remaining - get_settings().provider_deadline_margin_s
