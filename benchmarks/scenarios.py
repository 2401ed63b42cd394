"""The requests benchmarks send: real API Gateway v2 events, signed like production's.

Everything here is plain data and event building (no function code is imported), so the
orchestrator can hand events to fresh interpreters (cold starts) and workers can build their own.

- `Tokens` signs Clerk-style RS256 session tokens with the run's generated key.
- `Fixtures` names what `seed` (in `benchmarks.worker`) created: a saved search, a flag.
- `ENDPOINTS` lists one scenario per route of every HTTP function, and `PRIMARY` the request
  each function is measured with at cold start and in the memory run. A function with no
  entry here still gets a generic request (its first route) and the report says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from benchmarks.constants import ADMIN_USER, CLERK_WEBHOOK_SECRET, ISSUER, STRIPE_WEBHOOK_SECRET
from devkit import events

USER = "user_bench_main"
# The data export returns every row about its caller, and every call adds one (its api_usage
# row): it gets a user of its own, so the export stays the size one user's calls make it.
EXPORT_USER = "user_bench_export"
USER_AGENT = "keyflash-bench/1.0"
# The keyword search everyone repeats: after the first call it is a cache hit.
HIT_KEYWORDS = ["running shoes", "trail running", "marathon training"]
NEW_SEARCH = {
    "name": "Bench search",
    "description": "created by the benchmark",
    "searchParams": {
        "keywords": ["seo tools", "keyword research"],
        "matchType": "phrase",
        "location": "US",
        "language": "en",
    },
}

Event = dict[str, Any]


@dataclass(frozen=True)
class Tokens:
    """Signs session tokens for any user id with the run's private key.

    One token per user for the whole run (valid for `TOKEN_TTL_S`), as a browser reuses its
    session token: signing is slow (the PEM key is parsed and checked every time, tens of ms),
    and verifying the same token costs the function exactly what verifying a fresh one would.
    """

    private_pem: str

    def __call__(self, sub: str) -> str:
        key = (self.private_pem, sub)
        token = _issued.get(key)
        if token is None:
            now = int(time.time())
            claims = {"sub": sub, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + TOKEN_TTL_S}
            token = _issued[key] = jwt.encode(claims, self.private_pem, algorithm="RS256")
        return token


TOKEN_TTL_S = 4 * 3600
_issued: dict[tuple[str, str], str] = {}


@dataclass
class Fixtures:
    """Rows `seed` created for `USER` (ids the requests refer to)."""

    search_id: str = ""
    flag_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def random_ip() -> str:
    """A documentation-range IP: health is limited per client, so probes vary their address."""
    return f"198.51.{random.randrange(0, 256)}.{random.randrange(1, 255)}"


def request(
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    body: str | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    source_ip: str | None = None,
) -> Event:
    """An API Gateway HTTP API (v2) event, as `devkit.events` builds them for the tests."""
    all_headers = {"user-agent": USER_AGENT, **(headers or {})}
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    if json_body is not None:
        body = json.dumps(json_body)
        all_headers.setdefault("content-type", "application/json")
    ip = source_ip or "203.0.113.7"
    all_headers.setdefault("x-forwarded-for", ip)  # production trusts the platform's proxy
    return events.http_api_v2(
        method, path, headers=all_headers, query=query, body=body, source_ip=ip
    )


def svix_headers(payload: str, *, secret: str = CLERK_WEBHOOK_SECRET) -> dict[str, str]:
    """Svix's v1 signature (what Clerk sends): HMAC-SHA256 of `id.timestamp.body`."""
    msg_id = f"msg_{secrets.token_hex(10)}"
    stamp = str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.{payload}".encode(), hashlib.sha256).digest()
    return {
        "svix-id": msg_id,
        "svix-timestamp": stamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
    }


def stripe_headers(payload: str, *, secret: str = STRIPE_WEBHOOK_SECRET) -> dict[str, str]:
    """Stripe's `t=…,v1=…` signature: HMAC-SHA256 of `timestamp.body` with the secret."""
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{stamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return {"stripe-signature": f"t={stamp},v1={digest}", "content-type": "application/json"}


def clerk_user_updated(user_id: str) -> tuple[str, dict[str, str]]:
    payload = json.dumps(
        {
            "type": "user.updated",
            "object": "event",
            "data": {
                "id": user_id,
                "object": "user",
                "email_addresses": [{"id": "idn_1", "email_address": f"{user_id}@bench.test"}],
                "primary_email_address_id": "idn_1",
            },
        }
    )
    return payload, svix_headers(payload)


def stripe_checkout_completed(user_id: str) -> tuple[str, dict[str, str]]:
    payload = json.dumps(
        {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": f"cs_{secrets.token_hex(8)}",
                    "object": "checkout.session",
                    "mode": "subscription",
                    "customer": f"cus_{user_id}",
                    "subscription": f"sub_{user_id}",
                    "payment_status": "paid",
                    "metadata": {"clerkUserId": user_id},
                }
            },
        }
    )
    return payload, stripe_headers(payload)


