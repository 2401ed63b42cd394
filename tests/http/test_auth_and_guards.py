"""Clerk session tokens, admin checks, CSRF, CORS and warm-container reuse, through real handlers.

Requests go through functions/searches.py's Lambda `lambda_handler` with API Gateway v2 events (one
invocation style is enough here: the style-specific plumbing is covered by the contract tests),
on the direct database lane (nothing here depends on the lane, except the pooled warm-reuse
test, which takes PgBouncer explicitly).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import event
from starlette.responses import Response

from devkit import events, gateway, layout
from devkit._host import free_port
from devkit.pgbouncer import LocalPgBouncer
from devkit.tokens import new_private_pem
from shared import auth, config, db
from shared.http.app import create_app, make_lambda_handler
from shared.http.auth import AdminUser, CurrentUser
from shared.http.guards import CSRF_EXEMPT_PREFIXES, STATE_CHANGING
from shared.http.responses import ok
from tests.support.http import ISSUER, Caller, Keys, Result, fresh_ip, make_token

APP_URL = "https://app.keyflash.test"
OWN_ORIGIN = "https://api.keyflash.test"  # the host devkit.events puts on every request
ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}
AUTH_REQUIRED = "Authentication required"
BAD_ORIGIN = "Invalid request origin"
BAD_CSRF = "CSRF token validation failed"
KEYWORDS = {"keywords": ["espresso"], "matchType": "phrase"}
SEARCH = {"name": "n", "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"}}


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Auth and guards do not depend on the lane: run on the direct one only."""
    return direct_database_url


