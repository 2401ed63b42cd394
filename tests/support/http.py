"""Calling functions as their platforms do: Lambda events (HTTP API v2, REST v1) and HTTP.

A `Caller` also takes the style `lambda_url` (a function URL's v2 event, `rawPath` as sent), for
the tests whose answer depends on which event source carries the path.

Fixtures: `rsa_keys` (a generated Clerk-like signing key), `api_env` (the app configured for the
lane, trusting that key) and `call` (a function caller parametrized over the three invocation
styles). Tokens are signed here with the generated key, like Clerk signs session tokens.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import importlib
import ipaddress
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from devkit import events, platform_limits
from devkit.tokens import new_private_pem
from devkit.upstash_emulator import UpstashEmulator

ISSUER = "https://clerk.keyflash.test"
STYLES = ["lambda_v2", "lambda_v1", "asgi"]


@dataclass(frozen=True)
class Keys:
    private_pem: str
    public_pem: str


@pytest.fixture(scope="session")
def rsa_keys() -> Keys:
    private = new_private_pem()
    public = (
        serialization.load_pem_private_key(private, password=None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return Keys(private.decode(), public)


def make_token(keys: Keys, sub: str, *, ttl: int = 300, **claims: Any) -> str:
    """A Clerk-style session token (RS256) for `sub`."""
    now = int(time.time())
    payload = {"sub": sub, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + ttl, **claims}
    return jwt.encode(payload, _signing_key(keys.private_pem), algorithm="RS256")


@functools.cache
def _signing_key(private_pem: str) -> PrivateKeyTypes:
    """The parsed key: parsing the PEM costs ~50 ms, and tests sign thousands of tokens."""
    return serialization.load_pem_private_key(private_pem.encode(), password=None)


def fresh_ip() -> str:
    """A client address (in 2001:db8::/32, for documentation) that no other test uses: the
    emulator lives for the whole session, and anonymous rate limits count per address."""
    return str(ipaddress.IPv6Address((0x2001_0DB8 << 96) | (uuid.uuid4().int >> 32)))


@pytest.fixture(scope="session")
def upstash() -> Iterator[UpstashEmulator]:
    """One in-process Upstash emulator for the app tests (keys are isolated by test data)."""
    with UpstashEmulator() as emulator:
        yield emulator


def app_environment(keys: Keys, redis_url: str, redis_token: str) -> dict[str, str]:
    """What every app fixture sets: trust `keys`, Upstash at `redis_url`, no rate limiting."""
    return {
        "CLERK_JWT_KEY": keys.public_pem,
        "CLERK_ISSUER": ISSUER,
        "APP_ENV": "test",
        "UPSTASH_REDIS_REST_URL": redis_url,
        "UPSTASH_REDIS_REST_TOKEN": redis_token,
        "RATE_LIMIT_ENABLED": "false",
    }


@pytest.fixture
def api_env(
    db_env: str, rsa_keys: Keys, upstash: UpstashEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Keys]:
    """The app on this lane, trusting `rsa_keys`, with Redis behind the emulator and
    per-container caches emptied. Rate limiting is off here; its own tests turn it on."""
    from shared import auth, config, redis

    for name, value in app_environment(rsa_keys, upstash.url, upstash.token).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ADMIN_USER_IDS", raising=False)
    config.get_settings.cache_clear()
    auth._provisioned.clear()
    redis.reset_redis()
    yield rsa_keys
    auth._provisioned.clear()
    redis.reset_redis()


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The captured `shared.telemetry` lines of `event`, parsed."""
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [line for line in lines if line["event"] == event]


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    text: str  # the body, decompressed when it came gzip-encoded
    raw: bytes = b""  # the body as sent

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


def _decoded(headers: dict[str, str], raw: bytes) -> str:
    if headers.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return raw.decode()


def _refused(refusal: platform_limits.Refusal) -> Result:
    return Result(refusal.status, dict(refusal.headers), refusal.body.decode(), refusal.body)


