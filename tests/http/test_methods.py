"""HEAD, OPTIONS and a method no route serves, on every path of every function
(docs/http-contract.md#methods), in the three invocation styles.

Deployed, every method of a path reaches its function (serverless.yml `method: '*'`, vercel.json
routes without `methods`: tests/structure/test_descriptors.py), so the function answers each one
itself: HEAD as the GET it stands for without the body (RFC 9110 §9.3.2; the original's Next.js
route handlers did the same), OPTIONS with `Allow`, anything else the 405 envelope with `Allow`.
The paths and their methods come from the apps (`devkit.gateway`), so a new route is covered.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from fastapi.routing import APIRoute

from devkit import gateway
from tests.support.http import Caller, Result

USER = "user_methods"
SAMPLES = {"org_id": "org_methods", "key": "methods-flag"}  # any other parameter is an id
SAMPLE_ID = "3f2a9c1e-8b7d-4e6f-a5c4-2d1b0e9f8a7c"
ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}
# Headers whose value is made per response (or counts the requests); every other one has the
# same value for HEAD as for GET, and HEAD has the same headers.
PER_RESPONSE = {"x-request-id", "set-cookie", "content-length", "date", "x-ratelimit-remaining",
                "x-ratelimit-reset"}  # fmt: skip


def _paths() -> dict[str, tuple[str, list[str]]]:
    """Path template → (function, the methods its documented routes serve, sorted). A hidden
    route (`GET /api/keywords`) exists only to answer its own 405, so it serves nothing."""
    found: dict[str, tuple[str, set[str]]] = {}
    for function in gateway.load_all():
        for route in function.app.routes:
            if isinstance(route, APIRoute):
                _, methods = found.setdefault(route.path, (function.name, set()))
                if route.include_in_schema:
                    methods.update(route.methods or ())
    return {path: (name, sorted(methods)) for path, (name, methods) in sorted(found.items())}


PATHS = _paths()
GET_PATHS = [path for path, (_, methods) in PATHS.items() if "GET" in methods]


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES.get(m[1], SAMPLE_ID), template)


def allow(methods: list[str]) -> str:
    """The route's methods, HEAD where GET is one, and OPTIONS, which every path answers."""
    return ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else []), "OPTIONS"}))


def same_headers(head: Result, get: Result) -> dict[str, Any]:
    return {
        "head": {k: v for k, v in head.headers.items() if k not in PER_RESPONSE},
        "get": {k: v for k, v in get.headers.items() if k not in PER_RESPONSE},
    }


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Methods are answered before any query: the direct lane is enough."""
    return direct_database_url


def test_every_path_is_probed() -> None:
    assert len(GET_PATHS) >= 18 and "/api/health" in GET_PATHS
    assert PATHS["/api/keywords"] == ("keywords", ["POST"])


@pytest.mark.parametrize("template", GET_PATHS)
def test_head_answers_as_get_without_the_body(call: Caller, template: str) -> None:
    """Signed in and anonymous: GET's status and headers (Content-Length is GET's), no body."""
    function, _ = PATHS[template]
    path = concrete(template)
    for user in (USER, None):
        get = call(function, "GET", path, user=user)
        head = call(function, "HEAD", path, user=user)
        assert (head.status, head.raw) == (get.status, b""), (user, head.status, head.text[:200])
        assert set(head.headers) == set(get.headers), (user, head.headers, get.headers)
        headers = same_headers(head, get)
        assert headers["head"] == headers["get"], (user, headers)


@pytest.mark.parametrize("template", list(PATHS))
def test_options_and_a_wrong_method_name_every_method_of_the_path(
    call: Caller, template: str
) -> None:
    function, methods = PATHS[template]
    path = concrete(template)
    options = call(function, "OPTIONS", path)
    assert (options.status, options.json) == (200, {}), options.text
    assert options.headers["allow"] == allow(methods)
    wrong = call(function, "PATCH", path, user=USER)
    assert wrong.status == 405, wrong.text
    assert set(wrong.json) == ENVELOPE_KEYS | {"supportedMethods"}
    assert wrong.json["supportedMethods"] == methods  # the original's list: ["POST"] on keywords
    assert wrong.headers["allow"] == allow(methods)


@pytest.mark.parametrize(
    ("function", "path"),
    [
        ("keywords", "/api/keywords"),  # a hidden GET route: the original's 405 message
        ("content_brief", "/api/content-brief"),
        ("checkout", "/api/checkout"),  # POST only: the router's 405
        ("webhooks_stripe", "/api/webhooks/stripe"),
    ],
)
def test_head_where_no_get_is_served_is_the_405_without_the_body(
    call: Caller, function: str, path: str
) -> None:
    get = call(function, "GET", path, user=USER)
    head = call(function, "HEAD", path, user=USER)
    assert (get.status, head.status, head.raw) == (405, 405, b"")
    assert head.headers["allow"] == get.headers["allow"] == "OPTIONS, POST"


def test_a_head_with_the_session_cookie_is_safe_from_csrf_and_gets_the_token(call: Caller) -> None:
    """HEAD is a safe method: no CSRF token needed; like a GET it arms the browser's cookie."""
    head = call(
        "searches", "HEAD", "/api/searches", headers={"cookie": f"__session={call.token(USER)}"}
    )
    assert (head.status, head.raw) == (200, b"")
    assert "csrf-token=" in head.headers.get("set-cookie", "")


def test_a_head_is_recorded_as_the_get_it_ran(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """One usage row, as for the GET it stands for (the method column says GET), no other."""
    call("searches", "HEAD", "/api/searches", user=USER)
    rows = admin_conn.execute(
        'SELECT endpoint, method, "statusCode", "userId" FROM api_usage'
    ).fetchall()
    assert rows == [("/api/searches", "GET", 200, USER)]


def test_a_404s_stored_path_has_its_email_segments_masked(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """A path no route serves is stored as sent, but for a segment holding an `@` (an email):
    `…`, as the dev log shows it. A row without a session could never be erased."""
    assert call("me", "GET", "/api/me/pat.doe@example.com/x", user=USER).status == 404
    rows = admin_conn.execute('SELECT endpoint, "statusCode" FROM api_usage').fetchall()
    assert rows == [("/api/me/…/x", 404)]


def test_options_on_a_path_no_route_serves_is_the_404(call: Caller) -> None:
    """No methods to name in `Allow`: the path is not the function's (a trailing slash is none)."""
    result = call("searches", "OPTIONS", "/api/searches/")
    assert (result.status, result.json["message"]) == (404, "Not found"), result.text