@pytest.fixture
def caller(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Caller:
    monkeypatch.setenv("APP_URL", APP_URL)
    for name in ("ALLOWED_ORIGINS", "CLERK_AUTHORIZED_PARTIES", "ADMIN_ROLE_CLAIM"):
        monkeypatch.delenv(name, raising=False)
    config.get_settings.cache_clear()
    return Caller("lambda_v2", api_env)


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Change settings the way a redeploy would (and drop the container's cached copy)."""

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        config.get_settings.cache_clear()

    return apply


def assert_envelope(result: Result, status: int, message: str) -> None:
    assert result.status == status, result.text
    body = result.json
    assert set(body) == ENVELOPE_KEYS, body
    assert (body["statusCode"], body["message"]) == (status, message)
    assert result.headers["cache-control"] == "no-store, no-cache, must-revalidate"
    assert result.headers["api-version"] == "v1"


# RFC 6750 §3: every 401 challenges for a bearer token, and says when the one sent was refused.
CHALLENGE = "Bearer"
REFUSED_TOKEN = 'Bearer error="invalid_token"'


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(payload).encode())
    return f"{head}.{body}.{_b64(signature)}"


def hs256(secret: bytes, payload: dict[str, Any]) -> str:
    """HS256 signed with `secret`, built by hand (PyJWT refuses a PEM as an HMAC secret)."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def claims(sub: str | None = "user_a", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 300}
    if sub is not None:
        payload["sub"] = sub
    payload.update(overrides)
    return {key: value for key, value in payload.items() if value is not None}


@pytest.fixture(scope="module")
def other_key() -> str:
    return new_private_pem().decode()


def rs256(keys: Keys, payload: dict[str, Any], *, algorithm: str = "RS256") -> str:
    return jwt.encode(payload, keys.private_pem, algorithm=algorithm)


def _ago(seconds: int) -> int:
    return int(time.time()) - seconds


AUTHORIZED_PARTY = APP_URL
ATTACKS: dict[str, Callable[[Keys, str], str]] = {
    "expired": lambda k, o: rs256(k, claims(exp=_ago(60), iat=_ago(400), nbf=_ago(400))),
    "not_yet_valid": lambda k, o: rs256(k, claims(nbf=int(time.time()) + 120)),
    "issued_in_the_future": lambda k, o: rs256(k, claims(iat=int(time.time()) + 120)),
    "signed_by_another_key": lambda k, o: jwt.encode(claims(), o, algorithm="RS256"),
    "alg_none": lambda k, o: unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "alg_none_with_signature": lambda k, o: unsigned({"alg": "none"}, claims(), b"sig"),
    "hs256_public_key_as_secret": lambda k, o: hs256(k.public_pem.encode(), claims()),
    "rs512_instead_of_rs256": lambda k, o: rs256(k, claims(), algorithm="RS512"),
    "wrong_issuer": lambda k, o: rs256(k, claims(iss="https://evil.example")),
    "no_issuer": lambda k, o: rs256(k, claims(iss=None)),
    "unauthorised_party": lambda k, o: rs256(k, claims(azp="https://evil.example")),
    "party_list": lambda k, o: rs256(k, claims(azp=[AUTHORIZED_PARTY])),
    "party_object": lambda k, o: rs256(k, claims(azp={"a": 1})),
    "party_number": lambda k, o: rs256(k, claims(azp=5)),
    "party_null": lambda k, o: rs256(k, {**claims(), "azp": None}),
    "status_number": lambda k, o: rs256(k, claims(sts=1)),
    "status_list": lambda k, o: rs256(k, claims(sts=["active"])),
    "status_null": lambda k, o: rs256(k, {**claims(), "sts": None}),
    "exp_string": lambda k, o: rs256(k, claims(exp=str(int(time.time()) + 300))),
    "exp_bool": lambda k, o: rs256(k, claims(exp=True)),
    "nbf_string": lambda k, o: rs256(k, claims(nbf="0")),
    "iat_string": lambda k, o: rs256(k, claims(iat="0")),
    "missing_sub": lambda k, o: rs256(k, claims(sub=None)),
    "empty_sub": lambda k, o: rs256(k, claims(sub="")),
    "non_string_sub": lambda k, o: rs256(k, claims(sub=12345)),
    "sub_with_nul": lambda k, o: rs256(k, claims(sub="user_a\x00b")),
    "sub_with_lone_surrogate": lambda k, o: rs256(k, claims(sub="user_a\ud800")),
    "missing_exp": lambda k, o: rs256(k, claims(exp=None)),
    "tampered_payload": lambda k, o: _tamper(rs256(k, claims())),
    "garbage": lambda k, o: "not-a-jwt",
    "garbage_three_parts": lambda k, o: "aaa.bbb.ccc",
    "empty_signature": lambda k, o: rs256(k, claims()).rsplit(".", 1)[0] + ".",
}


def _tamper(token: str) -> str:
    head, _, rest = token.partition(".")
    _, _, signature = rest.partition(".")
    return f"{head}.{_b64(json.dumps(claims(sub='user_admin')).encode())}.{signature}"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_forged_or_invalid_tokens_get_the_401_envelope(
    attack: str,
    caller: Caller,
    other_key: str,
    setenv: Callable[..., None],
    admin_conn: psycopg.Connection[tuple[Any, ...]],
) -> None:
    setenv(CLERK_AUTHORIZED_PARTIES=f"{AUTHORIZED_PARTY}, https://other.keyflash.test")
    token = ATTACKS[attack](caller.keys, other_key)
    for headers in (bearer(token), {"cookie": f"__session={token}"}):
        result = caller("searches", "GET", "/api/searches", headers=headers)
        assert_envelope(result, 401, AUTH_REQUIRED)
        assert result.json["error"] == "Client Error"
        assert result.headers["www-authenticate"] == REFUSED_TOKEN
    (users,) = admin_conn.execute("SELECT count(*) FROM users").fetchone() or (None,)
    assert users == 0, "a refused token must not provision a user"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="plain"),
        pytest.param({"azp": AUTHORIZED_PARTY}, id="authorised_party"),
        pytest.param({"azp": "https://other.keyflash.test"}, id="second_authorised_party"),
        pytest.param({"nbf": "soon"}, id="nbf_within_leeway"),
        pytest.param({"exp": "just_now"}, id="exp_within_leeway"),
        pytest.param({"v": 2, "sts": "active"}, id="active_session"),
        # Clerk's SDKs sign out only `pending`: a status Clerk may add later is signed in
        pytest.param({"v": 2, "sts": "some_new_status"}, id="unknown_session_status"),
    ],
)
def test_valid_tokens_are_accepted(
    overrides: dict[str, Any], caller: Caller, setenv: Callable[..., None]
) -> None:
    setenv(CLERK_AUTHORIZED_PARTIES=f"  {AUTHORIZED_PARTY} ,https://other.keyflash.test ")
    now = int(time.time())
    values = {"soon": now + 3, "just_now": now - 2}
    token = rs256(caller.keys, claims(**{k: values.get(v, v) for k, v in overrides.items()}))
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert (result.status, result.json) == (200, {"searches": []}), result.text


@pytest.mark.parametrize("email", ["a\x00@example.com", "\ud800@example.com"])
def test_an_email_claim_no_row_could_hold_provisions_with_the_placeholder(
    email: str, caller: Caller, admin_conn: psycopg.Connection[tuple[Any, ...]]
) -> None:
    token = rs256(caller.keys, claims(email=email))
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert (result.status, result.json) == (200, {"searches": []}), result.text
    row = admin_conn.execute("SELECT email FROM users WHERE id = 'user_a'").fetchone()
    assert row == ("user_a@keyflash.local",)


def test_any_party_is_accepted_when_none_is_configured(caller: Caller) -> None:
    token = rs256(caller.keys, claims(azp="https://anything.example"))
    assert caller("searches", "GET", "/api/searches", headers=bearer(token)).status == 200


@pytest.mark.parametrize("audience", ["https://api.keyflash.example", ["a", "b"], "", 7])
def test_an_audience_claim_is_not_checked_as_clerk_does_without_one(
    audience: object, caller: Caller
) -> None:
    """Clerk lets an instance add custom claims such as `aud` to its session tokens; its own
    SDKs check `aud` only when given an audience, and so do we (PyJWT refuses any `aud` unless
    told otherwise: every user of such an instance was signed out of the API)."""
    token = rs256(caller.keys, claims(aud=audience))
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert (result.status, result.json) == (200, {"searches": []}), result.text


@pytest.mark.parametrize(
    "attack", ["party_list", "party_object", "party_null", "exp_string", "status_null"]
)
def test_a_claim_of_the_wrong_type_is_an_invalid_token_even_where_a_session_is_optional(
    attack: str, caller: Caller, other_key: str, setenv: Callable[..., None]
) -> None:
    setenv(CLERK_AUTHORIZED_PARTIES=AUTHORIZED_PARTY)
    token = ATTACKS[attack](caller.keys, other_key)
    anonymous = caller("flags", "GET", "/api/flags")
    result = caller("flags", "GET", "/api/flags", headers=bearer(token))
    assert (result.status, result.json) == (200, anonymous.json), result.text
    admin = caller("admin_flags", "GET", "/api/admin/flags", headers=bearer(token))
    assert_envelope(admin, 401, AUTH_REQUIRED)


def test_session_cookie_works_like_the_header(caller: Caller) -> None:
    token = make_token(caller.keys, "user_cookie")
    by_cookie = caller("searches", "GET", "/api/searches", headers={"cookie": f"__session={token}"})
    by_header = caller("searches", "GET", "/api/searches", headers=bearer(token))
    assert by_cookie.status == by_header.status == 200
    assert by_cookie.json == by_header.json == {"searches": []}
    # Between other cookies, including ones Python's SimpleCookie chokes on.
    messy = f'theme=dark mode; prefs={{"a":1}}; __session={token}; _ga=GA1.1.1'
    assert caller("searches", "GET", "/api/searches", headers={"cookie": messy}).status == 200


def test_the_first_of_two_session_cookies_is_used_as_clerks_sdk_does(caller: Caller) -> None:
    """A browser sends every `__session` that matches (another path's, a stale subdomain's);
    Clerk's backend SDK reads the first, so the API acts as the same session as the frontend."""
    first = make_token(caller.keys, "user_first_cookie")
    second = make_token(caller.keys, "user_second_cookie")
    seen = []
    for cookie in (
        f"__session={first}; __session={second}",
        f"__session={second}; x=1; __session={first}",
    ):
        result = caller("me", "GET", "/api/me", headers={"cookie": cookie})
        assert result.status == 200, result.text
        seen.append(result.json["id"])
    assert seen == ["user_first_cookie", "user_second_cookie"]
    # An empty first one is no token, as there: not a fall-through to the next.
    empty_first = caller(
        "searches", "GET", "/api/searches", headers={"cookie": f"__session=; __session={first}"}
    )
    assert_envelope(empty_first, 401, AUTH_REQUIRED)


def test_the_header_wins_over_the_cookie(caller: Caller) -> None:
    good = make_token(caller.keys, "user_a")
    header_good = caller(
        "searches", "GET", "/api/searches",
        headers={**bearer(good), "cookie": "__session=garbage"},
    )  # fmt: skip
    assert header_good.status == 200
    header_bad = caller(
        "searches", "GET", "/api/searches",
        headers={**bearer("garbage"), "cookie": f"__session={good}"},
    )  # fmt: skip
    assert_envelope(header_bad, 401, AUTH_REQUIRED)


def test_no_token_at_all(caller: Caller) -> None:
    result = caller("searches", "GET", "/api/searches")
    assert_envelope(result, 401, AUTH_REQUIRED)
    assert result.headers["www-authenticate"] == CHALLENGE
    for value in ("Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "token"):
        result = caller("searches", "GET", "/api/searches", headers={"authorization": value})
        assert_envelope(result, 401, AUTH_REQUIRED)
        assert result.headers["www-authenticate"] == CHALLENGE, value


@pytest.mark.parametrize(
    ("settings", "logged"),
    [
        pytest.param(  # the original app's keys only: neither of the two we verify with
            {"CLERK_JWT_KEY": "", "CLERK_SECRET_KEY": "sk_test_0riginalApp"},
            {"missing": ["CLERK_JWT_KEY", "CLERK_JWKS_URL"]},
            id="no_key",
        ),
        pytest.param(
            {"CLERK_JWT_KEY": "not-a-pem"},
            {"invalid": ["CLERK_JWT_KEY"], "reason": "not a PEM public key"},
            id="not_a_key",
        ),
    ],
)
def test_no_usable_clerk_key_is_a_503_logged_once_per_container(
    caller: Caller,
    setenv: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, str],
    logged: dict[str, Any],
) -> None:
    """Our configuration failing, not the caller's token: a 401 would sign every user out (a
    frontend sign-in loop), so routes needing a session answer 503 with `Retry-After`, as when
    Clerk's JWKS fails us; `GET /api/flags` serves the caller as anonymous. The operator gets a
    line saying the deployment cannot verify any token (once, not once per request)."""
    monkeypatch.delenv("CLERK_JWKS_URL", raising=False)
    setenv(**settings)
    auth.report_unusable_clerk_key.cache_clear()
    caplog.set_level(logging.INFO, logger="keyflash")
    token = bearer(caller.token("user_a"))
    for _ in range(2):
        result = caller("searches", "GET", "/api/searches", headers=token)
        assert (result.status, result.json["statusCode"]) == (503, 503), result.text
        assert result.headers["retry-after"] == "5"
        assert "www-authenticate" not in result.headers
    failed = [json.loads(r.getMessage()) for r in caplog.records if "request_failed" in r.message]
    assert failed[0]["reason"] == "clerk_not_configured"
    flags = caller("flags", "GET", "/api/flags", headers=token)
    assert (flags.status, flags.json) == (200, caller("flags", "GET", "/api/flags").json)
    [record] = [r for r in caplog.records if '"event":"clerk_not_configured"' in r.getMessage()]
    line = json.loads(record.getMessage())
    assert record.levelno == logging.ERROR
    assert {key: line[key] for key in logged} == logged
    assert "sk_test_0riginalApp" not in caplog.text and "not-a-pem" not in caplog.text


def test_with_both_clerk_keys_set_the_pem_alone_verifies(
    caller: Caller, setenv: Callable[..., None]
) -> None:
    """The precedence http-contract.md states: a JWKS nothing answers at would refuse every
    token if it were fetched, so a 200 shows the PEM verified with no network."""
    setenv(CLERK_JWKS_URL=f"http://127.0.0.1:{free_port()}/.well-known/jwks.json")
    result = caller("searches", "GET", "/api/searches", headers=bearer(caller.token("user_a")))
    assert result.status == 200, result.text


# --------------------------------------------------------------------------- pending sessions

SESSION_PENDING = (
    "Finish signing in: the session has pending tasks (such as choosing an organization)"
)
# A request each route would serve to a signed-in caller, so only the session decides.
PATH_VALUES = {"search_id": "s1", "org_id": "org_2pendingTeam", "key": "a-flag", "export_id": "e1"}
BODIES: dict[str, dict[str, Any]] = {
    "/api/keywords": {"keywords": ["espresso"], "matchType": "phrase", "location": "US"},
    "/api/keywords/related": {"keyword": "espresso"},
    "/api/content-brief": {"keyword": "espresso"},
}


def _routes_needing_a_session() -> list[tuple[str, str, str]]:
    """(function, method, path) of every documented operation that answers 401."""
    found = []
    for function in gateway.load_all():
        for path, operations in function.app.openapi()["paths"].items():
            for method, operation in operations.items():
                if "401" in operation["responses"]:
                    found.append((function.name, method.upper(), path))
    return sorted(found)


NEEDS_A_SESSION = _routes_needing_a_session()


def pending(keys: Keys, sub: str = "user_a", **extra: Any) -> str:
    """A Clerk v2 session token whose session still has tasks to do (`sts: pending`)."""
    return rs256(keys, claims(sub, v=2, sts="pending", email=f"{sub}@example.com", **extra))


def test_every_route_that_needs_a_session_is_found() -> None:
    paths = {path for _, _, path in NEEDS_A_SESSION}
    assert {"/api/me", "/api/keywords", "/api/checkout", "/api/admin/flags"} <= paths
    assert "/api/flags" not in paths and "/api/health" not in paths


@pytest.mark.parametrize(("function", "method", "path"), NEEDS_A_SESSION)
def test_a_pending_session_is_signed_out_on_every_route_that_needs_a_session(
    function: str,
    method: str,
    path: str,
    caller: Caller,
    setenv: Callable[..., None],
    admin_conn: psycopg.Connection[tuple[Any, ...]],
) -> None:
    """Clerk's SDKs treat a session with pending tasks (choose an organization, reset a
    password) as signed out: 401 with a message that says why, before any work."""
    setenv(BILLING_ENABLED="true", ADMIN_USER_IDS="user_a")
    concrete = path.format(**PATH_VALUES)
    token = pending(caller.keys)
    result = caller(
        function, method, concrete, headers=bearer(token), json_body=BODIES.get(path, {})
    )
    assert_envelope(result, 401, SESSION_PENDING)
    assert result.headers["www-authenticate"] == REFUSED_TOKEN
    anonymous = caller(function, method, concrete, json_body=BODIES.get(path, {}))
    assert (anonymous.status, anonymous.headers["www-authenticate"]) == (401, CHALLENGE)
    (users,) = admin_conn.execute("SELECT count(*) FROM users").fetchone() or (None,)
    assert users == 0, "a pending session must not provision its user"


def test_a_pending_session_is_anonymous_where_a_session_is_optional(caller: Caller) -> None:
    anonymous = caller("flags", "GET", "/api/flags")
    result = caller("flags", "GET", "/api/flags", headers=bearer(pending(caller.keys)))
    assert (result.status, result.json) == (200, anonymous.json), result.text


def test_a_session_that_turns_pending_spends_nothing_until_it_is_active_again(
    caller: Caller, admin_conn: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """A signed-in user whose session gets a task (Clerk forcing an organization choice or a
    password reset) is refused, from the cookie too, and searches nothing until it is done."""
    active = rs256(caller.keys, claims("user_a", v=2, sts="active", email="user_a@example.com"))
    assert caller("me", "GET", "/api/me", headers=bearer(active)).status == 200
    search = BODIES["/api/keywords"]
    refused = caller(
        "keywords", "POST", "/api/keywords", headers=bearer(pending(caller.keys)), json_body=search
    )
    assert_envelope(refused, 401, SESSION_PENDING)
    cookie = {"cookie": f"__session={pending(caller.keys)}"}
    assert_envelope(caller("me", "GET", "/api/me", headers=cookie), 401, SESSION_PENDING)
    assert admin_conn.execute("SELECT count(*) FROM search_history").fetchone() == (0,)
    usage = caller("me", "GET", "/api/me", headers=bearer(active)).json["usage"]
    assert (usage["thisMonth"], usage["total"]) == (0, 0)
    served = caller("keywords", "POST", "/api/keywords", headers=bearer(active), json_body=search)
    assert served.status == 200, served.text


# --------------------------------------------------------------------------- admin


def probe_app() -> FastAPI:
    """A throwaway app on the shared factory: an admin route and CSRF-exempt/non-exempt paths."""
    app = create_app(title="Probe", summary="Admin and guard probe.", record_usage=False)

    @app.get("/api/admin/probe", response_model=None)
    def admin_probe(admin: AdminUser) -> Response:
        return ok({"admin": admin.user_id})

    @app.get("/api/probe/me", response_model=None)
    def me_probe(user: CurrentUser) -> Response:
        return ok({"user": user.user_id, "isAdmin": user.is_admin})

    @app.get("/api/probe/boom", response_model=None)
    def boom() -> Response:
        raise RuntimeError("a bug")

    @app.get("/api/probe/org", response_model=None)
    def org_probe(user: CurrentUser) -> Response:
        org = user.org
        if org is None:
            return ok({"org": None})
        return ok({"org": [org.id, org.role, org.slug, sorted(org.permissions)]})

    for path in (
        "/api/probe",
        "/api/webhooksx",
        "/api/webhooks/probe",
        "/api/health",
        "/api/health/deep",
    ):

        @app.api_route(path, methods=["POST", "PUT", "PATCH", "DELETE"], response_model=None)
        def changed() -> Response:
            return ok({"changed": True})

    return app


@pytest.fixture
def probe(caller: Caller) -> Callable[..., Result]:
    handler = make_lambda_handler(probe_app())

    def invoke(method: str, path: str, headers: dict[str, str] | None = None) -> Result:
        raw = handler(events.http_api_v2(method, path, headers=headers), events.lambda_context())
        text = events.response_json(raw)
        out = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        return Result(raw["statusCode"], out, json.dumps(text))

    return invoke


@pytest.mark.parametrize(
    ("env", "extra", "status"),
    [
        pytest.param({}, {}, 403, id="plain_user"),
        pytest.param({}, {"metadata": {"role": "admin"}}, 200, id="role_claim"),
        pytest.param({}, {"metadata": {"role": "user"}}, 403, id="other_role"),
        pytest.param({}, {"role": "admin"}, 403, id="role_claim_elsewhere"),
        pytest.param({"ADMIN_USER_IDS": " user_x , user_a "}, {}, 200, id="admin_user_ids"),
        pytest.param({"ADMIN_USER_IDS": "user_x"}, {}, 403, id="not_in_admin_user_ids"),
        pytest.param(
            {"ADMIN_ROLE_CLAIM": "public_metadata.role"},
            {"public_metadata": {"role": "admin"}},
            200,
            id="configured_claim",
        ),
        pytest.param(
            {"ADMIN_ROLE_CLAIM": "public_metadata.role"},
            {"metadata": {"role": "admin"}},
            403,
            id="default_claim_when_another_is_configured",
        ),
        pytest.param({"ADMIN_ROLE_CLAIM": "role"}, {"role": "admin"}, 200, id="top_level_claim"),
    ],
)
def test_require_admin(
    env: dict[str, str],
    extra: dict[str, Any],
    status: int,
    caller: Caller,
    probe: Callable[..., Result],
    setenv: Callable[..., None],
) -> None:
    setenv(**env)
    token = rs256(caller.keys, claims("user_a", **extra))
    result = probe("GET", "/api/admin/probe", bearer(token))
    if status == 200:
        assert (result.status, result.json) == (200, {"admin": "user_a"}), result.text
    else:
        assert_envelope(result, 403, "Admin access required")
    me = probe("GET", "/api/probe/me", bearer(token))
    assert me.json == {"user": "user_a", "isAdmin": status == 200}


def test_require_admin_without_a_token_is_401(probe: Callable[..., Result]) -> None:
    assert_envelope(probe("GET", "/api/admin/probe"), 401, AUTH_REQUIRED)


ORG = "org_2Z5Tgd3v6U1OeQXQ5Ijn7bqq3pK"


@pytest.mark.parametrize(
    ("extra", "org"),
    [
        pytest.param(
            {
                "v": 2,
                "fea": "o:searches,o:billing",
                "o": {"id": ORG, "rol": "member", "slg": "acme", "per": "manage", "fpm": "1,0"},
            },
            [ORG, "org:member", "acme", ["org:searches:manage"]],
            id="v2",
        ),
        pytest.param(
            {"org_id": ORG, "org_role": "org:admin", "org_permissions": ["org:billing:manage"]},
            [ORG, "org:admin", None, ["org:billing:manage"]],
            id="v1",
        ),
        pytest.param({"v": 2}, None, id="v2_no_org"),
        pytest.param({"v": 2, "o": {"id": ORG, "rol": "admin", "fpm": 3}}, None, id="malformed"),
        # v2's role has no `org:` prefix, and an `fpm` entry is a decimal integer, no spaces
        pytest.param({"v": 2, "o": {"id": ORG, "rol": "org:admin"}}, None, id="v2_prefixed_role"),
        *(
            pytest.param(
                {
                    "v": 2,
                    "fea": "o:searches",
                    "o": {"id": ORG, "rol": "member", "per": "manage", "fpm": fpm},
                },
                None,
                id=f"v2_fpm_{fpm!r}",
            )
            for fpm in (" 1", "1 ", "\t1", "1, 0")
        ),
        pytest.param({"org_id": "", "org_role": "org:admin"}, None, id="empty_id"),
    ],
)
def test_the_active_org_reaches_handlers(
    extra: dict[str, Any], org: list[Any] | None, caller: Caller, probe: Callable[..., Result]
) -> None:
    """Malformed org claims are served as the personal session, never a 500."""
    result = probe("GET", "/api/probe/org", bearer(rs256(caller.keys, claims("user_a", **extra))))
    assert (result.status, result.json) == (200, {"org": org}), result.text


# --------------------------------------------------------------------------- CSRF


@pytest.fixture
def browser(caller: Caller) -> Callable[..., Result]:
    """A signed-in browser: session and CSRF cookies; POSTs a valid saved search."""
    session = make_token(caller.keys, "user_browser")

    def post(
        *,
        origin: str | None = APP_URL,
        referer: str | None = None,
        header_token: str | None = "tok-123",
        cookie_token: str | None = "tok-123",
        extra_cookies: str = "",
        headers: dict[str, str] | None = None,
        session_cookie: bool = True,
    ) -> Result:
        cookies = [extra_cookies] if extra_cookies else []
        if session_cookie:
            cookies.append(f"__session={session}")
        if cookie_token is not None:
            cookies.append(f"csrf-token={cookie_token}")
        sent: dict[str, str] = {"cookie": "; ".join(cookies)} if cookies else {}
        if origin is not None:
            sent["origin"] = origin
        if referer is not None:
            sent["referer"] = referer
        if header_token is not None:
            sent["x-csrf-token"] = header_token
        sent.update(headers or {})
        return caller("searches", "POST", "/api/searches", json_body=SEARCH, headers=sent)

    return post


def test_cookie_authenticated_post_with_origin_and_token_passes(
    browser: Callable[..., Result],
) -> None:
    assert browser().status == 201
    assert browser(origin=OWN_ORIGIN).status == 201  # the request's own origin
    assert browser(origin=None, referer=f"{APP_URL}/dashboard?x=1").status == 201
    assert browser(origin="https://keyflash.buildproven.ai").status == 201  # product domain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"origin": None}, BAD_ORIGIN, id="no_origin_no_referer"),
        pytest.param({"origin": "https://evil.example"}, BAD_ORIGIN, id="foreign_origin"),
        pytest.param({"origin": "null"}, BAD_ORIGIN, id="null_origin"),
        pytest.param(
            {"origin": None, "referer": "https://evil.example/app.keyflash.test"},
            BAD_ORIGIN,
            id="foreign_referer",
        ),
        pytest.param({"origin": f"{APP_URL}.evil.example"}, BAD_ORIGIN, id="suffix_trick"),
        pytest.param({"header_token": None}, BAD_CSRF, id="missing_header_token"),
        pytest.param({"cookie_token": None}, BAD_CSRF, id="missing_cookie_token"),
        pytest.param({"header_token": "tok-124"}, BAD_CSRF, id="mismatched_token"),
        pytest.param({"header_token": ""}, BAD_CSRF, id="empty_header_token"),
        # compare_digest refuses str beyond ASCII (TypeError): once a 500
        pytest.param({"header_token": "tok-\u00e9"}, BAD_CSRF, id="non_ascii_header_token"),
        pytest.param({"cookie_token": "tok-\u00e9"}, BAD_CSRF, id="non_ascii_cookie_token"),
        pytest.param(
            {"headers": {"authorization": "Basic dXNlcjpwYXNz"}, "header_token": None},
            BAD_CSRF,
            id="non_bearer_authorization_does_not_exempt",
        ),
        pytest.param(
            {"headers": {"authorization": "Bearer "}, "origin": None},
            BAD_ORIGIN,
            id="empty_bearer_does_not_exempt",
        ),
    ],
)
def test_cookie_authenticated_post_refused(
    kwargs: dict[str, Any], message: str, browser: Callable[..., Result]
) -> None:
    assert_envelope(browser(**kwargs), 403, message)


