"""When the invocation running a request ends, as far as the request's own work may go: what a
route calling a slow dependency (a keyword provider, Stripe) keeps its calls within, and what
every database round trip of a request gives up by, so the client gets the route's documented
answer (the 503 envelope, at worst) rather than the platform's bare timeout."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.types import Scope

from shared import db
from shared.config import get_settings


def invocation_end(scope: Scope) -> float | None:
    """When (`time.monotonic()`) the invocation ends, as Lambda's context says; None elsewhere
    (Vercel says nothing: our vercel.json keeps its default maxDuration, 300 s)."""
    remaining_ms = getattr(scope.get("aws.context"), "get_remaining_time_in_millis", None)
    return time.monotonic() + remaining_ms() / 1000 if callable(remaining_ms) else None


@contextmanager
def database_within_invocation(scope: Scope) -> Iterator[None]:
    """Within the block, the request's database work ends before its invocation does
    (`db.within_invocation`); no bound of its own where the end is unknown."""
    end = invocation_end(scope)
    if end is None:
        yield
        return
    with db.within_invocation(end):
        yield


def invocation_deadline(request: Request, fallback_s: float) -> float:
    """When (`time.monotonic()`) a dependency must have answered: the database's give-up time
    for the invocation (`db.invocation_give_up_time` of Lambda's end, else of `fallback_s` from
    now) less PROVIDER_DEADLINE_MARGIN_S, the time the database work after the call (a record,
    a give-back) needs before that give-up time refuses it."""
    end = invocation_end(request.scope)
    if end is None:
        end = time.monotonic() + fallback_s
    return db.invocation_give_up_time(end) - get_settings().provider_deadline_margin_s


# What a request's storage calls (an erasure's deletes of the user's exports) may take at most
# where the platform does not say when the invocation ends (Vercel: 300 s). Best effort: what
# they leave undone the exports cron's sweep finishes.
STORAGE_BUDGET_S = 10.0


def storage_deadline(request: Request) -> float:
    """When (`time.monotonic()`) S3 must have answered the request's calls: STORAGE_BUDGET_S
    from now, or `invocation_deadline` (room left for the database work after it) when that
    comes first."""
    return min(invocation_deadline(request, math.inf), time.monotonic() + STORAGE_BUDGET_S)
