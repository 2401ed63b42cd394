"""The input rules every JSON route shares (docs/http-contract.md), in three invocation styles,
both lanes: any Content-Type, UTF-8 only, and stored strings that PostgreSQL can hold."""

from __future__ import annotations

import gzip
import importlib
import itertools
import json
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.support.http import Caller, Keys

ADMIN = "user_contract_admin"
SEARCH = {
    "name": "Coffee gear",
    "searchParams": {"keywords": ["espresso machine"], "matchType": "phrase", "location": "US"},
}
KEYWORDS = {"keywords": ["espresso machine"], "matchType": "phrase", "location": "US"}
FLAG = {"key": "contract-flag", "enabled": True, "description": "A flag"}


@pytest.fixture
def admin(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> str:
    from shared import config

    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    return ADMIN


def raw(call: Caller, module: str, method: str, path: str, body: bytes, content_type: str | None,
        user: str = "user_a") -> Any:  # fmt: skip
    headers = {} if content_type is None else {"content-type": content_type}
    return call(module, method, path, user=user, body=body, headers=headers)


def search_path(call: Caller) -> str:
    created = call("searches", "POST", "/api/searches", user="user_a", json_body=SEARCH)
    assert created.status == 201, created.text
    return f"/api/searches/{created.json['search']['id']}"


# --- Content-Type ------------------------------------------------------------------------------

BROWSER_TYPES = ["text/plain;charset=UTF-8", "text/plain", "application/x-www-form-urlencoded",
                 "application/octet-stream", None]  # fmt: skip


@pytest.mark.parametrize("content_type", BROWSER_TYPES)
def test_valid_json_is_parsed_whatever_the_content_type_on_every_json_route(
    call: Caller, admin: str, content_type: str | None
) -> None:
    body = json.dumps(SEARCH).encode()
    created = raw(call, "searches", "POST", "/api/searches", body, content_type)
    assert (created.status, created.json["search"]["name"]) == (201, "Coffee gear"), created.text
    path = f"/api/searches/{created.json['search']['id']}"
    renamed = raw(call, "search_item", "PUT", path, b'{"name": "Renamed"}', content_type)
    assert (renamed.status, renamed.json["search"]["name"]) == (200, "Renamed"), renamed.text
    found = raw(call, "keywords", "POST", "/api/keywords", json.dumps(KEYWORDS).encode(),
                content_type)  # fmt: skip
    assert found.status == 200, found.text
    flag = raw(call, "admin_flags", "POST", "/api/admin/flags", json.dumps(FLAG).encode(),
               content_type, user=admin)  # fmt: skip
    assert (flag.status, flag.json["flag"]["enabled"]) == (201, True), flag.text
    changed = raw(call, "admin_flag_item", "PUT", "/api/admin/flags/contract-flag",
                  b'{"rolloutPercent": 40}', content_type, user=admin)  # fmt: skip
    assert (changed.status, changed.json["flag"]["rolloutPercent"]) == (200, 40), changed.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": ',
        b"{'name': 'x'}",
        b"NaN-ish",
        b"\xff",
        # Python's parser takes these; JSON has no such literals, and 1e400 is past a double
        # (JS reads Infinity, which no JSON column stores: it was a 500 on saving a search).
        b'{"name": NaN}',
        b'{"name": "x", "extra": -Infinity}',
        b'{"name": "x", "results": [{"keyword": "a", "cpc": 1e400}]}',
        b'{"name": "x", "extra": -1%s}' % (b"0" * 4300),  # past Python's 4,300-digit int limit
    ],
)
def test_invalid_json_is_the_original_400_whatever_the_content_type(
    call: Caller, admin: str, body: bytes
) -> None:
    path = search_path(call)
    for (module, method, route, user), content_type in itertools.product(
        (
            ("searches", "POST", "/api/searches", "user_a"),
            ("search_item", "PUT", path, "user_a"),
            ("keywords", "POST", "/api/keywords", "user_a"),
            ("admin_flags", "POST", "/api/admin/flags", admin),
            ("admin_flag_item", "PUT", "/api/admin/flags/any-flag", admin),
        ),
        [*BROWSER_TYPES, "application/json"],
    ):
        result = raw(call, module, method, route, body, content_type, user=user)
        assert result.status == 400, (route, result.text)
        assert (result.json["error"], result.json["message"]) == (
            "Client Error",
            "Invalid JSON payload",
        ), route