# --- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One request shape. `build(tokens, fixtures)` returns a fresh event (new ids, signatures,
    client IP) each time it is called. `env` is set for the call (e.g. billing on for Stripe).
    `needs` names a preparation the worker runs (uncounted) before each call: see
    `benchmarks.worker.PREPARATIONS`."""

    function: str
    method: str
    route: str  # the FastAPI route template, e.g. /api/searches/{search_id}
    label: str
    build: Callable[[Tokens, Fixtures], Event]
    env: dict[str, str] = field(default_factory=dict)
    needs: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}" + (f" ({self.label})" if self.label else "")


def _flag_body() -> dict[str, Any]:
    return {"key": f"bench-{secrets.token_hex(5)}", "enabled": True, "rolloutPercent": 50}


def _keywords_miss() -> dict[str, Any]:
    return {"keywords": [f"bench kw {secrets.token_hex(4)}"], "matchType": "phrase"}


def _s(
    function: str,
    method: str,
    route: str,
    build: Callable[[Tokens, Fixtures], Event],
    label: str = "",
    env: dict[str, str] | None = None,
    needs: str | None = None,
) -> Scenario:
    return Scenario(function, method, route, label, build, env or {}, needs)


BILLING_ON = {"BILLING_ENABLED": "true"}

ENDPOINTS: list[Scenario] = [
    _s(
        "health",
        "GET",
        "/api/health",
        lambda t, f: request("GET", "/api/health", source_ip=random_ip()),
        "database check cached",
    ),
    _s(
        "health",
        "GET",
        "/api/health",
        lambda t, f: request("GET", "/api/health", query={"deep": "true"}, source_ip=random_ip()),
        "deep=true",
    ),
    _s(
        "searches",
        "GET",
        "/api/searches",
        lambda t, f: request("GET", "/api/searches", token=t(USER)),
    ),
    _s(
        "searches",
        "POST",
        "/api/searches",
        lambda t, f: request("POST", "/api/searches", token=t(USER), json_body=NEW_SEARCH),
        needs="room_for_search",
    ),
    _s(
        "search_item",
        "GET",
        "/api/searches/{search_id}",
        lambda t, f: request("GET", f"/api/searches/{f.search_id}", token=t(USER)),
    ),
    _s(
        "search_item",
        "PUT",
        "/api/searches/{search_id}",
        lambda t, f: request(
            "PUT",
            f"/api/searches/{f.search_id}",
            token=t(USER),
            json_body={"name": f"Renamed {secrets.token_hex(3)}"},
        ),
    ),
    _s(
        "search_item",
        "DELETE",
        "/api/searches/{search_id}",
        lambda t, f: request("DELETE", f"/api/searches/{f.extra['doomed_search']}", token=t(USER)),
        needs="doomed_search",
    ),
    _s(
        "keywords",
        "POST",
        "/api/keywords",
        lambda t, f: request(
            "POST",
            "/api/keywords",
            token=t(USER),
            json_body={"keywords": HIT_KEYWORDS, "matchType": "phrase"},
        ),
        "cache hit",
    ),
    _s(
        "keywords",
        "POST",
        "/api/keywords",
        lambda t, f: request("POST", "/api/keywords", token=t(USER), json_body=_keywords_miss()),
        "cache miss",
    ),
    _s(
        "keywords",
        "GET",
        "/api/keywords",
        lambda t, f: request("GET", "/api/keywords", token=t(USER)),
        "405",
    ),
    _s(
        "history", "GET", "/api/history", lambda t, f: request("GET", "/api/history", token=t(USER))
    ),
    _s(
        "history_stats",
        "GET",
        "/api/history/stats",
        lambda t, f: request("GET", "/api/history/stats", token=t(USER)),
    ),
    _s("me", "GET", "/api/me", lambda t, f: request("GET", "/api/me", token=t(USER))),
    _s(
        "me",
        "DELETE",
        "/api/me",
        lambda t, f: request("DELETE", "/api/me", token=t(f.extra["doomed_user"])),
        needs="doomed_user",
    ),
    _s(
        "me_export",
        "GET",
        "/api/me/export",
        lambda t, f: request("GET", "/api/me/export", token=t(EXPORT_USER)),
    ),
    _s("flags", "GET", "/api/flags", lambda t, f: request("GET", "/api/flags", token=t(USER))),
    _s(
        "admin_flags",
        "GET",
        "/api/admin/flags",
        lambda t, f: request("GET", "/api/admin/flags", token=t(ADMIN_USER)),
    ),
    _s(
        "admin_flags",
        "POST",
        "/api/admin/flags",
        lambda t, f: request(
            "POST", "/api/admin/flags", token=t(ADMIN_USER), json_body=_flag_body()
        ),
    ),
    _s(
        "admin_flag_item",
        "GET",
        "/api/admin/flags/{key}",
        lambda t, f: request("GET", f"/api/admin/flags/{f.flag_key}", token=t(ADMIN_USER)),
    ),
    _s(
        "admin_flag_item",
        "PUT",
        "/api/admin/flags/{key}",
        lambda t, f: request(
            "PUT",
            f"/api/admin/flags/{f.flag_key}",
            token=t(ADMIN_USER),
            json_body={"rolloutPercent": random.randrange(0, 101)},
        ),
    ),
    _s(
        "admin_flag_item",
        "DELETE",
        "/api/admin/flags/{key}",
        lambda t, f: request(
            "DELETE", f"/api/admin/flags/{f.extra['doomed_flag']}", token=t(ADMIN_USER)
        ),
        needs="doomed_flag",
    ),
    _s(
        "admin_analytics",
        "GET",
        "/api/admin/analytics",
        lambda t, f: request("GET", "/api/admin/analytics", token=t(ADMIN_USER)),
    ),
    _s(
        "admin_metrics",
        "GET",
        "/api/admin/metrics",
        lambda t, f: request(
            "GET", "/api/admin/metrics", token=t(ADMIN_USER), query={"metric": "api.latency"}
        ),
    ),
    _s(
        "admin_trends",
        "GET",
        "/api/admin/analytics/trends",
        lambda t, f: request(
            "GET",
            "/api/admin/analytics/trends",
            token=t(ADMIN_USER),
            query={"metric": "keyword-trends"},
        ),
    ),
    _s(
        "webhooks_clerk",
        "POST",
        "/api/webhooks/clerk",
        lambda t, f: _signed("/api/webhooks/clerk", *clerk_user_updated(USER)),
        "user.updated",
    ),
    _s(
        "webhooks_stripe",
        "POST",
        "/api/webhooks/stripe",
        lambda t, f: _signed("/api/webhooks/stripe", *stripe_checkout_completed(USER)),
        "checkout.session.completed",
        env=BILLING_ON,
    ),
]


def _signed(path: str, payload: str, headers: dict[str, str]) -> Event:
    return request("POST", path, body=payload, headers=headers)


# What each function is measured with at cold start and in the memory run: its most common call.
PRIMARY: dict[str, str] = {
    "health": "GET /api/health (database check cached)",
    "searches": "GET /api/searches",
    "search_item": "GET /api/searches/{search_id}",
    "keywords": "POST /api/keywords (cache hit)",
    "history": "GET /api/history",
    "history_stats": "GET /api/history/stats",
    "me": "GET /api/me",
    "me_export": "GET /api/me/export",
    "flags": "GET /api/flags",
    "admin_flags": "GET /api/admin/flags",
    "admin_flag_item": "GET /api/admin/flags/{key}",
    "admin_analytics": "GET /api/admin/analytics",
    "admin_metrics": "GET /api/admin/metrics",
    "admin_trends": "GET /api/admin/analytics/trends",
    "webhooks_clerk": "POST /api/webhooks/clerk (user.updated)",
    "webhooks_stripe": "POST /api/webhooks/stripe (checkout.session.completed)",
}

# The four calls whose warm overhead is compared with bare psycopg (section 2).
WARM: list[str] = [
    "GET /api/health (deep=true)",
    "GET /api/health (database check cached)",
    "GET /api/searches",
    "GET /api/searches/{search_id}",
    "POST /api/keywords (cache hit)",
]

BY_NAME: dict[str, Scenario] = {scenario.name: scenario for scenario in ENDPOINTS}


def generic(function: str, method: str, route: str) -> Scenario:
    """A request for a route nobody wrote a scenario for: signed in as USER, sample params."""
    path = route
    for part in route.split("/"):
        if part.startswith("{") and part.endswith("}"):
            path = path.replace(part, "3f2a9c1e-8b7d-4e6f-a5c4-2d1b0e9f8a7c")
    return Scenario(
        function, method, route, "generic", lambda t, f: request(method, path, token=t(USER))
    )


def primary(function: str, routes: list[tuple[str, str]]) -> Scenario:
    """The function's primary scenario, or a generic one on its first (GET if any) route."""
    name = PRIMARY.get(function)
    if name is not None and name in BY_NAME:
        return BY_NAME[name]
    routes = sorted(routes, key=lambda r: (r[0] != "GET", r[1]))
    method, route = routes[0] if routes else ("GET", "/")
    return generic(function, method, route)