def _decoding_once(app: ASGIApp) -> ASGIApp:
    """`app` given the path as a server gives it: its `raw_path` percent-decoded once (uvicorn's
    `unquote`). Starlette's TestClient decodes the path twice (`unquote` of httpx's decoded
    path), so `/api/admin/flags/x%2541` named the flag `xA`, not `x%41`."""

    async def decoded_once(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": unquote(scope["raw_path"].decode("ascii"))}
        await app(scope, receive, send)

    return decoded_once


class Caller:
    """Invoke a function module's `lambda_handler` (a real Lambda event) or its `app` (HTTP).

    Requests and responses pass through the platforms' payload and time limits
    (`KEYFLASH_PLATFORM`, default both): over a limit, or past the function's timeout, the
    caller gets the platform's refusal, as deployed.

    After each call from the test's main thread, the answer of the request's `api_usage` INSERT
    (sent after the response without waiting, `shared.http.usage`) is read, as the container's
    next request would: a test may then read `api_usage` from a connection of its own."""

    def __init__(self, style: str, keys: Keys) -> None:
        self.style = style
        self.keys = keys

    def token(self, sub: str, **claims: Any) -> str:
        return make_token(self.keys, sub, **claims)

    def __call__(self, module: str, method: str, path: str, **options: Any) -> Result:
        try:
            return self._call(module, method, path, **options)
        finally:
            usage = sys.modules.get("shared.http.usage")
            # Only for the test's own thread: traffic threads read no rows, and would compete
            # with each other for the pooled connections.
            if usage is not None and threading.current_thread() is threading.main_thread():
                usage.settle()

    def _call(
        self,
        module: str,
        method: str,
        path: str,
        *,
        user: str | None = None,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        raw_query: str | None = None,
        source_ip: str | None = None,
    ) -> Result:
        """`source_ip`: the client address the platform reports (API Gateway's `sourceIp`, the
        ASGI peer); the builders' documentation address when None. `raw_query`: the query string
        as sent on the wire, percent-escapes kept (not in REST v1 events, which carry only the
        values API Gateway decoded)."""
        if raw_query is not None:
            assert self.style != "lambda_v1" and query is None, "raw_query: not in REST v1 events"
        loaded = importlib.import_module(f"functions.{module}")
        all_headers = {"user-agent": "pytest-agent/1.0", **(headers or {})}
        if user is not None:
            all_headers["authorization"] = f"Bearer {self.token(user)}"
        if json_body is not None:
            body = json.dumps(json_body)
            all_headers.setdefault("content-type", "application/json")
        raw_body = body.encode() if isinstance(body, str) else (body or b"")
        deadline = platform_limits.deadline(f"functions.{module}", "http")
        if self.style == "asgi":
            refusal = platform_limits.request_refusal(raw_body)
            if refusal is not None:
                return _refused(refusal)
            peer = (source_ip, 50000) if source_ip else ("testclient", 50000)

            def serve() -> tuple[int, dict[str, str], bytes]:
                with (
                    TestClient(
                        _decoding_once(loaded.app),
                        base_url="https://api.keyflash.test",
                        client=peer,
                    ) as client,
                    client.stream(
                        method,
                        path if raw_query is None else f"{path}?{raw_query}",
                        content=body,
                        headers=all_headers,
                        params=query,
                    ) as response,
                ):
                    return (
                        response.status_code,
                        dict(response.headers),
                        b"".join(response.iter_raw()),
                    )

            try:
                status, out, sent = platform_limits.call_within(deadline.seconds, serve)
            except platform_limits.Overrun:
                return _refused(deadline.refusal)
            refusal = platform_limits.response_refusal(status, out, sent)
            if refusal is not None:
                return _refused(refusal)
            return Result(status, out, _decoded(out, sent), sent)
        build = {"lambda_v2": events.http_api_v2, "lambda_url": events.function_url}.get(
            self.style, events.rest_api_v1
        )
        peer_ip = {"source_ip": source_ip} if source_ip else {}
        event = build(method, path, headers=all_headers, query=query, body=body, **peer_ip)
        if raw_query is not None:
            event["rawQueryString"] = raw_query
        refusal = platform_limits.request_refusal(raw_body, event_bytes=len(json.dumps(event)))
        if refusal is not None:
            return _refused(refusal)

        def invoke() -> dict[str, Any]:
            # Mangum runs on the thread's event loop; Lambda runs one invocation per process.
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                # The context's remaining time is the imitated platform's, as deployed.
                context = events.lambda_context(module, int(deadline.seconds * 1000))
                result: dict[str, Any] = loaded.lambda_handler(event, context)
                return result
            finally:
                asyncio.set_event_loop(None)
                loop.close()

        try:
            raw = platform_limits.call_within(deadline.seconds, invoke)
        except platform_limits.Overrun:
            return _refused(deadline.refusal)
        text = raw.get("body") or ""
        sent = base64.b64decode(text) if raw.get("isBase64Encoded") else text.encode()
        headers_out = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
        for name, values in (raw.get("multiValueHeaders") or {}).items():
            headers_out[name.lower()] = ", ".join(values)
        if raw.get("cookies"):
            headers_out["set-cookie"] = ", ".join(raw["cookies"])
        refusal = platform_limits.response_refusal(
            raw["statusCode"],
            headers_out,
            sent,
            result_bytes=platform_limits.lambda_document_bytes(raw),
        )
        if refusal is not None:
            return _refused(refusal)
        return Result(raw["statusCode"], headers_out, _decoded(headers_out, sent), sent)


@pytest.fixture(params=STYLES)
def call(request: pytest.FixtureRequest, api_env: Keys) -> Caller:
    """Invoke functions in each style: Lambda HTTP API v2, Lambda REST v1, HTTP against `app`."""
    return Caller(request.param, api_env)
