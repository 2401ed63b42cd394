"""The local API gateway: every function in functions/ behind one port, each with its own app.

API Gateway and Vercel route a request to ONE function by its path, whatever the method
(serverless.yml declares each path with `method: '*'`, vercel.json's routes filter no methods),
and that function only knows its own routes. The gateway does the same in-process: it matches
the request's path against each module's FastAPI routes and hands the untouched ASGI scope to
that module's `app`, so a function sees what it would see deployed (its own 405 envelope, HEAD
and OPTIONS answers, CORS preflight); a path no function serves is the gateway's 404.
Modules are discovered from the directory, so a new `functions/<name>.py` is served without
registering it anywhere; `functions/cron/` holds scheduled jobs and is not served.

Like the platforms, the gateway buffers each request and response whole and refuses what they
would refuse (`devkit.platform_limits`: Lambda's 6 MB payloads, Vercel's 4.5 MB bodies).

The merged OpenAPI document is every app's `app.openapi()` combined, tagged per function.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from devkit import events, platform_limits
from devkit.console import CliError
from devkit.layout import FUNCTIONS_PACKAGE, http_functions
from shared.http.guards import replaying
from shared.telemetry import new_request_id, without_emails

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"

logger = logging.getLogger("keyflash.gateway")
# Invocations past their imitated timeout, still running: held so they finish unhindered.
_abandoned: set[asyncio.Future[None]] = set()


@dataclass(frozen=True)
class Route:
    path: str  # the FastAPI template, e.g. /api/searches/{search_id}
    methods: frozenset[str]
    regex: re.Pattern[str]


@dataclass(frozen=True)
class Function:
    """One deployable HTTP function: `functions/<name>.py` with `app` and `lambda_handler`."""

    name: str
    module: ModuleType
    routes: tuple[Route, ...] = field(default=())

    @property
    def app(self) -> FastAPI:
        app: FastAPI = self.module.app
        return app


def load(name: str) -> Function:
    """Import `functions.<name>` and read its routes; a module without `app` is refused."""
    module = importlib.import_module(f"{FUNCTIONS_PACKAGE}.{name}")
    app = getattr(module, "app", None)
    if not isinstance(app, FastAPI):
        raise CliError(f"functions/{name}.py has no FastAPI `app` to serve")
    routes = tuple(
        Route(route.path, frozenset((route.methods or set()) - {"HEAD"}), route.path_regex)
        for route in app.routes
        if isinstance(route, APIRoute)
    )
    return Function(name, module, routes)


def load_all(names: Iterable[str] | None = None) -> list[Function]:
    return [load(name) for name in (http_functions() if names is None else names)]


def route_table(functions: Sequence[Function]) -> list[tuple[str, str, str]]:
    """(method, path, function) for every route, in serving order (for banners and docs)."""
    rows = [
        (method, route.path, function.name)
        for function in functions
        for route in function.routes
        for method in sorted(route.methods)
    ]
    return sorted(rows, key=lambda row: (row[1], row[0]))


def conflicts(functions: Sequence[Function]) -> list[str]:
    """Paths claimed by more than one function (the first one serves all their methods)."""
    owners: dict[str, str] = {}
    found: dict[str, None] = {}  # a path's clash once, whatever its methods
    for _, path, name in route_table(functions):
        owner = owners.setdefault(path, name)
        if owner != name:
            found[f"{path}: {owner} and {name}"] = None
    return list(found)


# What may break a line (`str.splitlines()`, log viewers) or the terminal: C0 and C1 controls,
# U+2028 and U+2029.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# How much of a path a log line shows.
_SHOWN_CHARS = 200


def _printable(path: str) -> str:
    """A decoded path for a log line: a segment with an email masked, cut to `_SHOWN_CHARS`,
    and what could break the line escaped, so a `%0A` or `%E2%80%A8` in a URL cannot start a
    forged line, a `%00` turn the log binary, nor a 60 KB path make a 60 KB line."""
    shown = without_emails(path)
    if len(shown) > _SHOWN_CHARS:
        shown = f"{shown[:_SHOWN_CHARS]}…(+{len(shown) - _SHOWN_CHARS} chars)"
    return _CONTROL.sub(_escaped, shown)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class Gateway:
    """ASGI app: `/openapi.json`, `/docs`, and every function's routes, dispatched to its app."""

    def __init__(self, functions: Sequence[Function], *, public_url: str | None = None) -> None:
        self.functions = list(functions)
        self.public_url = public_url
        self._openapi: bytes | None = None

    def find(self, path: str) -> Function | None:
        """The first function with a route for `path`, which answers every method of it."""
        for function in self.functions:
            if any(route.regex.match(path) for route in function.routes):
                return function
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        path: str = scope["path"]
        method: str = scope["method"]
        over = _head_refusal(scope)
        if over is not None:
            logger.warning("%s refuses: %s", over.platform, over.reason)
            await _refuse_in_envelope(
                send, over.status, HTTPStatus(over.status).phrase, over.reason
            )
            return
        if method in ("GET", "HEAD") and path == OPENAPI_PATH:
            await _respond(send, 200, self.openapi_bytes(), "application/json")
            return
        if method in ("GET", "HEAD") and path == DOCS_PATH:
            page = get_swagger_ui_html(openapi_url=OPENAPI_PATH, title="KeyFlash Functions")
            await _respond(send, 200, bytes(page.body), "text/html; charset=utf-8")
            return
        if method == "GET" and path == "/":
            await _respond(send, 200, self._index(), "application/json")
            return
        function = self.find(path)
        if function is None:
            # The platform's own 404 would answer here; ours carries the headers every answer of
            # the functions does (the Swagger page above does not: their CSP and COEP would
            # block its inline script and CDN assets).
            message = f"No function serves {method} {path}"
            request_id = await _refuse_in_envelope(send, 404, "Not Found", message)
            logger.info("%s %s -> no function 404 (%s)", method, _printable(path), request_id)
            return
        started = time.perf_counter()
        status = 500
        try:
            status = await _call_within_limits(function, scope, receive, send)
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            shown = _printable(path)
            logger.info("%s %s -> %s %d (%.0f ms)", method, shown, function.name, status, elapsed)

    def openapi(self) -> dict[str, Any]:
        return merged_openapi(self.functions, server_url=self.public_url)

    def openapi_bytes(self) -> bytes:
        if self._openapi is None:  # the apps' routes do not change while we serve them
            self._openapi = json.dumps(self.openapi(), indent=2).encode()
        return self._openapi

    def _index(self) -> bytes:
        routes = [
            {"method": method, "path": path, "function": name}
            for method, path, name in route_table(self.functions)
        ]
        return json.dumps(
            {"functions": [f.name for f in self.functions], "routes": routes, "docs": DOCS_PATH},
            indent=2,
        ).encode()