MESSY_COOKIES = 'theme=dark mode; prefs={"a":1}'  # http.cookies.SimpleCookie stops at these


def test_cookies_are_read_as_the_auth_layer_reads_them(browser: Callable[..., Result]) -> None:
    """Browsers send whatever the site's other scripts set. The guard must see the same session
    and CSRF cookies as `shared.http.auth` does: else a session it cannot see skips the check."""
    assert browser(extra_cookies=MESSY_COOKIES).status == 201
    refused = browser(extra_cookies=MESSY_COOKIES, origin=None, header_token=None)
    assert_envelope(refused, 403, BAD_ORIGIN)
    mismatch = browser(extra_cookies=MESSY_COOKIES, header_token="tok-999")
    assert_envelope(mismatch, 403, BAD_CSRF)


def test_allowed_origins_are_trimmed(
    browser: Callable[..., Result], setenv: Callable[..., None]
) -> None:
    setenv(ALLOWED_ORIGINS=" https://a.example.com , https://b.example.com/ ,")
    assert browser(origin="https://a.example.com").status == 201
    assert browser(origin="https://b.example.com").status == 201
    assert_envelope(browser(origin="https://c.example.com"), 403, BAD_ORIGIN)


def test_bearer_authenticated_post_is_exempt(caller: Caller) -> None:
    token = make_token(caller.keys, "user_api")
    result = caller("searches", "POST", "/api/searches", json_body=SEARCH, headers=bearer(token))
    assert result.status == 201, result.text


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_webhooks_and_health_are_exempt_other_paths_are_not(
    method: str, probe: Callable[..., Result]
) -> None:
    """A browser with a session cookie and no Origin: refused, except under the exempt paths."""
    browser = {"cookie": "__session=anything; csrf-token=t"}
    for path in ("/api/webhooks/probe", "/api/health", "/api/health/deep"):
        result = probe(method, path, browser)
        assert (result.status, result.json) == (200, {"changed": True}), (path, result.text)
    assert_envelope(probe(method, "/api/probe", browser), 403, BAD_ORIGIN)
    assert_envelope(probe(method, "/api/webhooksx", browser), 403, BAD_ORIGIN)