def test_a_body_that_is_not_an_object_gets_no_pydantic_default_message(call: Caller) -> None:
    """A JSON array or string under text/plain used to reach pydantic as raw bytes ("Input
    should be a valid dictionary…"); now it is JSON, refused by the route's own rules."""
    for body in (b"[]", b'"just text"', b"42"):
        result = raw(call, "searches", "POST", "/api/searches", body, "text/plain")
        assert result.status == 400
        assert result.json["error"] == "Validation Error"
        assert result.json["message"] == "Request body must be a JSON object"


# --- UTF-8 only --------------------------------------------------------------------------------

ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def test_json_that_is_not_utf8_is_refused_as_invalid_json(call: Caller, admin: str) -> None:
    for (module, path, body, user), encoding in itertools.product(
        (
            ("keywords", "/api/keywords", KEYWORDS, "user_a"),
            ("searches", "/api/searches", SEARCH, "user_a"),
            ("admin_flags", "/api/admin/flags", FLAG, admin),
        ),
        ENCODINGS,
    ):
        encoded = json.dumps(body).encode(encoding)
        result = raw(call, module, "POST", path, encoded, "application/json", user=user)
        assert (result.status, result.json["message"]) == (400, "Invalid JSON payload"), (
            path,
            encoding,
        )
    listed = call("searches", "GET", "/api/searches", user="user_a").json["searches"]
    assert listed == []


def test_a_utf8_byte_order_mark_is_ignored_as_fetch_does(call: Caller) -> None:
    body = b"\xef\xbb\xbf" + json.dumps(SEARCH).encode()
    result = raw(call, "searches", "POST", "/api/searches", body, "application/json")
    assert result.status == 201, result.text


def test_an_empty_or_blank_body_is_an_empty_object(call: Caller, admin: str) -> None:
    """The original's rule for an empty body, also for ASCII whitespace alone."""
    for body in (b"", b" ", b"\r\n\t \x0b\x0c"):
        result = raw(call, "admin_flags", "POST", "/api/admin/flags", body, None, user=admin)
        assert (result.status, result.json["message"]) == (400, "key is required"), body


# --- Content-Encoding --------------------------------------------------------------------------

CODINGS = ["gzip", "br", "deflate", "x-unknown", "identity, gzip", "GZIP", "gzip;q=1"]
NOT_DECODED = "Unsupported Content-Encoding: send the body without one (identity)"


def test_a_write_in_a_content_coding_is_refused_415(call: Caller, admin: str) -> None:
    """RFC 9110 §8.4, §15.5.16: a coding we do not decode (none: a gzip body could be a
    decompression bomb) is a 415 naming `Accept-Encoding: identity`; its bytes were read as
    identity before (gzip: 400 `Invalid JSON payload`; plain JSON so labelled: accepted)."""
    path = search_path(call)
    plain = b'{"name": "Renamed"}'
    probes = [("gzip", gzip.compress(plain)), *((coding, plain) for coding in CODINGS)]
    for coding, body in probes:
        for module, method, route, user in (
            ("search_item", "PUT", path, "user_a"),
            ("search_item", "DELETE", path, "user_a"),
            ("admin_flags", "POST", "/api/admin/flags", admin),
            ("webhooks_stripe", "POST", "/api/webhooks/stripe", None),
        ):
            headers = {"content-type": "application/json", "content-encoding": coding}
            result = call(module, method, route, user=user, body=body, headers=headers)
            assert (result.status, result.json["message"]) == (415, NOT_DECODED), (
                coding,
                route,
                result.text,
            )
            assert result.headers["accept-encoding"] == "identity"
    unchanged = call("search_item", "GET", path, user="user_a")
    assert (unchanged.status, unchanged.json["search"]["name"]) == (200, "Coffee gear")
    for coding in ("identity", "", " , IDENTITY"):
        headers = {"content-type": "application/json", "content-encoding": coding}
        renamed = call("search_item", "PUT", path, user="user_a", body=plain, headers=headers)
        assert (renamed.status, renamed.json["search"]["name"]) == (200, "Renamed"), coding
    anything = {"content-encoding": "gzip"}
    assert call("search_item", "GET", path, user="user_a", headers=anything).status == 200