def merged_openapi(
    functions: Sequence[Function], *, server_url: str | None = None
) -> dict[str, Any]:
    """One OpenAPI document for all functions; each operation tagged with its function.

    Component schemas with the same name and content are shared; a name two functions define
    differently is qualified with the function's name (and its `$ref`s rewritten) so neither
    silently replaces the other.
    """
    from shared.http.security_headers import API_VERSION  # shared settings untouched until now

    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "KeyFlash Functions",
            "version": API_VERSION,
            "description": "Every function in functions/, merged (one tag per function).",
        },
        "paths": {},
        "components": {"schemas": {}},
        "tags": [],
    }
    if server_url:
        merged["servers"] = [{"url": server_url}]
    schemas: dict[str, Any] = merged["components"]["schemas"]
    for function in functions:
        spec = copy.deepcopy(function.app.openapi())
        own: dict[str, Any] = spec.get("components", {}).get("schemas", {})
        renames = {
            name: f"{name}__{function.name}"
            for name, schema in own.items()
            if name in schemas and schemas[name] != schema
        }
        if renames:
            spec = _rename_refs(spec, renames)
            own = spec.get("components", {}).get("schemas", {})
        for name, schema in own.items():
            schemas.setdefault(renames.get(name, name), schema)
        for kind, entries in spec.get("components", {}).items():
            if kind != "schemas":
                merged["components"].setdefault(kind, {}).update(entries)
        for path, operations in spec.get("paths", {}).items():
            target = merged["paths"].setdefault(path, {})
            for method, operation in operations.items():
                if method in target:
                    continue  # claimed by an earlier function; `conflicts()` reports it
                if isinstance(operation, dict):
                    operation["tags"] = [function.name]
                    operation["x-keyflash-function"] = function.name
                target[method] = operation
        info = spec.get("info", {})
        merged["tags"].append(
            {"name": function.name, "description": info.get("summary") or info.get("title", "")}
        )
    return merged