def _set_cookie(result: Result) -> str | None:
    values = [v.strip() for v in result.headers.get("set-cookie", "").split(", ") if v.strip()]
    csrf = [v for v in values if v.startswith("csrf-token=")]
    assert len(csrf) <= 1, values
    return csrf[0] if csrf else None


def test_a_get_without_the_cookie_gets_a_readable_strict_csrf_cookie(caller: Caller) -> None:
    token = make_token(caller.keys, "user_a")
    result = caller("searches", "GET", "/api/searches", headers=bearer(token))
    cookie = _set_cookie(result)
    assert cookie is not None, result.headers
    value, *attributes = [part.strip() for part in cookie.split(";")]
    assert len(value.removeprefix("csrf-token=")) == 43  # 32 random bytes, base64url
    lowered = {attribute.lower() for attribute in attributes}
    assert "samesite=strict" in lowered and "path=/" in lowered and "max-age=86400" in lowered
    assert "httponly" not in lowered, "the frontend reads this cookie for the double submit"
    assert "secure" not in lowered, "Secure only in production (local http would drop it)"
    # Also on refusals (a GET that ends in 401 still arms the browser).
    assert _set_cookie(caller("searches", "GET", "/api/searches")) is not None
    # Not again while the browser has one, and never on state changes.
    again = caller(
        "searches", "GET", "/api/searches", headers={**bearer(token), "cookie": "csrf-token=abc"}
    )
    assert _set_cookie(again) is None
    posted = caller("searches", "POST", "/api/searches", json_body=SEARCH, headers=bearer(token))
    assert posted.status == 201 and _set_cookie(posted) is None


