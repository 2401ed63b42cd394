"""Bad input, route by route: refused with a 4xx error envelope, never a 500 or a stack trace.

The routes are every operation in every HTTP function's own OpenAPI document (functions/*.py,
not functions/cron/), so a new route joins the matrix without being listed here; a route whose
write body has no valid example below fails `test_every_write_route_has_a_valid_body` until it
gets one. Each (route, kind of bad input) runs several probes through the Lambda handler (an API
Gateway HTTP API v2 event, the platform path) and through the app over ASGI. Every answer must:

- not be a 5xx, nor carry a traceback;
- be a status the route's OpenAPI document declares;
- when it is an error, be the envelope `{error, message, statusCode, timestamp}` (JSON);
- when the kind must be refused, be one of the kind's statuses exactly (e.g. 413, 400).

A second matrix puts SQL-injection, script and template payloads into every string field of
every write route (fields found in the route's request schema): each is refused with a 400
envelope or stored and read back byte-identical, and the schema and other users' rows are
intact afterwards. The Vercel cron entries (bare ASGI, no OpenAPI document) get their own small
matrix at the end.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text

from devkit import gateway, layout
from shared import db
from shared.http.auth import require_admin
from shared.http.guards import STATE_CHANGING
from shared.http.openapi import dependency_calls
from shared.repositories import users
from tests.support import catalog, fake_stripe
from tests.support.cron import asgi_call, configure
from tests.support.http import Caller, Keys, Result
from tests.support.s3 import mock_s3

USER = "user_bad_input"
ADMIN = "user_bad_input_admin"
CANARY = "user_bad_input_canary"
LANES = ["lambda_v2", "asgi"]
JUNK = "A" * 65_536  # 64 KiB
ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
STACK_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")

# ------------------------------------------------------------------------------------ routes


@dataclass(frozen=True)
class Route:
    """One documented operation of one function, with what its OpenAPI document says."""

    function: str
    method: str
    path: str  # the template, e.g. /api/searches/{search_id}
    operation: dict[str, Any]
    components: dict[str, Any]
    api_route: APIRoute

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def documented(self) -> frozenset[int]:
        return frozenset(int(code) for code in self.operation["responses"] if code.isdigit())

    def params(self, where: str) -> list[str]:
        return [p["name"] for p in self.operation.get("parameters", []) if p["in"] == where]

    @property
    def needs_session(self) -> bool:
        """A route that documents 401 must refuse a caller without a valid session."""
        return 401 in self.documented

    @property
    def needs_admin(self) -> bool:
        return require_admin in set(dependency_calls(self.api_route.dependant))

    @property
    def signed(self) -> bool:
        """Webhooks: the provider's signature is the check; unsigned input is always a 400."""
        return self.path.startswith("/api/webhooks/")

    @property
    def json_body(self) -> bool:
        return "requestBody" in self.operation

    def body_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.operation["requestBody"]["content"]["application/json"][
            "schema"
        ]
        return schema


def _routes() -> list[Route]:
    found = []
    for function in gateway.load_all():
        app = function.app
        spec = app.openapi()
        by_key = {
            (method, route.path_format): route
            for route in app.routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                found.append(
                    Route(
                        function.name,
                        method.upper(),
                        path,
                        operation,
                        spec.get("components", {}).get("schemas", {}),
                        by_key[(method.upper(), path)],
                    )
                )
    return sorted(found, key=lambda route: (route.path, route.method))


ROUTES = _routes()

# A valid body per write route (webhooks excepted: they need the provider's signature). The
# injection matrix replaces one string field at a time; every field the schema names must exist.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "POST /api/searches": {
        "name": "Coffee gear",
        "description": "Espresso at home",
        "searchParams": {
            "keywords": ["espresso machine", "burr grinder"],
            "matchType": "phrase",
            "location": "US",
            "language": "en",
        },
        "results": [
            {
                "keyword": "espresso machine",
                "searchVolume": 1000,
                "difficulty": 40,
                "cpc": 1.5,
                "competition": "medium",
                "intent": "commercial",
            }
        ],
    },
    "PUT /api/searches/{search_id}": {"name": "Renamed", "description": "New description"},
    "POST /api/orgs/{org_id}/searches": {
        "name": "Team coffee gear",
        "description": "Espresso for the office",
        "searchParams": {
            "keywords": ["espresso machine"],
            "matchType": "phrase",
            "location": "US",
            "language": "en",
        },
        "results": [
            {
                "keyword": "espresso machine",
                "searchVolume": 1000,
                "difficulty": 40,
                "cpc": 1.5,
                "competition": "medium",
                "intent": "commercial",
            }
        ],
    },
    "PUT /api/orgs/{org_id}/searches/{search_id}": {"name": "Renamed", "description": "New"},
    "POST /api/keywords": {
        "keywords": ["espresso"],
        "matchType": "phrase",
        "location": "US",
        "language": "en",
    },
    "POST /api/keywords/related": {"keyword": "espresso", "location": "US", "language": "en"},
    "POST /api/content-brief": {"keyword": "espresso", "location": "US", "language": "en"},
    "POST /api/admin/flags": {
        "key": "bad-input-flag",
        "description": "A flag",
        "allowedUsers": ["user_a"],
    },
    "PUT /api/admin/flags/{key}": {
        "enabled": True,
        "rolloutPercent": 5,
        "description": "A flag",
        "allowedUsers": ["user_a"],
    },
}
# Query parameters a valid request needs (the others are optional).
VALID_QUERIES: dict[str, dict[str, str]] = {
    "GET /api/admin/metrics": {"metric": "db.connections"},
    "GET /api/admin/analytics/trends": {"metric": "keyword-trends"},
}
_unique = itertools.count()


