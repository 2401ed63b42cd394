"""The Lambda side of every HTTP function: Mangum, made to answer every event shape it is given.

Mangum turns an API Gateway v2, REST v1 or function URL event into an ASGI request, but raises
(API Gateway then answers a bare 500 with no envelope, request id or usage row) on shapes
API Gateway itself rarely sends but direct invokes, test events and other integrations do:

- `isBase64Encoded` with a body that is not base64 (`binascii.Error`), where REST v1's `"%%%"`
  silently became an empty body (an ALB event's too, and `e30=!!` became `{}`): the body is
  decoded strictly here, and an undecodable one becomes bytes that are not UTF-8, so a route
  reading it answers 400 `Invalid JSON payload` as for any other invalid body. A text body
  holding a lone surrogate (no UTF-8 form) likewise.
- `null` or missing optional fields (`headers`, `rawQueryString`, `requestContext.http.sourceIp`,
  `requestContext.identity`) and values that are not UTF-8 encodable (a lone surrogate in a
  header or a REST v1 query value): only when building the request from the event as given
  fails is a tolerant copy of it built (the normal path pays nothing for it). A query value's
  lone surrogate is kept as its bytes, so the query-string guard answers its 400.
- a Host header any HTTP server takes but Mangum cannot split into `scope["server"]` (it splits
  at every `:` and reads the port with `int()`): an IPv6 literal (`[2001:db8::1]:443`, which
  an ALB reached by its IPv6 address passes on), an empty port (`name:`, RFC 3986 allows it),
  `name:abc`, or an `x-forwarded-port` that is empty or not a number. The tolerant copy hides
  both headers from Mangum, and they are put back unchanged (CORS and CSRF compare the Host
  as sent); a port that is not a number counts as absent (then `x-forwarded-port`, else 80),
  as `keyflash dev` answers such a request 200, and nothing but the Host header, kept as sent,
  reads it.

And REST v1's `multiValueHeaders.cookie` (HTTP/2 browsers send each cookie as its own header
field, RFC 9113 §8.2.3) is joined with `"; "`, as RFC 9113 says to rebuild it: Mangum joined
every repeated header with `", "`, which hid `__session` and the CSRF cookie (401, 403).

And the path is percent-decoded once, whichever source sent it. REST v1's `path` keeps the
escapes the client sent; an HTTP API decodes them (in `rawPath` and `requestContext.http.path`
alike), and a function URL decodes `requestContext.http.path` but keeps them in `rawPath`.
Mangum decodes `requestContext.http.path` again, so `/api/admin/flags/x%2541` (the flag `x%41`)
named the flag `xA`. Here the scope's `path` is the event's path decoded once, and `raw_path`
its encoded form: REST v1's `path`, a function URL's `rawPath` (known by decoding to
`http.path`), or else `http.path` with its `%`, `?`, `#`, spaces and other characters outside
a path escaped. The path guard (`shared.http.guards.UrlEncoding`) reads `raw_path` and refuses
every path whose decoding would make a U+FFFD: an HTTP API has decoded such bytes before the
function runs (to what, AWS does not say), so there they reach the function as AWS decoded them.

And ALB's query parameters, which ALB passes as sent (not decoded), are decoded to bytes and
encoded again: Mangum decoded them as text, so bytes that are not UTF-8 became U+FFFD and a
route's validation 400, where API Gateway's events get the query guard's `not UTF-8`.

And an event no handler routes (an EventBridge rule aimed at an HTTP function, a warm-up
plugin's ping, `{}`, a list), or one even the tolerant copy cannot make a request of (no
method or path: a v2 event without `requestContext.http`, a 2.0 event labelled `1.0`): Mangum
raised RuntimeError or KeyError, an invocation error with a traceback, retried when
asynchronous. It is logged (`lambda_event_refused`, WARNING, with the event's
type and top-level keys) and answered 400 in the envelope, which ends the invocation.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode

from mangum import Mangum
from mangum.handlers import ALB, APIGateway, HTTPGateway
from mangum.protocols import HTTPCycle
from mangum.types import LambdaContext, LambdaEvent

from shared.http.errors import error_response
from shared.http.security_headers import every_answer, production
from shared.storable_text import LONE_SURROGATE, without_lone_surrogates
from shared.telemetry import log_event, new_request_id

# Every printable ASCII character but none other: `%XX` escapes are kept, the rest escaped.
_PATH_SAFE = "".join(chr(code) for code in range(0x21, 0x7F))
# What a decoded path keeps literal when encoded again (RFC 3986 `pchar` and `/`, with `quote`'s
# letters, digits and `_.-~`): `%`, `?`, `#`, spaces and every other character are escaped.
_DECODED_PATH_SAFE = "/:@!$&'()*+,;="
# Not UTF-8, so never valid JSON: what a body that cannot be decoded becomes (400 on JSON routes).
UNDECODABLE = b"\xff"
NOT_HTTP = "Not an HTTP event: this function answers API Gateway, function URL and ALB requests"
# The headers Mangum parses into `scope["server"]`, carried in the tolerant copy under names no
# client can send (not RFC 9110 tokens), and their names restored in the scope.
_HIDDEN = {"host": "(host)", "x-forwarded-port": "(x-forwarded-port)"}
_SHOWN = {hidden.encode(): name.encode() for name, hidden in _HIDDEN.items()}
_PORT = re.compile(r"[0-9]{1,5}")


def _body(event: LambdaEvent) -> bytes:
    """The request body as bytes; `UNDECODABLE` when the event's cannot be read."""
    body = event.get("body") or b""
    try:
        if event.get("isBase64Encoded"):
            return base64.b64decode(body, validate=True)  # `"%%%"` is not an empty body
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8
    except (binascii.Error, ValueError, TypeError):
        pass
    return UNDECODABLE