def test_the_csrf_cookie_is_secure_in_production(
    caller: Caller, setenv: Callable[..., None]
) -> None:
    setenv(APP_ENV="production", RATE_LIMIT_HMAC_SECRET=secrets.token_hex(32))
    result = caller(
        "searches", "GET", "/api/searches", headers=bearer(make_token(caller.keys, "u"))
    )
    cookie = _set_cookie(result)
    assert cookie is not None and "secure" in {p.strip().lower() for p in cookie.split(";")}


# --------------------------------------------------------------------------- CORS

CORS = {
    "access-control-allow-credentials": "true",
    "access-control-allow-methods": "GET, POST, PUT, DELETE, PATCH, OPTIONS",
    # The original's, and the consistency token a client sends back (docs/replicas.md).
    "access-control-allow-headers": (
        "Content-Type, Authorization, X-CSRF-Token, X-Requested-With, X-Consistency-Token"
    ),
    "access-control-max-age": "86400",
}


def preflight(caller: Caller, origin: str | None, path: str = "/api/searches") -> Result:
    headers = {"access-control-request-method": "POST"}
    if origin is not None:
        headers["origin"] = origin
    return caller("searches" if path == "/api/searches" else "search_item", "OPTIONS", path,
                  headers=headers)  # fmt: skip