def valid_body(route: Route) -> dict[str, Any] | None:
    body = copy.deepcopy(VALID_BODIES.get(str(route)))
    if body is not None and str(route) == "POST /api/admin/flags":
        body["key"] = f"bad-input-{next(_unique)}"  # keys are unique
    return body


# ------------------------------------------------------------------------------------ probes


@dataclass(frozen=True)
class Probe:
    """One bad request. Unset parts come from the route's valid request (an existing resource
    in the path, a valid body, the caller's session), so only the named part is bad."""

    name: str
    path_value: str | None = None  # replaces every path parameter
    body: str | bytes | None = None
    json_type: bool = True  # the valid body is labelled application/json (unless `headers` is)
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] | None = None
    session: bool = True
    expect: frozenset[int] | None = None  # None: any documented non-5xx answer


def refused(*statuses: int) -> frozenset[int]:
    return frozenset(statuses)


SERVED = frozenset(range(200, 300))


def oversized(route: Route) -> list[Probe]:
    """Past the BodyLimit guard (1,000,000 bytes) on every write but the webhooks (whose limit
    is the platform's: test_stripe_webhook): 413 before anything is read further, whatever the
    body is (over ASGI by Content-Length, over Lambda by counting)."""
    if route.method not in STATE_CHANGING or route.signed:
        return []
    too_long = '{"name": "' + "a" * 1_000_000 + '"}'
    return [
        Probe("1,000,001 bytes of junk", body="x" * 1_000_001, expect=refused(413)),
        Probe("1,000,012 bytes of valid JSON", body=too_long, expect=refused(413)),
    ]


def deep_nesting(route: Route) -> list[Probe]:
    """10,000 levels of [ or { blow Python's recursive JSON parser (RecursionError); 900
    levels parse but must still fail validation. Always 400, never a 500."""
    if not route.json_body:
        return []
    bodies = {
        "10,000 [ unclosed": "[" * 10_000,
        "10,000 [ closed": "[" * 10_000 + "]" * 10_000,
        "10,000 { closed": '{"a":' * 10_000 + "1" + "}" * 10_000,
        "10,000 [ inside a field": '{"name": ' + "[" * 10_000 + "]" * 10_000 + "}",
        "900 [ inside every field": json.dumps(_nested_fields(route, depth=900)),
    }
    return [Probe(name, body=body, expect=refused(400)) for name, body in bodies.items()]


def _nested_fields(route: Route, *, depth: int) -> Any:
    body = valid_body(route) or {}
    nested: Any = "x"
    for _ in range(depth):
        nested = [nested]
    return {key: nested for key in body} or nested


