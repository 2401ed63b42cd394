"""The container's Upstash Redis client (REST), with the request timeout the SDK lacks.

`upstash-redis` builds its httpx client with `timeout=None` and retries after 3 s by default, so a
slow Redis would hold a request until the function's own time limit. We bound every call as a
whole with `REDIS_TIMEOUT_S` (`shared.deadline`: httpx's timeouts are per network step, which a
reply trickled byte by byte meets forever), retry nothing (callers decide what a failure means)
and send no telemetry headers unless `UPSTASH_TELEMETRY=true`. Calls go through the container's
circuit breaker (`shared.redis_breaker`): after a few failures in a row, none is sent for a pause.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import httpx
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from shared.config import get_settings
from shared.deadline import run_within
from shared.redis_breaker import PAUSE_S, UpstashBreaker, UpstashCircuitOpenError

# Health's check writes this key (one command, as the original's PING): a Redis that answers PING
# but refuses writes fails the limiter and the cache all the same. The key expires after 10 s.
PROBE_KEY = "health:probe"
PROBE_TTL_MS = 10_000
WRITE_REFUSED = "Redis refuses writes - the check's write was rejected"
# How a refusal to write begins (the error's code): maxmemory under `noeviction`, a read-only
# replica, a failed RDB save, too few replicas, a read-only token, Upstash's data size quota. Any
# other error answer (a wrong token: WRONGPASS) is the original's "no PONG".
_WRITE_REFUSALS = ("OOM ", "READONLY ", "MISCONF ", "NOREPLICAS ", "NOPERM ", "ERR DB capacity")

_client: Redis | None = None
_lock = threading.Lock()
breaker = UpstashBreaker()


class _BoundedClient(httpx.Client):
    """The SDK's httpx client, each request of which ends for the caller within `total` seconds
    (`DeadlineExceededError` otherwise), reply read included; each step's timeout is `total` too,
    so an abandoned request ends on its own once the server stalls; none is sent while the
    `breaker` is open."""

    def __init__(self, total: float) -> None:
        super().__init__(timeout=total)
        self._total = total

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        send = super().send
        deadline = time.monotonic() + self._total
        return breaker.call(
            lambda: run_within(deadline, lambda _left: send(request, **kwargs), "Upstash")
        )


def get_redis() -> Redis | None:
    """The cached client, or None when Upstash is not configured."""
    global _client
    settings = get_settings()
    if not (settings.upstash_redis_rest_url and settings.upstash_redis_rest_token):
        return None
    if _client is None:
        with _lock:
            if _client is None:
                client = Redis(
                    url=settings.upstash_redis_rest_url,
                    token=settings.upstash_redis_rest_token,
                    rest_retries=0,
                    allow_telemetry=settings.upstash_telemetry,
                )
                # The SDK exposes no timeout option: give it a bounded httpx client.
                client._http._client.close()
                client._http._client = _BoundedClient(settings.redis_timeout_s)
                _client = client
    return _client


def failure_retry_after() -> int:
    """`Retry-After` of a refusal because an Upstash call failed: while the breaker is open the
    pause left (no call is sent before then) rounded up, never below `PAUSE_S`, else 60 s."""
    left = breaker.pause_left()
    return 60 if left is None else max(math.ceil(PAUSE_S), math.ceil(left))


def script_integers(reply: object) -> tuple[int, int]:
    """A Lua script's reply of two integers, as Upstash answers it; anything else (a gateway
    that is not Upstash, a bug) is a TypeError. JSON's booleans are no integers (`True` would
    pass as 1)."""
    match reply:
        case [int(first), int(second)] if type(first) is type(second) is int:
            return first, second
    raise TypeError("the script's reply is not two integers")


def reset_redis(*, close: bool = False) -> None:
    """Forget the cached client and its breaker's state (tests, settings changes); `close` also
    closes its connections (SnapStart: none may be frozen into the snapshot)."""
    global _client
    breaker.reset()
    with _lock:
        if close and _client is not None:
            _client.close()  # type: ignore[no-untyped-call]
        _client = None


def redis_health() -> dict[str, Any]:
    """`{healthy, responseTime, error?, details}` in the original health check's shape; its ping
    is a write (`PROBE_KEY`), so a Redis refusing writes is unhealthy too."""
    settings = get_settings()
    if settings.privacy_mode:
        details = {"privacyMode": True, "status": "disabled for privacy compliance"}
        return {"healthy": True, "details": {**details, "redisConfigured": get_redis() is not None}}
    client = get_redis()
    if client is None:
        return {
            "healthy": False,
            "error": "Redis not configured",
            "details": {
                "privacyMode": False,
                "redisConfigured": False,
                "message": "Set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN",
            },
        }
    started = time.perf_counter()
    try:
        written: object = client.set(PROBE_KEY, "1", px=PROBE_TTL_MS)  # True for "OK"
    except UpstashCircuitOpenError:
        return {
            "healthy": False,
            "responseTime": 0,
            "error": "Redis ping not sent: its circuit breaker is open after failed calls",
            "details": {"configured": True, "circuitOpen": True},
        }
    except UpstashError as error:
        if str(error).startswith(_WRITE_REFUSALS):
            return {
                "healthy": False,
                "responseTime": round((time.perf_counter() - started) * 1000),
                "error": WRITE_REFUSED,
                "details": {"configured": True, "writable": False},
            }
        written = False
    except Exception:
        written = False
    elapsed = round((time.perf_counter() - started) * 1000)
    if written is not True:
        return {
            "healthy": False,
            "responseTime": elapsed,
            "error": "Redis ping failed - no PONG response",
            "details": {"configured": True},
        }
    return {
        "healthy": True,
        "responseTime": elapsed,
        "details": {"configured": True, "responsive": True},
    }
