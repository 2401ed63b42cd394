"""Defects at the HTTP edge found by an outside test (report t1): each test here failed before
its fix. Through the Caller, so the platforms' payload limits apply as deployed."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
from typing import Any

import pytest

from devkit import events
from shared.http.app import validation_message
from shared.http.security_headers import SECURITY_HEADERS
from tests.support.http import Caller, Keys, make_token

ENVELOPE_KEYS = {"error", "message", "statusCode", "timestamp"}
NOT_HTTP = "Not an HTTP event: this function answers API Gateway, function URL and ALB requests"
REPEATED_AUTHORIZATION = "Send one Authorization header: this request has several"
REPEATED_ORIGIN = "Send one Origin header: this request has several"
DAYS_OUT_OF_RANGE = "days must be a whole number from 1 to 365"


def _validation_400(result: Any) -> str:
    assert result.status == 400, (result.status, result.text[:300])
    assert set(result.json) == ENVELOPE_KEYS and result.json["error"] == "Validation Error"
    message: str = result.json["message"]
    return message


# --- finding 2: a small invalid body must not make a multi-megabyte 400 -----------------------


def test_many_invalid_keywords_get_a_short_validation_message(call: Caller) -> None:
    """150,000 invalid items (300 KB, no sign-in needed) made a 7.2 MB 400: a platform 500."""
    body = {"keywords": [1] * 150_000, "matchType": "phrase"}
    result = call("keywords", "POST", "/api/keywords", json_body=body)
    message = _validation_400(result)
    assert len(result.raw) < 4_000
    shown = ", ".join(f"keywords.{i}: Input should be a valid string" for i in range(10))
    assert message == f"{shown}, and 149990 more"


def test_many_invalid_saved_results_get_a_short_validation_message(call: Caller) -> None:
    body = {
        "name": "n",
        "searchParams": {"keywords": ["x"], "matchType": "phrase", "location": "US"},
        "results": [{}] * 20_000,
    }
    result = call("searches", "POST", "/api/searches", user="user_edges", json_body=body)
    message = _validation_400(result)
    assert len(result.raw) < 4_000
    assert message.startswith("results.0.keyword: Field required, ")
    assert message.endswith(f", and {20_000 * 5 - 10} more")  # keyword and the four metrics


def test_the_validation_message_keeps_the_original_format_below_the_cap() -> None:
    custom = [{"type": "kf_x", "msg": "Keyword cannot be empty", "loc": ("keywords", i)}
              for i in range(50)]  # fmt: skip
    issues = [*custom, {"type": "missing", "msg": "Field required", "loc": ("body", "matchType")}]
    assert validation_message(issues) == "Keyword cannot be empty, matchType: Field required"
    many = [{"type": "kf_x", "msg": f"m{i}", "loc": ()} for i in range(12)]
    assert validation_message(many * 3) == ", ".join(f"m{i}" for i in range(10)) + ", and 2 more"


# --- finding 4: every Lambda event shape gets an answer in the envelope -----------------------


def _invoke(module: str, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """`functions.<module>.lambda_handler(event)` as Lambda runs it: (status, headers, body)."""
    loaded = importlib.import_module(f"functions.{module}")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        raw = loaded.lambda_handler(event, events.lambda_context(module))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
    for name, values in (raw.get("multiValueHeaders") or {}).items():
        headers[name.lower()] = ", ".join(values)
    text = raw.get("body") or ""
    if raw.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return raw["statusCode"], headers, json.loads(text)


def _envelope(answer: tuple[int, dict[str, str], Any], status: int, message: str) -> None:
    code, headers, body = answer
    assert (code, body.get("message")) == (status, message), answer
    assert set(body) == ENVELOPE_KEYS and headers["x-request-id"].startswith("req_")


def _alb(method: str, path: str, *, multi_value: bool) -> dict[str, Any]:
    """An Application Load Balancer event (AWS's sample; Mangum routes it too), with or without
    the target group's multi-value headers."""
    headers = {"content-type": "application/json", "x-forwarded-for": "203.0.113.7"}
    event: dict[str, Any] = {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:"
                                   "123456789012:targetgroup/keyflash/0123456789abcdef"}},
        "httpMethod": method, "path": path, "body": "", "isBase64Encoded": False,
    }  # fmt: skip
    if multi_value:
        event.update(
            multiValueHeaders={k: [v] for k, v in headers.items()},
            multiValueQueryStringParameters={},
        )
    else:
        event.update(headers=headers, queryStringParameters={})
    return event