def invalid_utf8(route: Route) -> list[Probe]:
    """Bytes that are not UTF-8 (and a JSON escape that is not a Unicode scalar) are not JSON
    text: 400, not a decoding error surfacing as 500. JSON between systems is UTF-8 (RFC 8259
    §8.1): the route's own valid body in UTF-16 or UTF-32, with or without a byte order mark,
    is refused too (Python's `json.loads(bytes)` would guess the encoding and accept it)."""
    if not route.json_body:
        return []
    bodies: dict[str, bytes] = {
        "0xFF 0xFE": b'{"name": "\xff\xfe"}',
        "truncated sequence": b'{"name": "\xc3"}',
        "overlong /": b'{"name": "\xc0\xaf"}',
        "UTF-16": '{"name": "x"}'.encode("utf-16"),
        "lone surrogate escape": b'{"name": "\\ud800", "keywords": ["\\udfff"], "key": "\\ud800"}',
    }
    valid = valid_body(route)
    if valid is not None and not route.signed:
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
            bodies[f"valid body in {encoding}"] = json.dumps(valid).encode(encoding)
    return [Probe(name, body=body, expect=refused(400)) for name, body in bodies.items()]


WRONG_CONTENT_TYPES = {
    "text/plain": "text/plain",
    "multipart without boundary": "multipart/form-data",
    "multipart": "multipart/form-data; boundary=xyz",
    "form": "application/x-www-form-urlencoded",
    "xml": "application/xml",
    "charset latin-1": "application/json; charset=latin-1",
}


def content_type_valid_json(route: Route) -> list[Probe]:
    """A valid JSON body under a type that is not JSON (a browser's `fetch` with a string body
    sends text/plain): every JSON route parses it whatever the type, as the original does, and
    serves it; with no Content-Type at all too. Webhooks verify a signature first: 400."""
    if not route.json_body:
        return []
    expect = refused(400) if route.signed else SERVED
    probes = [
        Probe(name, headers={"content-type": value}, expect=expect)
        for name, value in WRONG_CONTENT_TYPES.items()
        if "charset" not in name  # a JSON type: not wrong
    ]
    multipart = '--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--xyz--\r\n'
    probes.append(
        Probe(
            "real multipart body",
            body=multipart,
            headers={"content-type": WRONG_CONTENT_TYPES["multipart"]},
            expect=refused(400),
        )
    )
    probes.append(Probe("no content type", json_type=False, expect=expect))
    return probes


def content_type_invalid_json(route: Route) -> list[Probe]:
    """Invalid JSON is a 400 under every Content-Type, and with none."""
    if not route.json_body:
        return []
    types = {"application/json": "application/json", **WRONG_CONTENT_TYPES, "none": None}
    return [
        Probe(
            f"{name}: {body!r}",
            body=body,
            headers={} if value is None else {"content-type": value},
            expect=refused(400),
        )
        for name, value in types.items()
        for body in ('{"name": ', "{'name': 'x'}", "NaN")
    ]


def credentials(route: Route) -> list[Probe]:
    """64 KiB of junk where the session goes: routes that need a session answer 401 (403 for a
    cookie on a write: the CSRF check runs first); webhooks 400; public routes serve it."""
    if route.signed:
        expect: frozenset[int] | None = refused(400)
    elif route.needs_session:
        expect = refused(401, 403)
    else:
        expect = None
    headers = {
        "64 KiB bearer token": {"authorization": f"Bearer {JUNK}"},
        "64 KiB authorization": {"authorization": JUNK},
        "64 KiB session cookie": {"cookie": f"__session={JUNK}"},
        "64 KiB cookies": {"cookie": f"csrf-token={JUNK}; __session={JUNK}; junk={JUNK}"},
        "bearer with a NUL": {"authorization": "Bearer abc\x00def"},
    }
    return [
        Probe(name, headers=value, session=False, expect=expect) for name, value in headers.items()
    ]


def hostile_extras(route: Route) -> list[Probe]:
    """A valid request with hostile extras (a huge, NUL-laden User-Agent, forged proxy headers,
    unknown query parameters, a foreign Origin with a bearer token) is served as usual."""
    expect = refused(400) if route.signed else SERVED
    return [
        Probe("user agent with NUL", headers={"user-agent": "Mozilla/5.0\x00<s>"}, expect=expect),
        Probe("64 KiB user agent", headers={"user-agent": f"{JUNK}\x00<s>"}, expect=expect),
        Probe(
            "forged proxy headers",
            headers={"x-forwarded-for": "'; DROP TABLE users;--", "x-real-ip": "999.1.1.1"},
            expect=expect,
        ),
        Probe("64 KiB unknown header", headers={"x-junk": JUNK}, expect=expect),
        Probe("foreign origin", headers={"origin": "https://evil.example"}, expect=expect),
        Probe(
            "unknown query parameters",
            query={"evil": "'; DROP TABLE users;--", "__proto__": "{}", "q\x00": "\x00"},
            expect=expect,
        ),
    ]


