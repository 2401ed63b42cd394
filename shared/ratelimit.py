"""Rate limiting: fixed one-hour windows in Upstash Redis, one round trip per check.

Fixes over the original (docs/original-app.md#d1, #d16): counters are namespaced per endpoint and
per identity (the user id when signed in, else the client's address alone, an IPv6 address's
/64: the original added an HMAC of the user agent, so a client got a fresh budget with each
User-Agent it made up), so
ten health checks no longer spend the keyword budget; when Redis is down or slower than
`REDIS_TIMEOUT_S`, `RATE_LIMIT_FAIL_SAFE` decides (closed by default, with
`Retry-After` from `shared.redis.failure_retry_after`) instead of a 500, and an answer let
through uncounted claims no count nor window (`X-RateLimit-Limit` alone: the original sent the
whole limit left and `now + 1 h`, contradicting the real window); every answer of a window,
whatever its status, carries the window's stored end as `X-RateLimit-Reset` (the original's
`now + TTL` moved between answers and could fall before the real end) and `Retry-After` rounds
up to it.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from starlette.requests import Request

from shared.clock import iso_ms, utcnow
from shared.config import get_settings
from shared.http.client_ip import client_ip
from shared.http.errors import ApiError
from shared.legacy import keys
from shared.redis import failure_retry_after, get_redis, script_integers
from shared.redis_breaker import best_effort
from shared.telemetry import log_event

WINDOW_SECONDS = 3600

# A fixed window per key, as the original's script (started by the first request, counting the
# rest), with its end stored beside the count (`{count}:{end in Unix ms}`) instead of read back
# as a TTL: every check in the window answers the same end, decided once by the caller's clock,
# and the first check at or after it starts a new window whatever Redis's clock says (the key
# expires at the end only to clean up). Another value starts a new window: the previous
# release's bare count, an end more than a window and CLOCK_SKEW_MS ahead (no check started it:
# another writer, a corrupted value, a year past 9999), a count past exact integers. The skew
# allowed is for containers' clocks: one a little behind keeps the window another just began.
# Written with `%d`: Lua's own number format turns 15 digits into `2.534023008e+14`, which the
# pattern cannot read back.
_SCRIPT = """
local count, ends = string.match(redis.call('GET', KEYS[1]) or '', '^(%d+):(%d+)$')
count, ends = tonumber(count), tonumber(ends)
local now, window, skew = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if (not ends) or ends <= now or ends > now + window + skew or count >= 2^53 then
  count, ends = 0, now + window