def _post_event(style: str) -> dict[str, Any]:
    if style.startswith("alb"):
        return _alb("POST", "/api/keywords", multi_value=style == "alb_multi_value")
    build = events.http_api_v2 if style == "v2" else events.rest_api_v1
    return build("POST", "/api/keywords", body="{}")


@pytest.mark.parametrize("style", ["v2", "v1", "alb", "alb_multi_value"])
@pytest.mark.parametrize("body", ["eyJrZXl3b3Jkcw", "abc", "%%%", "e30=\n", "e30=!!"])
def test_a_body_that_is_not_base64_is_invalid_json(api_env: Keys, style: str, body: str) -> None:
    """s45t2 F5: an ALB event's `%%%` was decoded to an empty body and `e30=!!` to `{}`."""
    event = _post_event(style)
    event.update(body=body, isBase64Encoded=True)
    _envelope(_invoke("keywords", event), 400, "Invalid JSON payload")


@pytest.mark.parametrize("style", ["v2", "v1", "alb", "alb_multi_value"])
def test_a_base64_body_is_decoded(api_env: Keys, style: str) -> None:
    event = _post_event(style)
    body = base64.b64encode(b'{"keywords": ["seo"], "matchType": "bogus"}').decode()
    event.update(body=body, isBase64Encoded=True)
    code, _, answer = _invoke("keywords", event)
    assert (code, answer["error"]) == (400, "Validation Error"), answer
    assert answer["message"].startswith("matchType: "), answer


@pytest.mark.parametrize("style", ["v2", "v1"])
def test_a_text_body_with_a_lone_surrogate_is_invalid_json(api_env: Keys, style: str) -> None:
    build = events.http_api_v2 if style == "v2" else events.rest_api_v1
    event = build("POST", "/api/keywords", body='{"keywords": ["seo"], "matchType": "phrase"}')
    event.update(body='{"keywords": ["a\ud800"], "matchType": "phrase"}', isBase64Encoded=False)
    _envelope(_invoke("keywords", event), 400, "Invalid JSON payload")


def _without_source_ip(event: dict[str, Any]) -> None:
    del event["requestContext"]["http"]["sourceIp"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.update(headers=None),
        lambda e: e.update(rawQueryString=None),
        _without_source_ip,
        lambda e: e["headers"].update({"x-odd": "a\udc00b"}),
        lambda e: e["headers"].update({"x-number": 7}),
    ],
    ids=["null_headers", "null_raw_query", "no_source_ip", "surrogate_header", "number_header"],
)
def test_odd_v2_events_are_answered_in_the_envelope(api_env: Keys, damage: Any) -> None:
    event = events.http_api_v2("GET", "/api/me", headers={"user-agent": "pytest"})
    damage(event)
    _envelope(_invoke("me", event), 401, "Authentication required")


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.update(headers=None, multiValueHeaders=None),
        lambda e: e["requestContext"].update(identity=None),
    ],
    ids=["null_headers", "null_identity"],
)
def test_odd_v1_events_are_answered_in_the_envelope(api_env: Keys, damage: Any) -> None:
    event = events.rest_api_v1("GET", "/api/me", headers={"User-Agent": "pytest"})
    damage(event)
    _envelope(_invoke("me", event), 401, "Authentication required")


def test_a_lone_surrogate_in_a_v1_query_value_is_a_400(api_env: Keys) -> None:
    event = events.rest_api_v1("GET", "/api/history/stats", query={"days": "\ud800"})
    event["multiValueQueryStringParameters"] = {"days": ["\ud800"]}
    _envelope(_invoke("history_stats", event), 400, "Invalid query string: not UTF-8")


@pytest.mark.parametrize("build", [events.http_api_v2, events.rest_api_v1], ids=["v2", "v1"])
def test_a_lone_surrogate_in_an_event_path_is_a_400(api_env: Keys, build: Any) -> None:
    """A direct invoke's path text with no UTF-8 form: the path guard's 400, not a 500."""
    event = build("GET", "/api/health\ud800")
    _envelope(_invoke("health", event), 400, "Invalid path: not UTF-8")