def shifted(text: str, offset: int) -> str:
    """`text` with its ASCII letters and digits moved to another block (fullwidth: 0xFEE0)."""
    return "".join(chr(ord(c) + offset) if c.isascii() and c.isalnum() else c for c in text)


FULLWIDTH = 0xFF10 - ord("0")  # U+FF10 FULLWIDTH DIGIT ZERO, U+FF41 FULLWIDTH LATIN SMALL A
ARABIC_INDIC = 0x0660 - ord("0")
TRAVERSALS = ["..", "../", "../../me", "..%2f..%2fme", "%2e%2e%2f", "%2e%2e", "%252e%252e%252f"]
TRAVERSALS += ["..\\..\\me", "....//", "./.", "%c0%ae%c0%ae%c0%af"]
MALFORMED_IDS = [
    "\x00",
    "%00",
    "abc%00",
    "abc\nd",
    "abc%0Ad",
    "\r\n",
    " ",
    "\u202eabc",  # right-to-left override
    shifted("abc", FULLWIDTH),
    shifted("1234567890123", FULLWIDTH) + "-abcdefg",  # a legacy id in fullwidth digits
    shifted("1234567890123", ARABIC_INDIC) + "-abcdefg",  # ... in Arabic-Indic digits
    "\U0001f525\U0001f525",  # emoji
    "\u200babc",  # zero-width space
    "a" * 10_000,
    "' OR '1'='1",
    "{{7*7}}",
]


def path_traversal(route: Route) -> list[Probe]:
    """Traversal in a path id either leaves the route (404 from the router) or is a malformed
    id (400): it never reaches another resource."""
    if not route.params("path"):
        return []
    return [
        Probe(f"id {value!r}", path_value=value, expect=refused(400, 404)) for value in TRAVERSALS
    ]


# A flag key is any text a row can hold (another writer is not held to POST's rule): only what
# text cannot hold (NUL) is malformed; anything else is looked up (test_flags).
FREE_TEXT_PATHS = {"/api/admin/flags/{key}"}


def path_malformed(route: Route) -> list[Probe]:
    """Control, bidi, fullwidth, emoji, huge and quote-laden ids break the id rule: 400, before
    any lookup (a 404 would mean the malformed id was looked up)."""
    if not route.params("path"):
        return []
    free = route.path in FREE_TEXT_PATHS
    return [
        Probe(
            f"id {value[:40]!r}",
            path_value=value,
            expect=refused(400) if not free or "\x00" in unquote(value) else refused(404),
        )
        for value in MALFORMED_IDS
    ]


BAD_QUERY_VALUES = ["", "abc", "-1", "1.5", "1e3", "0x10", "99999999999999999999"]
BAD_QUERY_VALUES += [shifted("10", FULLWIDTH), shifted("10", ARABIC_INDIC)]
BAD_QUERY_VALUES += ["\x00", "%00", "' OR 1=1 --", "<script>", "9" * 10_000, "[]", "null"]
# Query parameters that take any text within their length rule (so most junk is a valid name):
# a metric name, and the flags page cursor, which is the last flag key of the previous page (any
# text but NUL is a position to page from; NUL is 400, tested in test_flags).
FREE_TEXT = {("GET /api/admin/metrics", "metric"), ("GET /api/admin/flags", "cursor")}


def query_values(route: Route) -> list[Probe]:
    """Every documented query parameter with values it cannot mean: 400. Free-text parameters
    may answer, and so may an empty value (`?bucket=` can mean "not given"), with a documented
    status."""
    probes = []
    for name in route.params("query"):
        free = (str(route), name) in FREE_TEXT
        probes += [
            Probe(
                f"{name}={value[:20]!r}",
                query={name: value},
                expect=None if free or value == "" else refused(400),
            )
            for value in BAD_QUERY_VALUES
        ]
    return probes


KINDS: dict[str, Callable[[Route], list[Probe]]] = {
    "oversized body": oversized,
    "deep nesting": deep_nesting,
    "invalid utf-8": invalid_utf8,
    "wrong content type": content_type_valid_json,
    "invalid json": content_type_invalid_json,
    "junk credentials": credentials,
    "hostile extras": hostile_extras,
    "path traversal": path_traversal,
    "malformed path id": path_malformed,
    "bad query values": query_values,
}
MATRIX = [
    pytest.param(route, kind, id=f"{route}-{kind}")
    for route in ROUTES
    for kind, probes in KINDS.items()
    if probes(route)
]

# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """Bad input is refused by the HTTP layer: the direct lane is enough here (this overrides
    conftest's two-lane fixture for this module only)."""
    return direct_database_url


@pytest.fixture
def keys(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Keys]:
    """`api_env` plus an admin, billing on and both webhook secrets (so webhooks refuse
    unsigned input with 400 rather than 503/500 for a missing configuration), checkout and the
    billing portal on a local fake of the Stripe API, an unlimited trial (so valid keyword
    searches are served, not refused by the quota) and moto's S3 for exports (an erasure
    deletes the user's stored exports)."""
    with mock_s3(monkeypatch), fake_stripe.serve() as stripe_api:
        configure(
            monkeypatch,
            ADMIN_USER_IDS=ADMIN,
            BILLING_ENABLED="true",
            STRIPE_SECRET_KEY=fake_stripe.API_KEY,
            STRIPE_PRICE_PRO=fake_stripe.PRICE,
            STRIPE_API_BASE=stripe_api.url,
            TRIAL_KEYWORD_LIMIT=1_000_000_000,
            STRIPE_WEBHOOK_SECRET="whsec_bad_input",
            CLERK_WEBHOOK_SECRET="whsec_YmFkLWlucHV0LWtleWZsYXNoLWNsZXJrLXNlY3JldA==",
        )
        yield api_env


# ----------------------------------------------------------------------------------- calling


class Client(Caller):
    """`Caller` signing each user's token once: signing parses the PEM key (~50 ms a call),
    which would otherwise be most of this module's time."""

    def __init__(self, style: str, keys: Keys) -> None:
        super().__init__(style, keys)
        self._tokens: dict[str, str] = {}

    def token(self, sub: str, **claims: Any) -> str:
        if claims:
            return super().token(sub, **claims)
        if sub not in self._tokens:
            self._tokens[sub] = super().token(sub)
        return self._tokens[sub]


@dataclass
class Target:
    """A request to `route` that would succeed: its path (with resources that exist), caller
    and body."""

    path: str
    user: str
    body: dict[str, Any] | None
    query: dict[str, str]


def prepare(route: Route, call: Caller) -> Target:
    """Create what the route's path names (a saved search, a flag) and return a valid request."""
    user = ADMIN if route.needs_admin else USER
    path = route.path
    if "{org_id}" in path:
        join_team(user)
        path = path.replace("{org_id}", TEAM)
    if "{search_id}" in path and path.startswith("/api/orgs/"):
        created = call(
            "org_searches",
            "POST",
            f"/api/orgs/{TEAM}/searches",
            user=user,
            json_body=valid_body_of("POST /api/orgs/{org_id}/searches"),
        )
        assert created.status == 201, created.text
        path = path.replace("{search_id}", created.json["search"]["id"])
    if "{search_id}" in path:
        created = call(
            "searches",
            "POST",
            "/api/searches",
            user=user,
            json_body=valid_body_of("POST /api/searches"),
        )
        assert created.status == 201, created.text
        path = path.replace("{search_id}", created.json["search"]["id"])
    if "{key}" in path:
        body = valid_body_of("POST /api/admin/flags")
        created = call("admin_flags", "POST", "/api/admin/flags", user=ADMIN, json_body=body)
        assert created.status == 201, created.text
        path = path.replace("{key}", body["key"])
    if "{export_id}" in path:
        created = call("me_export", "POST", "/api/me/export", user=user)
        assert created.status == 202, created.text
        path = path.replace("{export_id}", created.json["export"]["id"])
    if path == "/api/billing/portal":  # only a Stripe customer gets a portal session
        assert call("me", "GET", "/api/me", user=user).status == 200  # provisions the user
        db.run(lambda conn: users.update_user(conn, user, stripe_customer_id=f"cus_{user}"))
    assert "{" not in path, f"teach prepare() to create what {route} names"
    return Target(path, user, valid_body(route), dict(VALID_QUERIES.get(str(route), {})))


TEAM = "org_2badinputteam"