def test_preflight_from_allowed_origins(caller: Caller, setenv: Callable[..., None]) -> None:
    setenv(ALLOWED_ORIGINS=" https://a.example.com ,https://b.example.com ")
    for origin in (APP_URL, "https://a.example.com", "https://b.example.com", OWN_ORIGIN):
        result = preflight(caller, origin)
        assert (result.status, result.json) == (200, {}), origin
        assert result.headers["access-control-allow-origin"] == origin
        for name, value in CORS.items():
            assert result.headers[name] == value, (origin, name)
    item = preflight(caller, APP_URL, "/api/searches/3f2a9c1e-8b7d-4e6f-a5c4-2d1b0e9f8a7c")
    assert item.headers["access-control-allow-origin"] == APP_URL


@pytest.mark.parametrize("origin", ["https://evil.example", "null", f"{APP_URL}:8443", None])
def test_preflight_from_elsewhere_gets_no_cors_headers(caller: Caller, origin: str | None) -> None:
    result = preflight(caller, origin)
    assert result.status == 200
    assert not {name for name in result.headers if name.startswith("access-control-")}


def test_responses_carry_cors_only_for_allowed_origins(caller: Caller) -> None:
    token = make_token(caller.keys, "user_a")
    allowed = caller(
        "searches", "GET", "/api/searches", headers={**bearer(token), "origin": APP_URL}
    )
    assert allowed.headers["access-control-allow-origin"] == APP_URL
    assert allowed.headers["vary"] == "Origin"
    refused = caller("searches", "GET", "/api/searches", headers={"origin": APP_URL})
    assert refused.status == 401 and refused.headers["access-control-allow-origin"] == APP_URL
    foreign = caller(
        "searches",
        "GET",
        "/api/searches",
        headers={**bearer(token), "origin": "https://evil.example"},
    )
    assert foreign.status == 200 and "access-control-allow-origin" not in foreign.headers


