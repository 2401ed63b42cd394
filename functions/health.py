"""GET /api/health: database, Redis and provider checks (docs/original-app.md#health-report, plus
the database).

`healthy` (200) when every check passes, `unhealthy` (503) when none does, else `degraded` (207).
The database is checked at most once per HEALTH_DB_MAX_AGE_S per container (the answer says
`cached: true` in between), so a monitor probing every minute does not keep a suspended Neon
compute awake; `?deep=true` always checks. No usage row is written for health probes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shared import db, providers
from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.http.app import create_app, make_lambda_handler
from shared.http.openapi import body
from shared.http.responses import ok
from shared.providers import account
from shared.ratelimit import limit_request
from shared.redis import redis_health

app = create_app(
    title="Health", summary="Liveness of the database, cache and provider.", record_usage=False
)

PROVIDER_NAMES = {"mock": "Mock", "dataforseo": "DataForSEO", "google-ads": "Google Ads"}
NOT_CONFIGURED = "Provider not properly configured - missing required environment variables"
REJECTED = "Provider not properly configured - the provider rejected the account"
# The database check's retry budget (or DB_RETRY_BUDGET_S when lower). Health's Lambda timeout
# is 10 s (serverless.yml): the check may outlast its budget by one connect attempt (psycopg's
# least timeout, 2 s), and Redis is asked up to three times (REDIS_TIMEOUT_S each), so a
# database that never answers still leaves health a second to answer itself.
DATABASE_BUDGET_S = 4.0
_last_database_check: tuple[float, dict[str, Any]] | None = None
_check_lock = threading.Lock()


def database_check(*, deep: bool) -> dict[str, Any]:
    """The last check when it is fresh enough, else a new one (`db.get_database_health`)."""
    global _last_database_check
    settings = get_settings()
    max_age = settings.health_db_max_age_s
    with _check_lock:
        cached = _last_database_check
        if not deep and cached is not None and time.monotonic() - cached[0] < max_age:
            return {**cached[1], "cached": True}
        health = db.get_database_health(budget_s=min(settings.db_retry_budget_s, DATABASE_BUDGET_S))
        check: dict[str, Any] = {
            "healthy": "error" not in health,
            "responseTime": health["responseTime"],
            "checkedAt": iso_ms(utcnow()),
        }
        if "error" in health:
            check["error"] = health["error"]
        _last_database_check = (time.monotonic(), check)
        return check


def provider_check() -> dict[str, Any]:
    """The provider's own configuration check (credentials, a recent rejection by the upstream,
    an unknown or unbuilt provider), and its circuit breaker when it has one."""
    key = providers.configured_key()
    details: dict[str, Any] = {"provider": key}
    if key in PROVIDER_NAMES:
        details["name"] = PROVIDER_NAMES[key]
    problem = providers.configuration_error()
    if problem is not None:
        details["configError"] = problem
        rejected = problem == account.rejection(key)  # the variables are set but refused
        if rejected:  # the provider still runs, and an operator needs its breaker meanwhile
            _add_breaker(details)
        return {
            "healthy": False,
            "error": REJECTED if rejected else NOT_CONFIGURED,
            "details": details,
        }
    if key == "mock":
        details["note"] = "Mock provider active - for development/testing only"
    if not _add_breaker(details):
        return {"healthy": False, "error": "Provider unavailable", "details": details}
    return {"healthy": True, "details": details}


def _add_breaker(details: dict[str, Any]) -> bool:
    """Put the provider's circuit breaker (if it has one) in `details`; False when it is open."""
    breaker = providers.breaker_stats()
    if breaker is None:
        return True
    details["circuitBreaker"] = {"healthy": breaker["state"] != "OPEN", **breaker}
    if breaker["state"] != "OPEN":
        return True
    details["circuitBreakerError"] = "Circuit breaker is OPEN - service temporarily unavailable"
    return False


HEALTH_LIMIT_PER_HOUR = 60
RATE_LIMITED = "Rate limit exceeded. Try again in {retry_after} seconds."

RESPONSES: dict[int | str, dict[str, object]] = {
    200: body("Every check passes", "Health"),
    207: body("Some checks fail (degraded)", "Health"),
    429: {"description": "Rate limit exceeded (60 per hour)"},
    503: body("No check passes (unhealthy)", "Health"),
}


@app.get("/api/health", response_model=None, responses=RESPONSES)
def health(request: Request, deep: bool = False) -> Response:
    started = time.perf_counter()
    decision = limit_request(request, "health", HEALTH_LIMIT_PER_HOUR, RATE_LIMITED)
    settings = get_settings()
    checks = {
        "database": database_check(deep=deep),
        "redis": redis_health(),
        "provider": provider_check(),
    }
    passing = sum(1 for check in checks.values() if check["healthy"])
    if passing == len(checks):
        status, code = "healthy", 200
    elif passing == 0:
        status, code = "unhealthy", 503
    else:
        status, code = "degraded", 207
    body = {
        "status": status,
        "timestamp": iso_ms(utcnow()),
        "version": settings.app_version,
        "environment": settings.app_env.value,
        "checks": checks,
        "responseTime": round((time.perf_counter() - started) * 1000),
    }
    return ok(body, status=code, cache_control="no-store, no-cache", headers=decision.headers())


lambda_handler = make_lambda_handler(app)