def join_team(user: str) -> None:
    """`user` an admin of TEAM as the Clerk webhook mirror records it (so a plain session acts
    in it: docs/organizations.md#routes-and-access); TEAM is a Stripe customer (its portal)."""
    db.run(
        lambda conn: conn.session.execute(
            text(
                """INSERT INTO organizations (id, name, "stripeCustomerId", "updatedAt")
                   VALUES (:org, :org, 'cus_' || :org, now()) ON CONFLICT DO NOTHING"""
            ),
            {"org": TEAM},
        )
    )
    db.run(
        lambda conn: conn.session.execute(
            text(
                """INSERT INTO organization_members ("organizationId", "userId", role,
                       "updatedAt") VALUES (:org, :user, 'org:admin', now())
                   ON CONFLICT DO NOTHING"""
            ),
            {"org": TEAM, "user": user},
        )
    )


def valid_body_of(route_id: str) -> dict[str, Any]:
    route = next(route for route in ROUTES if str(route) == route_id)
    body = valid_body(route)
    assert body is not None
    return body


def with_path_value(route: Route, value: str, lane: str) -> str:
    """The route's path with every parameter set to `value`: as is in the Lambda event (what
    the function receives), percent-encoded over HTTP (what a client puts on the wire; the
    server decodes it once, so an already-encoded `%2e` arrives as `.`)."""
    segment = value if lane != "asgi" else quote(value, safe="%")
    return re.sub(r"\{[^}]+\}", lambda _: segment, route.path)


def send(route: Route, probe: Probe, call: Caller, target: Target) -> Result:
    """The probe's request: the target's valid request with the probe's bad part."""
    path = (
        target.path
        if probe.path_value is None
        else with_path_value(route, probe.path_value, call.style)
    )
    body: str | bytes | None = probe.body
    headers = dict(probe.headers)
    if body is None and target.body is not None:
        body = json.dumps(target.body)
        if probe.json_type and not any(name.lower() == "content-type" for name in headers):
            headers["content-type"] = "application/json"
    return call(
        route.function,
        route.method,
        path,
        user=target.user if probe.session else None,
        body=body,
        headers=headers,
        query={**target.query, **(probe.query or {})} or None,
    )


def check(route: Route, probe: Probe, result: Result) -> None:
    """No 5xx, no traceback, a documented status, the envelope for errors, the expected
    status when the kind must be refused."""
    where = f"{route} [{probe.name}] -> {result.status}: {result.text[:300]}"
    assert result.status < 500, where
    assert not STACK_TRACE.search(result.text), where
    assert result.status in route.documented, f"undocumented status: {where}"
    if probe.expect is not None:
        expected = "2xx" if probe.expect == SERVED else sorted(probe.expect)
        assert result.status in probe.expect, f"expected {expected}: {where}"
    if result.status >= 400:
        assert_envelope(result, where)


def assert_envelope(result: Result, where: str) -> None:
    assert result.headers.get("content-type", "").startswith("application/json"), where
    body = result.json
    assert isinstance(body, dict) and body.keys() >= ENVELOPE_KEYS, where
    assert body["statusCode"] == result.status, where
    assert isinstance(body["error"], str) and isinstance(body["message"], str), where
    assert TIMESTAMP.fullmatch(body["timestamp"]), where


# --------------------------------------------------------------------------------- the matrix


def test_the_matrix_covers_every_function() -> None:
    """Every HTTP function has routes in the matrix; every route gets some kind of bad input."""
    assert {route.function for route in ROUTES} == set(layout.http_functions())
    covered = {str(param.values[0]) for param in MATRIX}
    assert covered == {str(route) for route in ROUTES}


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize(("route", "kind"), MATRIX)
def test_bad_input_is_refused_with_the_envelope(
    route: Route, kind: str, lane: str, keys: Keys
) -> None:
    """Each probe of this kind, through this lane: see the module docstring for the rules."""
    call = Client(lane, keys)
    target: Target | None = None
    for probe in KINDS[kind](route):
        target = target or prepare(route, call)
        result = send(route, probe, call, target)
        check(route, probe, result)
        if result.status < 300 and route.method != "GET":
            target = None  # served: what the path names may have changed or be gone


def test_hidden_routes_only_answer_405(keys: Keys) -> None:
    """Routes left out of the documents exist only to answer a wrong method (GET /api/keywords)
    with the 405 envelope, whatever comes with the request."""
    call = Client("lambda_v2", keys)
    hidden = [
        (function.name, method, route.path)
        for function in gateway.load_all()
        for route in function.app.routes
        if isinstance(route, APIRoute) and not route.include_in_schema
        for method in route.methods or ()
        if method != "HEAD"
    ]
    assert hidden, "no hidden routes: drop this test"
    for function, method, path in hidden:
        for headers, body in [
            ({"authorization": f"Bearer {JUNK}"}, None),
            ({"content-type": "application/json"}, "[" * 10_000),
            ({}, "x" * 1_000_001),
        ]:
            result = call(function, method, path, headers=headers, body=body, query={"q": "\x00"})
            assert result.status == 405, result.text
            assert_envelope(result, f"{method} {path}")
            assert result.json["supportedMethods"]