@pytest.mark.parametrize(
    "event",
    [events.schedule(), {"source": "serverless-plugin-warmup"}, {}, None, [], "ping"],
    ids=["eventbridge", "warmup", "empty", "null", "list", "string"],
)
def test_an_event_that_is_not_http_is_refused_in_the_envelope(
    api_env: Keys, event: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule rule aimed at an HTTP function, a warm-up plugin's ping or `{}`: Mangum raised
    RuntimeError (an invocation error and traceback, retried when asynchronous). Now a logged
    refusal and a 400 in the envelope, which ends the invocation."""
    with caplog.at_level("WARNING", logger="keyflash"):
        answer = _invoke("health", event)
    _envelope(answer, 400, NOT_HTTP)
    assert {name: answer[1].get(name.lower()) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    # Every route's shared headers (s53t7 L1: API-Version and Cache-Control were missing).
    assert answer[1]["api-version"] == "v1"
    assert answer[1]["cache-control"] == "no-store, no-cache, must-revalidate"
    refused = [json.loads(r.getMessage()) for r in caplog.records if "lambda_event_refused" in
               r.getMessage()]  # fmt: skip
    assert [r["eventType"] for r in refused] == [type(event).__name__]


@pytest.mark.parametrize("multi_value", [False, True], ids=["single", "multi_value"])
def test_an_alb_query_that_is_not_utf8_gets_the_query_guards_400(
    api_env: Keys, multi_value: bool
) -> None:
    """ALB does not decode the query: Mangum decoded `%ED%A0%80` to U+FFFD, a validation 400,
    where API Gateway's events get `Invalid query string: not UTF-8`. Encoded values that are
    UTF-8 still arrive decoded once (`%32` is 2)."""
    event = _alb("GET", "/api/history/stats", multi_value=multi_value)
    name = "multiValueQueryStringParameters" if multi_value else "queryStringParameters"
    event[name] = {"days": ["%ED%A0%80"] if multi_value else "%ED%A0%80"}
    _envelope(_invoke("history_stats", event), 400, "Invalid query string: not UTF-8")


KINDS = ["v2", "url", "v1", "alb", "alb_multi_value"]


def _event(kind: str, method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """`method path` as `kind` delivers it, with `headers` in place of the event's own."""
    if kind.startswith("alb"):
        event = _alb(method, path, multi_value=kind == "alb_multi_value")
        if "multiValueHeaders" in event:
            event["multiValueHeaders"].update({k: [v] for k, v in headers.items()})
        else:
            event["headers"].update(headers)
        return event
    if kind == "v1":  # its own `Host`, `X-Forwarded-Proto` replaced, not doubled
        return events.rest_api_v1(method, path, headers={k.title(): v for k, v in headers.items()})
    build = events.http_api_v2 if kind == "v2" else events.function_url
    return build(method, path, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "sent",
    [
        {"host": "[2001:db8::1]"},
        {"host": "[2001:db8::1]:443"},
        {"host": "example.com:"},
        {"host": "example.com:abc"},
        {"host": "api.keyflash.test", "x-forwarded-port": "junk"},
        {"host": "api.keyflash.test", "x-forwarded-port": ""},
        {"host": "[2001:db8::1]", "x-forwarded-port": "junk"},
    ],
    ids=["ipv6", "ipv6_port", "empty_port", "word_port", "junk_xfp", "empty_xfp", "ipv6_junk_xfp"],
)
def test_every_host_an_http_server_takes_is_answered_on_every_kind(
    api_env: Keys, kind: str, sent: dict[str, str]
) -> None:
    """s55t5 F1: Mangum split the Host at every `:` and read the port with `int()`, so an IPv6
    literal, an empty or non-numeric port or `x-forwarded-port` raised ValueError (a bare 500 or
    ALB's 502), where `keyflash dev` answers 200. The Host reaches the app as sent: its own
    origin (CORS) is `https://<Host>`, and the token authenticates."""
    origin = f"https://{sent['host']}"
    token = f"Bearer {make_token(api_env, 'user_odd_host')}"
    headers = {**sent, "authorization": token, "origin": origin}
    code, answer_headers, body = _invoke("me", _event(kind, "GET", "/api/me", headers))
    assert code == 200, body
    assert answer_headers["access-control-allow-origin"] == origin
    assert answer_headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("multi_value", [False, True], ids=["single", "multi_value"])
def test_an_alb_answer_keeps_the_header_form_of_its_event(api_env: Keys, multi_value: bool) -> None:
    """An ALB reads only the header field its target group uses: an odd Host must not turn a
    single-value event's answer into `multiValueHeaders` (which it would drop), nor its query
    into none."""
    token = f"Bearer {make_token(api_env, 'user_odd_host')}"
    headers = {"host": "[2001:db8::1]", "authorization": token}
    event = _event("alb_multi_value" if multi_value else "alb", "GET", "/api/history/stats",
                   headers)  # fmt: skip
    name = "multiValueQueryStringParameters" if multi_value else "queryStringParameters"
    event[name] = {"days": ["0"] if multi_value else "0"}
    loaded = importlib.import_module("functions.history_stats")
    raw = loaded.lambda_handler(event, events.lambda_context("history_stats"))
    field = "multiValueHeaders" if multi_value else "headers"
    assert set(raw) & {"headers", "multiValueHeaders"} == {field}, raw
    _envelope(_invoke("history_stats", event), 400, DAYS_OUT_OF_RANGE)


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e["requestContext"]["http"].pop("method"),
        lambda e: e["requestContext"]["http"].pop("path"),
        lambda e: e["requestContext"].pop("http"),
        lambda e: e.update(requestContext={}),
        lambda e: e["requestContext"].update(http="GET /api/health"),
        lambda e: e.update(version="1.0"),
    ],
    ids=["no_method", "no_path", "no_http", "empty_context", "http_text", "labelled_1_0"],
)
def test_a_half_formed_v2_event_is_not_an_http_event(api_env: Keys, damage: Any) -> None:
    """s55t5 F2: a v2 event missing what names the request raised KeyError out of the handler
    (a Lambda error, retried when asynchronous), where a wholly missing `requestContext` got the
    documented 400."""
    event = events.http_api_v2("GET", "/api/health")
    damage(event)
    _envelope(_invoke("health", event), 400, NOT_HTTP)