# --- stored strings ----------------------------------------------------------------------------

SURROGATES = ["\ud800", "x\udfff", "\U0001f525\ud83d"]  # lone high, lone low, a broken pair


def test_lone_surrogates_are_refused_naming_the_field_on_every_route(
    call: Caller, admin: str
) -> None:
    path = search_path(call)
    assert call("admin_flags", "POST", "/api/admin/flags", user=admin, json_body=FLAG).status == 201
    for surrogate in SURROGATES:
        refuse_everywhere(call, admin, path, surrogate)
    flag = call("admin_flag_item", "GET", "/api/admin/flags/contract-flag", user=admin).json
    assert flag["flag"]["description"] == "A flag"  # nothing was changed


def refuse_everywhere(call: Caller, admin: str, path: str, surrogate: str) -> None:
    cases: list[tuple[str, str, str, dict[str, Any], str, str]] = [
        ("admin_flags", "POST", "/api/admin/flags", {**FLAG, "description": surrogate},
         admin, "description"),
        ("admin_flags", "POST", "/api/admin/flags", {**FLAG, "allowedUsers": ["u1", surrogate]},
         admin, "allowedUsers"),
        ("admin_flag_item", "PUT", "/api/admin/flags/contract-flag", {"description": surrogate},
         admin, "description"),
        ("admin_flag_item", "PUT", "/api/admin/flags/contract-flag",
         {"allowedUsers": [surrogate]}, admin, "allowedUsers"),
        ("searches", "POST", "/api/searches", {**SEARCH, "name": surrogate}, "user_a", "name"),
        ("searches", "POST", "/api/searches", {**SEARCH, "description": surrogate}, "user_a",
         "description"),
        ("search_item", "PUT", path, {"name": surrogate}, "user_a", "name"),
    ]  # fmt: skip
    for module, method, route, body, user, field in cases:
        result = call(module, method, route, user=user, json_body=body)
        assert result.status == 400, (route, field, result.text)
        assert result.json["message"] == (
            f"{field} cannot contain unpaired UTF-16 surrogates (\\ud800-\\udfff)"
        ), (route, field)


def test_a_valid_surrogate_pair_is_one_character_and_is_stored(call: Caller) -> None:
    body = b'{"name": "hot \\ud83d\\udd25", "searchParams": {"keywords": ["espresso"],' \
        b' "matchType": "exact", "location": "US"}}'  # fmt: skip
    created = raw(call, "searches", "POST", "/api/searches", body, "application/json")
    assert (created.status, created.json["search"]["name"]) == (201, "hot \U0001f525")


def test_huge_strings_get_the_original_too_long_messages_not_pydantic_defaults(
    call: Caller,
) -> None:
    """The original says "Name too long (max 100 chars)" for a name of any length over 100;
    a pre-check on length must not answer a 20,000-character name with pydantic's wording."""
    huge = "a" * 20_000
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("searches", "/api/searches", {**SEARCH, "name": huge}, "Name too long (max 100 chars)"),
        ("searches", "/api/searches", {**SEARCH, "description": huge}, "Description too long"),
        ("searches", "/api/searches",
         {**SEARCH, "searchParams": {**SEARCH["searchParams"], "keywords": [huge]}},  # type: ignore[dict-item]
         "Keyword too long (max 100 chars)"),
        ("keywords", "/api/keywords", {**KEYWORDS, "keywords": [huge]},
         "Keyword too long (max 100 chars)"),
    ]  # fmt: skip
    for module, path, body, message in cases:
        result = call(module, "POST", path, user="user_a", json_body=body)
        assert (result.status, result.json["message"]) == (400, message), path
    renamed = call("search_item", "PUT", search_path(call), user="user_a", json_body={"name": huge})
    assert (renamed.status, renamed.json["message"]) == (400, "Name too long")


# --- Query strings ------------------------------------------------------------------------------

NOT_UTF8_QUERIES = [
    "metric=%ED%A0%80",  # an encoded lone surrogate
    "metric=%FF",
    "metric=caf%C3",  # a sequence cut short
    "limit=1&x=%C0%AE",  # an overlong encoding, in a parameter the route ignores
]