# --------------------------------------------------------------------- injection in the fields

PAYLOADS = [
    "'; DROP TABLE users;--",
    '" OR 1=1 --',
    "1' OR '1'='1",
    "admin'--",
    "1; SELECT pg_sleep(10)",
    "' UNION SELECT id, email FROM users --",
    "$$; DROP TABLE saved_searches; $$",
    "DROP TABLE users --",  # passes the keyword charset: stored, and must read back as sent
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "{{7*7}}",
    "${7*7}",
    "<%= 7*7 %>",
    "=cmd|' /C calc'!A0",
    "$(rm -rf /)",
    "\u0000",
    "a\u0000b",
    "%00",
    "\\u0000",
    "../../etc/passwd",
    "a\r\nSet-Cookie: pwned=1",
    "\u202egnp.exe",
    "\U0001f525\ufeffnull\u200b",  # emoji, BOM and zero-width space inside the text
    "\ud800",  # lone UTF-16 surrogates (JSON `\\ud800` escapes): not storable as UTF-8
    "a\udfffb",
    "\U0001f525\ud83d",
    "null",
]


def string_fields(schema: dict[str, Any], components: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Paths to every string in a request schema (arrays by their first item)."""
    found: list[tuple[Any, ...]] = []

    def walk(node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if "$ref" in node:
            node = components[node["$ref"].rsplit("/", 1)[-1]]
        for alternative in node.get("anyOf", []):
            walk(alternative, path)
        kind = node.get("type")
        if kind == "string" and path not in found:
            found.append(path)
        elif kind == "object":
            for name, child in node.get("properties", {}).items():
                walk(child, (*path, name))
        elif kind == "array":
            walk(node.get("items", {}), (*path, 0))

    walk(schema, ())
    return found


def at(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


def set_at(document: Any, path: tuple[Any, ...], value: Any) -> None:
    at(document, path[:-1])[path[-1]] = value


WRITE_ROUTES = [route for route in ROUTES if route.json_body and not route.signed]
INJECTION_MATRIX = [
    pytest.param(route, path, id=f"{route}-{'.'.join(map(str, path))}")
    for route in WRITE_ROUTES
    for path in string_fields(route.body_schema(), route.components)
]


def read_back(route: Route, call: Caller, target: Target, answer: Any) -> Any:
    """What the route stored, read again with a GET, in the request body's shape (what it
    echoed, for the routes that store nothing)."""
    if route.path == "/api/keywords/related":
        return {"keyword": answer["seedKeyword"]}
    if route.path == "/api/content-brief":
        return {"keyword": answer["brief"]["keyword"]}
    if route.path == "/api/keywords":
        history = call("history", "GET", "/api/history", user=target.user, query={"limit": "1"})
        return history.json["history"][0]
    if route.function in ("org_searches", "org_search_item"):
        path = (
            f"/api/orgs/{TEAM}/searches/{answer['search']['id']}"
            if route.method == "POST"
            else target.path
        )
        return call("org_search_item", "GET", path, user=target.user).json["search"]
    if route.function in ("searches", "search_item"):
        path = f"/api/searches/{answer['search']['id']}" if route.method == "POST" else target.path
        return call("search_item", "GET", path, user=target.user).json["search"]
    key = answer["flag"]["key"]
    return call("admin_flag_item", "GET", f"/api/admin/flags/{key}", user=ADMIN).json["flag"]


def forget(route: Route, call: Caller, target: Target, answer: Any) -> None:
    """Delete what a successful POST created (the 50-searches cap, unique flag keys)."""
    if route.method != "POST" or route.function in (
        "keywords",
        "keywords_related",
        "content_brief",
    ):
        return
    if route.function == "searches":
        gone = call(
            "search_item", "DELETE", f"/api/searches/{answer['search']['id']}", user=target.user
        )
    elif route.function == "org_searches":
        path = f"/api/orgs/{TEAM}/searches/{answer['search']['id']}"
        gone = call("org_search_item", "DELETE", path, user=target.user)
    else:
        key = quote(answer["flag"]["key"], safe="")
        gone = call("admin_flag_item", "DELETE", f"/api/admin/flags/{key}", user=ADMIN)
    assert gone.status == 200, gone.text


def test_every_write_route_has_a_valid_body() -> None:
    """A new write route must bring a valid body, or its fields escape the injection matrix."""
    assert {str(route) for route in WRITE_ROUTES} == set(VALID_BODIES)
    assert all(string_fields(route.body_schema(), route.components) for route in WRITE_ROUTES)


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize(("route", "path"), INJECTION_MATRIX)
def test_injection_payloads_are_refused_or_stored_verbatim(
    route: Route, path: tuple[Any, ...], lane: str, keys: Keys, direct_database_url: str
) -> None:
    """Each payload in this field: a 400 envelope, or stored and read back byte-identical.
    Queries are parameterised, so nothing runs: afterwards the schema is unchanged and another
    user's data is still there."""
    call = Client(lane, keys)
    canary = call(
        "searches",
        "POST",
        "/api/searches",
        user=CANARY,
        json_body=VALID_BODIES["POST /api/searches"],
    )
    assert canary.status == 201, canary.text
    schema_before = catalog.snapshot(direct_database_url)
    target = prepare(route, call)
    outcomes: dict[str, int] = {}
    for payload in PAYLOADS:
        body = copy.deepcopy(target.body)
        set_at(body, path, payload)
        answer = call(route.function, route.method, target.path, user=target.user, json_body=body)
        where = f"{route} {path}={payload!r} -> {answer.status}: {answer.text[:300]}"
        outcomes[payload] = answer.status
        assert not STACK_TRACE.search(answer.text), where
        if answer.status >= 400:
            assert answer.status == 400, where
            assert_envelope(answer, where)
            continue
        assert answer.status in route.documented, where
        assert at(read_back(route, call, target, answer.json), path) == payload, where
        forget(route, call, target, answer.json)
    # PostgreSQL text cannot hold NUL: validation must refuse it (it used to fail the insert).
    assert outcomes["\u0000"] == outcomes["a\u0000b"] == 400, outcomes
    assert catalog.snapshot(direct_database_url) == schema_before
    still = call("search_item", "GET", f"/api/searches/{canary.json['search']['id']}", user=CANARY)
    assert still.status == 200 and still.json == canary.json, still.text