def _rename_refs(spec: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    text = json.dumps(spec)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    renamed: dict[str, Any] = json.loads(text)
    schemas = renamed.get("components", {}).get("schemas", {})
    for old, new in renames.items():
        schemas[new] = schemas.pop(old)
    return renamed


def _envelope(status: int, error: str, message: str) -> bytes:
    """The functions' error shape, so clients see one envelope whoever answers."""
    from shared.clock import iso_ms, utcnow

    return json.dumps(
        {"error": error, "message": message, "statusCode": status, "timestamp": iso_ms(utcnow())},
        separators=(",", ":"),
    ).encode()


def _head_refusal(scope: Scope) -> platform_limits.HeadRefusal | None:
    """The imitated platforms' refusal of the request's head (`platform_limits.head_refusal`),
    sized as it came: `METHOD target HTTP/x`, the target with its query."""
    query: bytes = scope.get("query_string", b"")
    url = scope.get("raw_path") or scope["path"].encode()
    url += b"?" + query if query else b""
    version = scope.get("http_version", "1.1").encode()  # ASGI: optional, 1.1 when absent
    line = b"%s %s HTTP/%s" % (scope["method"].encode(), url, version)
    return platform_limits.head_refusal(line, url, scope["headers"])


async def _refuse_in_envelope(send: Send, status: int, error: str, message: str) -> str:
    """The gateway's own refusal in the functions' envelope, with every answer's headers
    (`shared.http.security_headers.every_answer`). Its request id."""
    from shared.http.security_headers import every_answer, production  # settings untouched

    request_id = new_request_id()
    extra = every_answer(request_id, production=production())
    await _respond(send, status, _envelope(status, error, message), "application/json", extra=extra)
    return request_id


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    *,
    extra: Mapping[str, str] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    headers += [(name.lower().encode(), value.encode()) for name, value in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _call_within_limits(
    function: Function, scope: Scope, receive: Receive, send: Send
) -> int:
    """Run `function.app` with the request and response held whole, as the platforms hold
    them; a message over the imitated limit, or a function still running at its imitated
    timeout, gets the platform's refusal instead. The status.

    A `Content-Length` over the platform's limit is refused before the body is read, so no
    client is invited (`100 Continue`, sent on the first read) or left to upload it in vain."""
    declared = Headers(scope=scope).get("content-length", "")
    length = int(declared) if declared.isascii() and declared.isdigit() else None  # not '²'
    if length is not None and (early := platform_limits.declared_refusal(length)):
        return await _refuse(send, early)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return 499
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    event = events.http_api_v2(
        scope["method"],
        scope.get("raw_path", b"").decode("latin-1") or scope["path"],  # the path as sent
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))),
        body=bytes(body),
    )  # the event Lambda would be handed: its size is what Lambda limits
    refusal = platform_limits.request_refusal(bytes(body), event_bytes=len(json.dumps(event)))
    start: Message = {}
    chunks: list[bytes] = []
    if refusal is None:

        async def hold(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        deadline = platform_limits.deadline(f"{FUNCTIONS_PACKAGE}.{function.name}", "http")
        running = asyncio.ensure_future(function.app(scope, replaying(bytes(body), receive), hold))
        done, _ = await asyncio.wait({running}, timeout=deadline.seconds)
        if running in done:
            running.result()  # the app's own exception, if any, as before
        else:  # the platform stops waiting; the handler's thread cannot be stopped
            _abandoned.add(running)
            running.add_done_callback(_abandoned.discard)
            refusal = deadline.refusal
    if refusal is None:
        status: int = start.get("status", 500)
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        sent = b"".join(chunks)
        named = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        refusal = platform_limits.response_refusal(status, named, sent)
        if refusal is None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": sent})
            return status
    return await _refuse(send, refusal)


async def _refuse(send: Send, refusal: platform_limits.Refusal) -> int:
    """Answer what the platform answers instead of the function. The status."""
    logger.warning("%s refuses: %s", refusal.platform, refusal.reason)
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [(k.encode(), v.encode()) for k, v in refusal.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": refusal.body})
    return refusal.status


async def _lifespan(receive: Receive, send: Send) -> None:
    """Accept startup and shutdown: the functions have no lifespan work (Mangum runs it per
    invocation, so nothing may live there)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