def _text(value: Any) -> str:
    """A header value Mangum can encode as UTF-8 (lone surrogates as U+FFFD)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return without_lone_surrogates(text)


def _query_value(value: Any) -> Any:
    """A REST v1 query value `urlencode` can take: a lone surrogate kept as its bytes."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return [_query_value(item) for item in value]
    return "" if value is None else value


def _encoded_path(event: LambdaEvent) -> str:
    """The event's path with its percent-escapes, however its source delivered it (see the
    module docstring); a lone surrogate (a direct invoke's) is kept, to become bytes that are
    not UTF-8 in `raw_path`."""
    if event.get("version") != "2.0":
        return str(event["path"] or "/")
    decoded = str(event["requestContext"]["http"]["path"] or "/")
    raw = event.get("rawPath")
    if isinstance(raw, str) and unquote(raw) == decoded:
        return raw  # a function URL's, or one with nothing to decode
    return quote(decoded, safe=_DECODED_PATH_SAFE, errors="surrogatepass")


def _unquote_plus_bytes(value: Any) -> bytes:
    """A query key or value as sent, decoded to its bytes (`+` is a space)."""
    if not isinstance(value, bytes):
        value = ("" if value is None else str(value)).encode("utf-8", "surrogatepass")
    return unquote_to_bytes(value.replace(b"+", b" "))


def _alb_query(event: LambdaEvent) -> bytes:
    """ALB's query string from the parameters Mangum reads, their bytes kept (see the module
    docstring)."""
    params = event.get("multiValueQueryStringParameters", event.get("queryStringParameters", {}))
    if not params:
        return b""
    pairs = [
        (_unquote_plus_bytes(name), _unquote_plus_bytes(value))
        for name, values in params.items()
        for value in (values if isinstance(values, list | tuple) else [values])
    ]
    return urlencode(pairs).encode()


def _not_http(event: Any) -> dict[str, Any]:
    """The logged refusal of an event no handler routes (see the module docstring)."""
    request_id = new_request_id()
    keys = sorted(str(key)[:40] for key in event)[:10] if isinstance(event, dict) else []
    log_event(
        "lambda_event_refused",
        level=logging.WARNING,
        requestId=request_id,
        eventType=type(event).__name__,
        keys=keys,
    )
    refusal = error_response(400, NOT_HTTP)  # the envelope and headers of every route's 400
    headers = {**refusal.headers, **every_answer(request_id, production=production())}
    return {
        "statusCode": 400,
        "headers": headers,
        "body": bytes(refusal.body).decode(),
        "isBase64Encoded": False,
    }


def _name(key: Any) -> str:
    """A header name as the tolerant copy carries it: Host and the port hidden (`_HIDDEN`)."""
    name = str(key)
    return _HIDDEN.get(name.lower(), name)


def _server(headers: list[list[bytes]]) -> tuple[str, int]:
    """`scope["server"]` as Mangum makes it from `host` and `x-forwarded-port` (the last of each),
    for any Host: an IPv6 literal's address without brackets, a port that is not a number
    absent (see the module docstring)."""
    fields = {bytes(name): bytes(value).decode("utf-8", "replace") for name, value in headers}
    host = fields.get(b"host", "mangum")
    if host.startswith("[") and "]" in host:  # RFC 3986 IP-literal
        address, _, rest = host[1:].partition("]")
        name, port = address, rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if not _PORT.fullmatch(port):
        port = fields.get(b"x-forwarded-port", "")
    return name, int(port) if _PORT.fullmatch(port) else 80