@pytest.mark.parametrize(
    "build",
    [
        lambda: events.rest_api_v1("GET", "/api/health"),
        lambda: _alb("GET", "/api/health", multi_value=False),
        lambda: _alb("GET", "/api/health", multi_value=True),
    ],
    ids=["v1", "alb", "alb_multi_value"],
)
def test_an_event_without_its_method_is_not_an_http_event(api_env: Keys, build: Any) -> None:
    event = build()
    del event["httpMethod"]
    _envelope(_invoke("health", event), 400, NOT_HTTP)


def test_devkit_events_carry_the_path_where_each_source_does() -> None:
    """As AWS delivers `/a%2541%20b`: REST v1 keeps the escapes, an HTTP API decodes them in
    both fields, a function URL in `http.path` only (docs/http-contract.md)."""
    sent = "/a%2541%20b"
    api, url = events.http_api_v2("GET", sent), events.function_url("GET", sent)
    assert (api["rawPath"], api["requestContext"]["http"]["path"]) == ("/a%41 b", "/a%41 b")
    assert (url["rawPath"], url["requestContext"]["http"]["path"]) == (sent, "/a%41 b")
    assert events.rest_api_v1("GET", sent)["path"] == sent


# --- finding 5: REST v1 cookies split across multiValueHeaders -------------------------------


def _split_cookie_event(method: str, path: str, cookies: list[str], **options: Any) -> Any:
    event = events.rest_api_v1(method, path, **options)
    event["headers"]["cookie"] = cookies[-1]  # API Gateway's `headers` keeps the last value
    event["multiValueHeaders"]["cookie"] = cookies
    return event


@pytest.mark.parametrize("first", [True, False], ids=["session_first", "session_last"])
def test_a_v1_cookie_split_in_several_header_fields_authenticates(
    api_env: Keys, first: bool
) -> None:
    session = f"__session={make_token(api_env, 'user_edges_cookie')}"
    cookies = [session, "theme=dark"] if first else ["theme=dark", session]
    code, _, body = _invoke("history", _split_cookie_event("GET", "/api/history", cookies))
    assert code == 200, body


def test_a_v1_cookie_post_with_a_split_csrf_cookie_passes(api_env: Keys) -> None:
    cookies = [f"__session={make_token(api_env, 'user_edges_cookie')}", "csrf-token=tok-123"]
    search = {
        "name": "n",
        "searchParams": {"keywords": ["x"], "matchType": "phrase", "location": "US"},
    }
    headers = {"Origin": "http://localhost:3000", "X-CSRF-Token": "tok-123"}
    event = _split_cookie_event(
        "POST", "/api/searches", cookies, headers=headers, body=json.dumps(search)
    )
    code, _, body = _invoke("searches", event)
    assert code == 201, body


# --- finding 8: a lone surrogate in a keyword gets the stored strings' message ----------------