# -------------------------------------------------------------------------- the cron entries

CRON_SECRET = "cron-secret-for-bad-input-0123456789"
CRON_PROBES: list[tuple[str, str, str, dict[str, str], int]] = [
    ("no credentials", "GET", "/api/cron/job", {}, 401),
    ("64 KiB bearer", "GET", "/api/cron/job", {"authorization": f"Bearer {JUNK}"}, 401),
    (
        "secret with a NUL",
        "GET",
        "/api/cron/job",
        {"authorization": f"Bearer {CRON_SECRET}\x00"},
        401,
    ),
    ("secret as a cookie", "GET", "/api/cron/job", {"cookie": f"__session={CRON_SECRET}"}, 401),
    ("traversal", "GET", "/api/cron/../../etc/passwd", {"cookie": JUNK}, 401),
    (
        "right secret, wrong method",
        "POST",
        "/api/cron/job",
        {"authorization": f"Bearer {CRON_SECRET}"},
        405,
    ),
]


@pytest.mark.parametrize("job", layout.cron_modules())
def test_cron_entries_refuse_bad_requests(job: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Vercel cron entry (bare ASGI, no OpenAPI document) answers anything but Vercel Cron's
    authenticated GET with the envelope (401, or 405 for another method), before any work."""
    import importlib

    # An unreachable database: a request that got past the checks would fail loudly.
    configure(
        monkeypatch, CRON_SECRET=CRON_SECRET, DATABASE_URL="postgresql://x:y@127.0.0.1:9/none"
    )
    app = importlib.import_module(f"{layout.FUNCTIONS_PACKAGE}.{layout.CRON_PACKAGE}.{job}").app
    for name, method, path, headers, status in CRON_PROBES:
        response = asgi_call(app, method, path, headers=headers, query="full=%00")
        text = response.body.decode()
        where = f"{job} [{name}] -> {response.status}: {text[:200]}"
        assert response.status == status, where
        assert not STACK_TRACE.search(text), where
        body = response.json()
        assert body.keys() >= ENVELOPE_KEYS and body["statusCode"] == status, where