# What a frontend is told to read (docs/http-contract.md#cors-and-csrf): without this header a
# browser hides every response header but the CORS-safelisted ones from its code.
EXPOSED = {
    "API-Version", "Location", "Retry-After", "X-Consistency-Token", "X-Quota-Remaining",
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-ID",
}  # fmt: skip
FOREIGN = "https://evil.example"


def cors_of(result: Result) -> dict[str, str]:
    return {
        name: value for name, value in result.headers.items() if name.startswith("access-control-")
    }


def assert_cors_for(result: Result, origin: str) -> None:
    """The answer a browser at `origin` may read: its origin, credentials, the exposed headers."""
    cors = cors_of(result)
    assert cors.get("access-control-allow-origin") == origin, (result.status, result.headers)
    assert cors["access-control-allow-credentials"] == "true", result.headers
    exposed = {name.strip() for name in cors["access-control-expose-headers"].split(",")}
    assert exposed == EXPOSED, exposed
    assert "Origin" in [v.strip() for v in result.headers["vary"].split(",")], result.headers


def write_routes() -> list[tuple[str, str, str]]:
    """(module, method, path) of every state-changing route a browser's cookie can reach: all but
    the webhooks and health, which CSRF exempts. Path parameters get a well-formed dummy."""
    routes = []
    for module in layout.http_functions():
        app = importlib.import_module(f"functions.{module}").app
        for route in app.routes:
            if not isinstance(route, APIRoute) or not route.include_in_schema:
                continue
            if route.path.startswith(CSRF_EXEMPT_PREFIXES):
                continue
            path = re.sub(r"\{\w+\}", "x1", route.path)
            routes += [(module, method, path) for method in sorted(route.methods & STATE_CHANGING)]
    return routes


def test_a_csrf_refusal_carries_cors_for_an_allowed_origin_on_every_write_route(
    caller: Caller,
) -> None:
    """The 403 is made before the route, by the CSRF guard: a browser must still be let read it,
    else `fetch` rejects with a network error instead of the documented envelope."""
    session = {"cookie": f"__session={make_token(caller.keys, 'user_browser')}; csrf-token=t"}
    routes = write_routes()
    assert len(routes) >= 14, routes
    for module, method, path in routes:
        refused = caller(module, method, path, headers={**session, "origin": APP_URL})
        assert_envelope(refused, 403, BAD_CSRF)
        assert_cors_for(refused, APP_URL)
        foreign = caller(module, method, path, headers={**session, "origin": FOREIGN})
        assert_envelope(foreign, 403, BAD_ORIGIN)
        assert cors_of(foreign) == {}, (method, path)