def tolerant(event: LambdaEvent) -> LambdaEvent:
    """A copy of `event` with every optional field Mangum reads present and encodable, and the
    headers it parses hidden (`_HIDDEN`). An ALB's header fields stay those it sent (it reads
    an answer's headers from the field its event used and drops the other), and its query
    is left out (`_alb_query` reads the event's own)."""
    context = dict(event.get("requestContext") or {})
    alb = "elb" in context
    fixed = dict(event)
    fixed["headers"] = {_name(k): _text(v) for k, v in (event.get("headers") or {}).items()}
    multi = event.get("multiValueHeaders") or {}
    fixed["multiValueHeaders"] = {
        _name(k): [_text(item) for item in v] if isinstance(v, list) else [_text(v)]
        for k, v in multi.items()
    }
    if alb and "multiValueHeaders" not in event:
        del fixed["multiValueHeaders"]
    if isinstance(event.get("cookies"), list):
        fixed["cookies"] = [_text(cookie) for cookie in event["cookies"]]
    if event.get("version") == "2.0":
        raw_query = event.get("rawQueryString") or ""
        fixed["rawQueryString"] = LONE_SURROGATE.sub(
            lambda m: quote(m.group().encode("utf-8", "surrogatepass")), str(raw_query)
        )
        http = dict(context.get("http") or {})
        http.setdefault("sourceIp", None)
        context["http"] = http
    else:
        context["identity"] = context.get("identity") or {}
        for name in ("queryStringParameters", "multiValueQueryStringParameters"):
            if alb:
                fixed.pop(name, None)
            else:
                params = event.get(name) or {}
                fixed[name] = {k: _query_value(v) for k, v in params.items()}
    fixed["requestContext"] = context
    return fixed


def _split_cookie(event: LambdaEvent) -> bytes | None:
    """REST v1's cookie header rebuilt from several `multiValueHeaders` entries, or None."""
    multi = event.get("multiValueHeaders")
    if not multi or event.get("version") == "2.0" or not isinstance(multi, dict):
        return None
    for name, values in multi.items():
        if isinstance(values, list) and len(values) > 1 and str(name).lower() == "cookie":
            return "; ".join(_text(value) for value in values).encode()
    return None


class LambdaHandler(Mangum):
    """`Mangum` (lifespan off) answering every event it can route: see the module docstring."""

    def __call__(self, event: LambdaEvent, context: LambdaContext) -> dict[str, Any]:
        if not isinstance(event, dict):
            return _not_http(event)
        try:
            handler = self.infer(event, context)
        except RuntimeError:  # Mangum's "unable to infer a handler": not an HTTP event
            return _not_http(event)
        try:
            scope = handler.scope
        except (AttributeError, KeyError, TypeError, UnicodeError, ValueError):
            try:
                handler = self.infer(tolerant(event), context)
                scope = handler.scope
            except (AttributeError, KeyError, TypeError, ValueError):  # no method or path
                return _not_http(event)
            scope["headers"] = [[_SHOWN.get(k, k), v] for k, v in scope["headers"]]
            scope["server"] = _server(scope["headers"])
        cookie = _split_cookie(event)
        if cookie is not None:
            headers = [pair for pair in scope["headers"] if pair[0] != b"cookie"]
            scope["headers"] = [*headers, [b"cookie", cookie]]
        if isinstance(handler, APIGateway | HTTPGateway):  # v1, v2, function URLs
            encoded = _encoded_path(handler.event)  # the event Mangum read
            scope["path"] = unquote(encoded)  # not Mangum's, decoded twice on v2
            scope["raw_path"] = quote(encoded, safe=_PATH_SAFE, errors="surrogatepass").encode()
        elif isinstance(handler, ALB):
            scope["query_string"] = _alb_query(event)
        # v1, v2, function URLs and ALB keep the body at the event's top level (Lambda@Edge
        # nests it): ALB's was decoded leniently by Mangum, `%%%` an empty body, `abc` a raise.
        top_level = isinstance(handler, APIGateway | HTTPGateway | ALB)
        body = _body(event) if top_level else handler.body
        response = HTTPCycle(scope, body)(self.app)
        result: dict[str, Any] = handler(response)
        return result