@pytest.mark.parametrize("style", ["lambda_v2", "asgi"])
def test_a_query_string_that_is_not_utf8_is_refused(
    style: str, api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded with U+FFFD it would name a value never sent (it was a 200 for a metric `\ufffd`).
    REST v1 events carry only decoded values, so only the raw query styles are probed."""
    from shared import config

    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    call = Caller(style, api_env)
    admin = ADMIN
    routes = [
        ("admin_metrics", "/api/admin/metrics", admin),
        ("history", "/api/history", "user_a"),
        ("health", "/api/health", None),
    ]
    for (module, path, user), query in itertools.product(routes, NOT_UTF8_QUERIES):
        result = call(module, "GET", path, user=user, raw_query=query)
        assert (result.status, result.json["message"]) == (
            400,
            "Invalid query string: not UTF-8",
        ), (path, query, result.text)
    fine = call(
        "admin_metrics", "GET", "/api/admin/metrics", user=admin, raw_query="metric=caf%C3%A9"
    )
    assert (fine.status, fine.json["metric"]) == (200, "café"), fine.text


# --- Paths --------------------------------------------------------------------------------------

NOT_UTF8_SEGMENTS = ["%FF", "%ED%A0%80", "caf%C3", "%C0%AE"]  # as in NOT_UTF8_QUERIES
REPLACED = "flag-\ufffd"  # what U+FFFD decoding made of every segment above: a key a row may hold


@pytest.mark.parametrize("style", ["lambda_url", "lambda_v1", "asgi"])
def test_a_path_that_is_not_utf8_is_refused_before_any_lookup(
    style: str, api_env: Keys, admin: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """Decoded with U+FFFD, `/api/admin/flags/flag-%FF` named the flag `flag-\ufffd`: GET read
    it and DELETE deleted it; `%ED%A0%80` was a 404. The same 400 on every route, before any
    lookup; U+FFFD itself, sent as UTF-8, is still a key like any other. Every source that
    hands the function the path's escapes: an HTTP API decodes them before the function runs."""
    call = Caller(style, api_env)
    admin_conn.execute(
        'INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers", '
        "\"updatedAt\") VALUES ('cfffd', %s, true, 0, '{}', now())",
        (REPLACED,),
    )
    probes = [
        ("admin_flag_item", method, f"/api/admin/flags/flag-{segment}", admin)
        for segment, method in itertools.product(NOT_UTF8_SEGMENTS, ["GET", "PUT", "DELETE"])
    ]
    probes += [("search_item", "GET", f"/api/searches/{s}", "user_a") for s in NOT_UTF8_SEGMENTS]
    probes += [("health", "GET", "/api/health%FF", None), ("me", "GET", "/api/me%FF", "user_a")]
    for module, method, path, user in probes:
        body = {"enabled": False} if method == "PUT" else None
        result = call(module, method, path, user=user, json_body=body)
        assert (result.status, result.json["message"]) == (400, "Invalid path: not UTF-8"), (
            method,
            path,
            result.text,
        )
    row = admin_conn.execute("SELECT enabled FROM feature_flags WHERE key = %s", (REPLACED,))
    assert row.fetchall() == [(True,)], "the flag was changed or deleted"
    named = call("admin_flag_item", "GET", f"/api/admin/flags/{quote(REPLACED)}", user=admin)
    assert (named.status, named.json["flag"]["key"]) == (200, REPLACED), named.text


ESCAPED_SEGMENTS = {  # a path segment as sent: the flag key it names, decoded once
    "x%2541": "x%41",
    "x%41": "xA",
    "xA": "xA",
    "100%25": "100%",
    "a%20b": "a b",
    "caf%C3%A9": "café",
    "caf%25C3%25A9": "caf%C3%A9",
    "x%253F": "x%3F",
}


@pytest.mark.parametrize("style", ["lambda_v2", "lambda_url", "lambda_v1", "asgi"])
def test_a_path_is_percent_decoded_once_from_every_event_source(
    style: str, api_env: Keys, admin: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """An HTTP API and a function URL hand Lambda `requestContext.http.path` decoded already;
    Mangum decoded it again, so `/api/admin/flags/x%2541` named the flag `xA`, not `x%41`, and
    PUT changed the other row. Each URL addresses its own row, whichever source delivers it."""
    for number, key in enumerate(sorted(set(ESCAPED_SEGMENTS.values()))):
        admin_conn.execute(
            'INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers", '
            "\"updatedAt\") VALUES (%s, %s, true, 0, '{}', now())",
            (f"cesc{number}", key),
        )
    call = Caller(style, api_env)
    for segment, key in ESCAPED_SEGMENTS.items():
        found = call("admin_flag_item", "GET", f"/api/admin/flags/{segment}", user=admin)
        assert (found.status, found.json.get("flag", {}).get("key")) == (200, key), (
            segment,
            found.text,
        )
    changed = call("admin_flag_item", "PUT", "/api/admin/flags/x%2541", user=admin,
                   json_body={"enabled": False})  # fmt: skip
    assert (changed.status, changed.json["flag"]["key"]) == (200, "x%41"), changed.text
    deleted = call("admin_flag_item", "DELETE", "/api/admin/flags/100%25", user=admin)
    assert deleted.status == 200, deleted.text
    rows = admin_conn.execute("SELECT key, enabled FROM feature_flags WHERE id LIKE 'cesc%'")
    expected = {key: key != "x%41" for key in ESCAPED_SEGMENTS.values() if key != "100%"}
    assert dict(rows.fetchall()) == expected


# --- whole-number query parameters ------------------------------------------------------------

# (function, path, parameter, minimum, maximum, default): the documented ranges
# (http-contract.md's routes, flags-and-admin.md's analytics).
WHOLE_NUMBERS = [
    ("history", "/api/history", "limit", 1, 100, 20),
    ("history_stats", "/api/history/stats", "days", 1, 365, 30),
    ("admin_analytics", "/api/admin/analytics", "days", 1, 90, 7),
]


@pytest.mark.parametrize(("module", "path", "name", "low", "high", "default"), WHOLE_NUMBERS)
def test_whole_number_query_parameters_are_documented_as_integers(
    module: str, path: str, name: str, low: int, high: int, default: int
) -> None:
    """Typed `string` they made the TypeScript client refuse `{ limit: 20 }` and accept
    `{ limit: "twenty" }`."""
    app = importlib.import_module(f"functions.{module}").app
    parameters = app.openapi()["paths"][path]["get"]["parameters"]
    [parameter] = [p for p in parameters if p["name"] == name]
    assert parameter["in"] == "query" and parameter["required"] is False
    assert parameter["schema"] == {
        "type": "integer",
        "minimum": low,
        "maximum": high,
        "default": default,
    }


def whole_number_answers(name: str, low: int, high: int) -> list[tuple[str, int]]:
    """Raw query strings and the status each gets: the text rule the routes apply (ASCII digits,
    at most 6, surrounding spaces ignored, within the range; the last of repeated values)."""
    return [
        (f"{name}={low}", 200),
        (f"{name}={high}", 200),
        (f"{name}=%20{low}%20", 200),
        (f"{name}=0{low}", 200),
        (f"{name}=abc&{name}={low}", 200),
        (f"{name}={low}&{name}=abc", 400),
        (f"{name}=", 400),
        (f"{name}=abc", 400),
        (f"{name}=1.5", 400),
        (f"{name}=-1", 400),
        (f"{name}=%2B1", 400),
        (f"{name}=1e2", 400),
        (f"{name}=0", 400),
        (f"{name}={high + 1}", 400),
        (f"{name}=0000001", 400),
        (f"{name}={'9' * 30}", 400),
        (f"{name}=%D9%A3", 400),  # an Arabic-Indic 3: int() would read it
    ]


@pytest.mark.parametrize("style", ["lambda_v2", "asgi"])
def test_whole_number_query_parameters_are_read_as_text_with_the_envelope_400(
    style: str, api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documented as integers, still read by the routes' own rule, not FastAPI's (a 422).
    REST v1 events carry no repeated values, so only the raw query styles are probed."""
    from shared import config

    monkeypatch.setenv("ADMIN_USER_IDS", ADMIN)
    config.get_settings.cache_clear()
    call = Caller(style, api_env)
    for module, path, name, low, high, _ in WHOLE_NUMBERS:
        for query, status in whole_number_answers(name, low, high):
            result = call(module, "GET", path, user=ADMIN, raw_query=query)
            assert result.status == status, (path, query, result.text)
            if status == 400:
                assert result.json["error"] == "Validation Error", (path, query, result.text)
                assert result.json["message"] == (
                    f"{name} must be a whole number from {low} to {high}"
                ), (path, query, result.text)