end
count = count + 1
redis.call('SET', KEYS[1], string.format('%d:%d', count, ends), 'PXAT', ends)
return {count, ends}
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_WINDOW_MS = WINDOW_SECONDS * 1000
CLOCK_SKEW_MS = 60_000  # how far another container's clock may be ahead of this one's


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int | None  # None (and `reset_at`): failed open, the window's count unknown
    reset_at: datetime | None
    retry_after: int | None = None

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-*` (and `Retry-After` when refused); the limit alone when the window
        is unknown."""
        headers = {"X-RateLimit-Limit": str(self.limit)}
        if self.remaining is not None and self.reset_at is not None:
            headers["X-RateLimit-Remaining"] = str(self.remaining)
            headers["X-RateLimit-Reset"] = iso_ms(self.reset_at)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def _window(reply: object, now_ms: int) -> tuple[int, int]:
    """The script's `[count, end]`: a count of at least one and an end within the window (and
    the clock skew allowed) after `now_ms`, as it always answers. Anything else (a gateway
    that is not Upstash, a bug) is a failure: JSON's booleans are no counts, and an end past
    year 9999 is no date."""
    count, ends = script_integers(reply)
    if count >= 1 and now_ms < ends <= now_ms + _WINDOW_MS + CLOCK_SKEW_MS:
        return count, ends
    raise TypeError("the script's reply is not a count and this window's end")


def identity(user_id: str | None, ip: str | None) -> str:
    """`u:{user id}` when signed in, else `ip:{address}`: the address alone, since anything else
    a request says about its client (the User-Agent, which the original keyed on too) the
    client changes at will (docs/original-app.md#d1). `ip` is `client_ip`'s form; an IPv6
    address counts as its /64 (`ip:2001:db8:1:2::/64`), which one client is usually handed
    whole and may send from any address of, each a fresh budget if counted alone."""
    if user_id:
        return keys.signed_in(user_id)
    if ip is None:
        return "ip:unknown"
    address = ipaddress.ip_address(ip)
    if address.version == 6:
        return f"ip:{ipaddress.ip_network(f'{address}/64', strict=False)}"
    return f"ip:{address}"


def check(
    endpoint: str,
    who: str,
    limit: int,
    *,
    now: datetime | None = None,
    fail_safe: Literal["open", "closed"] | None = None,
) -> Decision:
    """Count this request against `endpoint`'s hourly `limit` for `who`.

    `fail_safe` overrides RATE_LIMIT_FAIL_SAFE for routes that must never run unlimited
    (checkout: each call can create a Stripe session)."""
    settings = get_settings()
    now = now or utcnow()
    if not settings.rate_limit_enabled:  # the original's answer: no limit, the whole budget left
        return Decision(True, limit, limit, now + timedelta(seconds=WINDOW_SECONDS))
    client = get_redis()
    try:
        if client is None:
            raise ConnectionError("Redis is not configured")
        now_ms = (now - _EPOCH) // _MS
        reply = client.eval(
            _SCRIPT,
            keys=[keys.rate_limit(endpoint, who)],
            args=[str(now_ms), str(_WINDOW_MS), str(CLOCK_SKEW_MS)],
        )
        count, ends = _window(reply, now_ms)
    except Exception as error:
        log_event(
            "rate_limit_unavailable",
            level=logging.WARNING,
            endpoint=endpoint,
            failSafe=fail_safe or settings.rate_limit_fail_safe,
            error=type(error).__name__,
        )
        if (fail_safe or settings.rate_limit_fail_safe) == "open":
            return Decision(True, limit, None, None)  # not counted: a window we cannot see
        retry_after = failure_retry_after()
        return Decision(
            False, limit, 0, now + timedelta(seconds=retry_after), retry_after=retry_after
        )
    reset_at = _EPOCH + ends * _MS
    if count > limit:
        # Whole seconds, rounded up: a client waiting that long is never early.
        retry_after = -((now - reset_at) // timedelta(seconds=1))
        return Decision(False, limit, 0, reset_at, retry_after=retry_after)
    return Decision(True, limit, max(0, limit - count), reset_at)


def forget(endpoint: str, user_id: str) -> None:
    """Delete `user_id`'s counter at `endpoint`, for a request refused because Clerk deleted
    the user: its check wrote the counter, whose key names the id, back after the erasure had
    deleted it. Best effort: if Upstash fails now, the key expires with its window (logged,
    without the key)."""
    if not get_settings().rate_limit_enabled:
        return
    client = get_redis()
    if client is None:
        return
    try:
        with best_effort():  # a cleanup: its failure says nothing of the limiter's calls
            client.delete(keys.rate_limit(endpoint, keys.signed_in(user_id)))
    except Exception as error:
        log_event(
            "rate_limit_forget_failed",
            level=logging.WARNING,
            endpoint=endpoint,
            error=type(error).__name__,
        )


def limit_request(
    request: Request,
    endpoint: str,
    limit: int,
    message: str,
    *,
    user_id: str | None = None,
    fail_safe: Literal["open", "closed"] | None = None,
    label: str = "Rate Limit Exceeded",
) -> Decision:
    """Check `request` against `endpoint`'s limit; refused → the 429 envelope with headers.
    Allowed, its headers go on whatever the request answers (`shared.http.app`'s
    RequestContext): a 4xx or 5xx after the check was counted in the window too.

    `message` may use `{retry_after}` and `{limit}`; `label` is the envelope's `error`.
    """
    settings = get_settings()
    peer = request.client.host if request.client else None
    ip = client_ip(request.headers, peer, trust_proxy=settings.proxy_trust)
    who = identity(user_id, ip)
    decision = check(endpoint, who, limit, fail_safe=fail_safe)
    if not decision.allowed:
        raise ApiError(
            429,
            message.format(retry_after=decision.retry_after, limit=limit),
            label=label,
            headers=decision.headers(),
        )
    if settings.rate_limit_enabled:  # off, nothing is counted: no window to tell elsewhere
        request.state.rate_limit_headers = decision.headers()
    return decision
