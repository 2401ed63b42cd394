"""ASGI guards in front of every route: body size and coding, path and query encoding, one
credential and origin, CORS, CSRF.

Pure ASGI (no per-request framework objects) because they run on every invocation.
CORS is the outermost layer of the app, so every answer to an allowed origin carries its headers,
whichever layer made it (a CSRF 403, a 413, the last-resort 500): a browser turns an answer
without them into a network error, and its code never sees the envelope.
Fixes over the original (docs/original-app.md#d15, #d17): the 413 response does not echo the
request's Content-Length; the CSRF cookie is readable by the frontend (the double-submit pattern
needs that) and compared in constant time; CSRF 403s use the error envelope; requests authenticated
by an `Authorization` header are exempt, since browsers never attach that header on their own, and
so are requests without the session cookie (no ambient credentials, nothing to forge).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.config import ConfigurationError, Settings
from shared.http.errors import error_response
from shared.http.methods import allow, served
from shared.one_value import repeated

BODY_LIMIT = 1_000_000  # the original's; webhooks set none of their own (`create_app`)
BODY_TOO_LARGE = "Request body too large. Limit is 976 KB."
QUERY_NOT_UTF8 = "Invalid query string: not UTF-8"
PATH_NOT_UTF8 = "Invalid path: not UTF-8"
NOT_DECODED = "Unsupported Content-Encoding: send the body without one (identity)"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_EXEMPT_PREFIXES = ("/api/webhooks/", "/api/health")
CSRF_COOKIE = "csrf-token"
SESSION_COOKIE = "__session"  # Clerk's session cookie
CSRF_HEADER = "x-csrf-token"
# The response headers the docs tell clients to read (docs/http-contract.md#cors-and-csrf);
# browser code sees no others but the CORS-safelisted ones (Content-Type, Cache-Control, …).
EXPOSED_HEADERS = (
    "API-Version", "Location", "Retry-After", "X-Consistency-Token", "X-Quota-Remaining",
    "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-ID",
)  # fmt: skip
CORS_HEADERS = {
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, PATCH, OPTIONS",
    # The original's, and the read-your-writes token, which a cross-site page must send back
    # itself: its requests do not carry the SameSite=Lax `kf_consistency` cookie.
    "Access-Control-Allow-Headers": (
        "Content-Type, Authorization, X-CSRF-Token, X-Requested-With, X-Consistency-Token"
    ),
    "Access-Control-Max-Age": "86400",
    "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
}


def _own_origin(scope: Scope, headers: Headers) -> str:
    scheme = headers.get("x-forwarded-proto", scope.get("scheme", "https")).split(",")[0].strip()
    return f"{scheme}://{headers.get('host', '')}"


def _bearer_token(headers: Headers) -> bool:
    """Whether the request carries the header credential `shared.http.auth` uses before the cookie:
    `Bearer <token>`. Any other Authorization value leaves the session cookie in charge."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(value.strip())


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