BAD_LOCATION = {"keywords": ["x"], "matchType": "phrase"}
SURROGATES = "cannot contain unpaired UTF-16 surrogates (\\ud800-\\udfff)"


@pytest.mark.parametrize(
    ("module", "path", "body", "field"),
    [
        ("keywords", "/api/keywords", {"keywords": ["a\ud800"], "matchType": "phrase"}, "keywords"),
        ("keywords", "/api/keywords", {"keywords": ["x"], "matchType": "\ud800"}, "matchType"),
        ("keywords", "/api/keywords", {**BAD_LOCATION, "location": "\udc00"}, "location"),
        ("keywords_related", "/api/keywords/related", {"keyword": "a\udc00"}, "keyword"),
        ("content_brief", "/api/content-brief", {"keyword": "a\ud800"}, "keyword"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_named_not_a_codec_error(
    call: Caller, module: str, path: str, body: dict[str, Any], field: str
) -> None:
    result = call(module, "POST", path, user="user_edges_surrogate", json_body=body)
    assert _validation_400(result) == f"{field} {SURROGATES}"


# --- finding 10: CR/LF inside a keyword passes the original's charset rule (docs corrected) ----


def test_cr_lf_inside_a_keyword_passes_the_original_charset_rule() -> None:
    """`^[a-zA-Z0-9\\s\\-_]+$` in JS: `\\s` holds CR and LF; NUL fails it."""
    from shared.contracts.keywords import KeywordSearch
    from shared.contracts.related import ContentBriefRequest, RelatedKeywordsRequest

    body = {"keywords": ["ab\r\ncd"], "matchType": "phrase"}
    assert KeywordSearch.model_validate(body).keywords == ["ab\r\ncd"]
    assert RelatedKeywordsRequest.model_validate({"keyword": "ab\r\ncd"}).keyword == "ab\r\ncd"
    assert ContentBriefRequest.model_validate({"keyword": "ab\ncd"}).keyword == "ab\ncd"
    with pytest.raises(ValueError, match="Keywords must contain only"):
        KeywordSearch.model_validate({**body, "keywords": ["ab\x00cd"]})


# --- s53t7 L2: two Authorization (or Origin) headers, one answer on every path ---------------


def _repeated(source: str, name: str, values: list[str]) -> tuple[int, dict[str, str], Any]:
    """GET /api/me with `name` sent twice, as each source hands it to the function: the dev
    gateway (two fields), an HTTP API and a function URL (AWS joins them with a comma), REST v1
    and ALB (`multiValueHeaders`)."""
    if source == "gateway":
        from fastapi.testclient import TestClient

        from devkit import gateway

        with TestClient(gateway.Gateway([gateway.load("me")])) as client:
            answer = client.get("/api/me", headers=[(name, value) for value in values])
        return answer.status_code, dict(answer.headers), answer.json()
    if source in ("v2", "url"):
        build = events.http_api_v2 if source == "v2" else events.function_url
        return _invoke("me", build("GET", "/api/me", headers={name: ",".join(values)}))
    event = events.rest_api_v1("GET", "/api/me") if source == "v1" else _alb(
        "GET", "/api/me", multi_value=True
    )  # fmt: skip
    event["multiValueHeaders"][name] = values
    return _invoke("me", event)


SOURCES = ["gateway", "v2", "url", "v1", "alb"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("valid_first", [True, False], ids=["valid_first", "garbage_first"])
def test_two_authorization_headers_are_a_400_on_every_source(
    api_env: Keys, source: str, valid_first: bool
) -> None:
    """The gateway took the first (200), every Lambda source refused with 401, ALB took the
    last: now the same 400 everywhere (docs/http-contract.md)."""
    valid, garbage = f"Bearer {make_token(api_env, 'user_twice')}", "Bearer garbage"
    values = [valid, garbage] if valid_first else [garbage, valid]
    _envelope(_repeated(source, "authorization", values), 400, REPEATED_AUTHORIZATION)


@pytest.mark.parametrize("source", SOURCES)
def test_two_origin_headers_are_a_400_without_cors_on_every_source(
    api_env: Keys, source: str
) -> None:
    """The gateway reflected the first Origin; the comma-joined form got no CORS."""
    allowed = "https://keyflash.buildproven.ai"
    answer = _repeated(source, "origin", [allowed, "https://evil.example"])
    _envelope(answer, 400, REPEATED_ORIGIN)
    assert "access-control-allow-origin" not in answer[1]