def test_every_refusal_carries_cors_for_an_allowed_origin_only(
    caller: Caller, setenv: Callable[..., None]
) -> None:
    """Whichever layer refuses (the body limit, the query guard, the router, the body parser,
    the session check, the rate limiter), the allowed origin can read it and no other can."""
    setenv(RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS_PER_HOUR="1")
    token = bearer(make_token(caller.keys, "user_a"))
    address = {origin: fresh_ip() for origin in (APP_URL, FOREIGN)}
    refusals: list[tuple[int, str, str, str, dict[str, Any]]] = [
        (401, "searches", "GET", "/api/searches", {}),
        (405, "keywords", "GET", "/api/keywords", {}),
        (404, "searches", "GET", "/api/searches/", {}),
        (413, "searches", "POST", "/api/searches", {"body": b"x" * 1_000_001, "headers": token}),
        (400, "searches", "POST", "/api/searches", {"body": b"{", "headers": token}),
        (400, "history", "GET", "/api/history", {"raw_query": "limit=%ff", "headers": token}),
        (401, "keywords", "POST", "/api/keywords", {"json_body": KEYWORDS}),  # spends the budget
        (429, "keywords", "POST", "/api/keywords", {"json_body": KEYWORDS}),
    ]
    for status, module, method, path, options in refusals:
        for origin in (APP_URL, FOREIGN):
            headers = {**options.get("headers", {}), "origin": origin}
            result = caller(module, method, path, **{**options, "headers": headers},
                            source_ip=address[origin])  # fmt: skip
            assert result.status == status, (path, result.text)
            if origin == APP_URL:
                assert_cors_for(result, APP_URL)
            else:
                assert cors_of(result) == {}, (path, result.headers)


def test_the_last_resort_500_carries_cors_for_an_allowed_origin(
    probe: Callable[..., Result],
) -> None:
    failed = probe("GET", "/api/probe/boom", {"origin": APP_URL})
    assert_envelope(failed, 500, "An unexpected error occurred")
    assert_cors_for(failed, APP_URL)
    assert cors_of(probe("GET", "/api/probe/boom", {"origin": FOREIGN})) == {}


def test_the_documented_headers_of_a_429_are_exposed(
    caller: Caller, setenv: Callable[..., None]
) -> None:
    setenv(RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS_PER_HOUR="1")
    token = bearer(make_token(caller.keys, "user_exposed"))
    ask = {"json_body": KEYWORDS, "headers": {**token, "origin": APP_URL}}
    assert caller("keywords", "POST", "/api/keywords", **ask).status == 200
    refused = caller("keywords", "POST", "/api/keywords", **ask)
    assert refused.status == 429, refused.text
    sent = {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
            "x-request-id", "api-version"}  # fmt: skip
    assert sent <= set(refused.headers), refused.headers
    exposed = {
        name.strip().lower() for name in refused.headers["access-control-expose-headers"].split(",")
    }
    assert sent <= exposed


def test_cors_adds_origin_to_vary_without_dropping_the_routes_own(caller: Caller) -> None:
    """The direct export varies by Accept-Encoding too: a cache must not serve its gzip body to
    a client that did not ask for it."""
    token = bearer(make_token(caller.keys, "user_vary"))
    result = caller("me_export", "GET", "/api/me/export", headers={**token, "origin": APP_URL})
    assert result.status == 200, result.text
    assert {v.strip() for v in result.headers["vary"].split(",")} == {"Accept-Encoding", "Origin"}


# --------------------------------------------------------------------------- warm reuse


@pytest.fixture
def connection_counter() -> Iterator[list[int]]:
    """Counts DBAPI connections the container's engine opens (its `connect` events)."""
    engine = db.get_engine()
    opened: list[int] = []

    def on_connect(*_: Any) -> None:
        opened.append(1)

    event.listen(engine, "connect", on_connect)
    yield opened
    event.remove(engine, "connect", on_connect)


def _warm_calls(keys: Keys, count: int) -> None:
    from functions import searches

    token = make_token(keys, "user_warm")
    for _ in range(count):
        raw = searches.lambda_handler(
            events.http_api_v2("GET", "/api/searches", headers=bearer(token)),
            events.lambda_context("searches"),
        )
        assert raw["statusCode"] == 200, raw


def test_a_warm_container_uses_one_connection_for_100_invocations(
    api_env: Keys,
    admin_conn: psycopg.Connection[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"kf_warm_{secrets.token_hex(4)}"
    monkeypatch.setenv("DB_APPLICATION_NAME", name)
    config.get_settings.cache_clear()
    db.dispose_engine()
    engine = db.get_engine()
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))

    _warm_calls(api_env, 100)

    assert len(opened) == 1, f"{len(opened)} connections opened for 100 warm invocations"
    (sessions,) = admin_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
    ).fetchone() or (None,)
    assert sessions == 1
    (rows,) = admin_conn.execute(
        "SELECT count(*) FROM api_usage WHERE \"userId\" = 'user_warm'"
    ).fetchone() or (None,)
    assert rows == 100, "every invocation wrote its usage row over the same connection"


def test_a_warm_container_uses_one_connection_through_the_pooler(
    api_env: Keys,
    direct_database_url: str,
    pgbouncer: LocalPgBouncer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(direct_database_url)["dbname"])
    monkeypatch.setenv("DATABASE_URL", pgbouncer.url(dbname))
    config.get_settings.cache_clear()
    db.dispose_engine()
    engine = db.get_engine()
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))

    _warm_calls(api_env, 100)

    assert len(opened) == 1, f"{len(opened)} connections opened for 100 warm invocations"