class BodyLimit:
    """Read the body up to BODY_LIMIT (by Content-Length and by counting the stream), then replay
    it to the app; over the limit → 413 in the envelope without reading further."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > BODY_LIMIT:
            await error_response(413, BODY_TOO_LARGE)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > BODY_LIMIT:
                await error_response(413, BODY_TOO_LARGE)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)


class ContentCoding:
    """A write whose `Content-Encoding` names any coding but identity → 415 with
    `Accept-Encoding: identity` (RFC 9110 §8.4, §15.5.16), whether or not bytes follow: no
    coding is decoded (a small gzip body can inflate past any limit), and reading its bytes as
    identity made a gzip body a misleading 400 and a mislabelled one a success. Only writes:
    no route reads the body of another method."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            codings = ",".join(Headers(scope=scope).getlist("content-encoding")).split(",")
            if any(coding.strip().lower() not in ("", "identity") for coding in codings):
                refusal = error_response(415, NOT_DECODED, headers={"Accept-Encoding": "identity"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OneValue:
    """A request with more than one `Authorization` or `Origin` → 400, on every source alike.

    Each source passes repeated fields on differently: the dev gateway, Vercel and an ALB with
    multi-value headers as several fields, an HTTP API and a function URL joined with a comma,
    REST v1 (through Mangum) joined with `, `; an ALB without multi-value headers keeps only the
    last, which no function can tell. Reading the first made a request the gateway served
    (200) one API Gateway refused (401). A comma is never in one such value: a Bearer token
    (token68) and an origin (RFC 6454) hold none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            message = repeated(scope.get("headers") or [])
            if message is not None:
                await error_response(400, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UrlEncoding:
    """A path or query string that is not UTF-8 once its percent-escapes are decoded → 400.

    Servers decode such bytes to U+FFFD, so a route would answer for a value the client never
    sent (`metric=%ED%A0%80` read as `metric=\ufffd`, `/api/admin/flags/x%FF` as the flag
    `x\ufffd`, which DELETE deleted); JSON bodies follow the same rule. The path is checked as
    sent, in `raw_path` (`path` already holds the U+FFFD): uvicorn, Vercel's runtime and the
    test client set it, and so does the Lambda handler (`shared.http.lambda_events`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path: bytes | None = scope.get("raw_path")
            if raw_path is not None and not _utf8(unquote_to_bytes(raw_path)):
                await error_response(400, PATH_NOT_UTF8)(scope, receive, send)
                return
            query: bytes = scope.get("query_string", b"")
            if query and not _utf8(unquote_to_bytes(query)):
                await error_response(400, QUERY_NOT_UTF8)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Cors:
    """CORS headers on every answer to an allow-listed origin (or the request's own), none for
    any other. Outermost (`create_app`), so no refusal is made outside it."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origins = headers.getlist("origin")  # several: no CORS (`OneValue` refuses the request)
        origin = origins[0] if len(origins) == 1 else None
        if not origin or not self._allowed(origin, scope, headers):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["Access-Control-Allow-Origin"] = origin
                response_headers.add_vary_header("Origin")
                response_headers.update(CORS_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allowed(self, origin: str, scope: Scope, headers: Headers) -> bool:
        try:
            settings = self.settings()
        except ConfigurationError:
            return False  # the request's 500 reports it (`shared.http.app.RequestContext`)
        return origin in settings.cors_origins or origin == _own_origin(scope, headers)


class Csrf:
    """OPTIONS answered with `Allow` (a preflight: `Cors` adds its headers; a path no route serves
    is left to the router's 404); CSRF origin + double-submit token on state changes; the token's
    cookie issued to a GET (or the GET a HEAD stands for) that lacks it."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        headers = Headers(scope=scope)
        method = scope["method"]

        if method == "OPTIONS" and (methods := served(scope)):
            await JSONResponse({}, headers={"Allow": allow(methods)})(scope, receive, send)
            return

        if method in STATE_CHANGING and self._csrf_applies(scope, headers):
            refusal = self._csrf_refusal(headers, _own_origin(scope, headers), settings)
            if refusal is not None:
                await error_response(403, refusal)(scope, receive, send)
                return

        if method != "GET" or CSRF_COOKIE in cookie_parser(headers.get("cookie", "")):
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                secure = "; Secure" if settings.is_production else ""
                token = secrets.token_urlsafe(32)
                MutableHeaders(scope=message).append(
                    "Set-Cookie",
                    f"{CSRF_COOKIE}={token}; Path=/; Max-Age=86400; SameSite=Strict{secure}",
                )
            await send(message)

        await self.app(scope, receive, send_with_token)

    @staticmethod
    def _csrf_applies(scope: Scope, headers: Headers) -> bool:
        """Only requests a browser could send with ambient credentials: the session cookie.

        A request authenticated by an `Authorization` header cannot be forged cross-site, and
        one with no credentials at all gains nothing from forgery (it gets 401 anyway).
        """
        path: str = scope["path"]
        if path.startswith(CSRF_EXEMPT_PREFIXES) or _bearer_token(headers):
            return False
        return SESSION_COOKIE in cookie_parser(headers.get("cookie", ""))

    @staticmethod
    def _csrf_refusal(headers: Headers, own: str, settings: Settings) -> str | None:
        origin = headers.get("origin") or _origin_of(headers.get("referer", ""))
        if not origin or (origin != own and origin not in settings.cors_origins):
            return "Invalid request origin"
        cookie = cookie_parser(headers.get("cookie", "")).get(CSRF_COOKIE)
        token = headers.get(CSRF_HEADER, "")
        # As bytes: compare_digest refuses str beyond ASCII, which a client may send.
        if not cookie or not token or not hmac.compare_digest(cookie.encode(), token.encode()):
            return "CSRF token validation failed"
        return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app a body already read, whole, then defers to the server's
    (for the disconnect message)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
