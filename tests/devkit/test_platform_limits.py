"""The local stack refuses what Lambda and Vercel refuse, the way they refuse it.

`devkit.platform_limits` holds the limits; the dev gateway (`keyflash dev`), `keyflash invoke`
and the test client apply them. Each is driven here with messages just under and just over each
limit, under each `KEYFLASH_PLATFORM` setting, and with a handler held past a tiny timeout on a
gate the test opens (no sleeps: the handler cannot return before the deadline).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.testclient import TestClient

from devkit import gateway, invoke, platform_limits
from devkit.platform_limits import LAMBDA_PAYLOAD_MAX, VERCEL_BODY_MAX
from tests.support.http import Caller, Keys

LAMBDA_REFUSAL = b'{"message":"Internal Server Error"}'


def test_the_default_imitates_both_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(platform_limits.VARIABLE, raising=False)
    assert platform_limits.imitated() == ("lambda", "vercel")
    assert platform_limits.imitated("strictest") == ("lambda", "vercel")
    assert platform_limits.imitated(" Lambda ") == ("lambda",)
    assert platform_limits.imitated("vercel") == ("vercel",)
    with pytest.raises(ValueError, match="KEYFLASH_PLATFORM must be lambda, vercel or strictest"):
        platform_limits.imitated("netlify")


def test_vercel_refuses_bodies_over_4_5_mb_with_its_error_codes() -> None:
    vercel = ("vercel",)
    assert platform_limits.request_refusal(b"x" * VERCEL_BODY_MAX, platforms=vercel) is None
    refused = platform_limits.request_refusal(b"x" * (VERCEL_BODY_MAX + 1), platforms=vercel)
    assert refused is not None and refused.status == 413
    assert refused.headers["x-vercel-error"] == "FUNCTION_PAYLOAD_TOO_LARGE"
    headers = {"content-type": "application/json"}
    body = b"x" * (VERCEL_BODY_MAX + 1)
    refused = platform_limits.response_refusal(200, headers, body, platforms=vercel)
    assert refused is not None and refused.status == 500
    assert refused.headers["x-vercel-error"] == "FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE"
    assert b"FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE" in refused.body


def test_lambda_counts_the_whole_result_document_with_base64_bodies() -> None:
    lambda_only = ("lambda",)
    text = {"content-type": "application/json"}
    fits = b"a" * 6_000_000  # JSON text goes into the document as is
    assert platform_limits.response_refusal(200, text, fits, platforms=lambda_only) is None
    # The same size gzip-encoded goes in as base64: 8 MB in the document.
    zipped = {**text, "content-encoding": "gzip"}
    refused = platform_limits.response_refusal(200, zipped, fits, platforms=lambda_only)
    assert refused is not None and (refused.status, refused.body) == (500, LAMBDA_REFUSAL)
    # Non-ASCII text goes in as UTF-8 on python3.12: an emoji is 4 bytes, not a 12-byte escape.
    emoji = "🔥".encode() * 1_500_000
    assert platform_limits.response_refusal(200, text, emoji, platforms=lambda_only) is None
    # Escaping counts too: quotes and control characters double in JSON.
    escaped = b'"\n' * 3_200_000
    assert platform_limits.response_refusal(200, text, escaped, platforms=lambda_only) is not None
    assert platform_limits.lambda_result_bytes(200, text, b"{}") == len(
        json.dumps({"statusCode": 200, "headers": text, "body": "{}", "isBase64Encoded": False})
    )
    refused = platform_limits.request_refusal(
        b"", event_bytes=LAMBDA_PAYLOAD_MAX + 1, platforms=lambda_only
    )
    assert refused is not None and refused.status == 500


def _module_serving(size_route: str = "/api/blob") -> types.ModuleType:
    """A stand-in function module: answers `n` bytes of JSON, and accepts any body."""
    app = FastAPI()

    @app.get(size_route)
    def blob(n: int) -> Response:
        return Response(b'"' + b"a" * (n - 2) + b'"', media_type="application/json")

    @app.post(size_route)
    async def upload(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    module = types.ModuleType("functions.blob")
    module.app = app  # type: ignore[attr-defined]
    return module


@pytest.fixture
def dev_gateway() -> TestClient:
    module = _module_serving()
    function = gateway.Function(
        "blob",
        module,
        tuple(
            gateway.Route(r.path, frozenset(r.methods), r.path_regex)
            for r in module.app.routes
            if hasattr(r, "path_regex") and r.path == "/api/blob"
        ),
    )
    return TestClient(gateway.Gateway([function]))


@pytest.mark.parametrize(
    ("platform", "size", "expected"),
    [
        ("vercel", VERCEL_BODY_MAX, 200),
        ("vercel", VERCEL_BODY_MAX + 1, 500),
        ("lambda", VERCEL_BODY_MAX + 1, 200),
        ("lambda", LAMBDA_PAYLOAD_MAX, 500),  # the document around the body is over
        ("strictest", VERCEL_BODY_MAX + 1, 500),
    ],
)
def test_keyflash_dev_refuses_oversized_responses(
    dev_gateway: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    size: int,
    expected: int,
) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, platform)
    response = dev_gateway.get(f"/api/blob?n={size}", headers={"accept-encoding": "identity"})
    assert response.status_code == expected
    if expected == 200:
        assert len(response.content) == size
    elif platform == "lambda":
        assert response.content == LAMBDA_REFUSAL
    else:
        assert response.headers["x-vercel-error"] == "FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE"


def test_keyflash_dev_refuses_oversized_requests_before_the_function_runs(
    dev_gateway: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, "vercel")
    refused = dev_gateway.post("/api/blob", content=b"x" * (VERCEL_BODY_MAX + 1))
    assert refused.status_code == 413
    assert refused.headers["x-vercel-error"] == "FUNCTION_PAYLOAD_TOO_LARGE"
    monkeypatch.setenv(platform_limits.VARIABLE, "lambda")
    accepted = dev_gateway.post("/api/blob", content=b"x" * (VERCEL_BODY_MAX + 1))
    assert accepted.json() == {"received": VERCEL_BODY_MAX + 1}
    refused = dev_gateway.post("/api/blob", content=b"x" * LAMBDA_PAYLOAD_MAX)
    assert (refused.status_code, refused.content) == (500, LAMBDA_REFUSAL)


@pytest.mark.parametrize(
    ("platform", "declared", "status"),
    [("vercel", VERCEL_BODY_MAX + 1, 413), ("lambda", LAMBDA_PAYLOAD_MAX + 1, 500)],
)
def test_keyflash_dev_refuses_a_declared_oversized_body_without_reading_it(
    dev_gateway: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    declared: int,
    status: int,
) -> None:
    """A `Content-Length` the platform would refuse whatever the bytes is answered at once: a
    client is not asked (`100 Continue`, which the server sends on the first read) or left
    waiting to upload megabytes that can only be refused."""
    monkeypatch.setenv(platform_limits.VARIABLE, platform)
    app = dev_gateway.app
    scope = {
        "type": "http", "method": "POST", "path": "/api/blob", "raw_path": b"/api/blob",
        "query_string": b"", "headers": [(b"content-length", str(declared).encode())],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == status


@pytest.mark.parametrize("declared", [b"\xb2", b"\xd9\xa3"], ids=["superscript", "arabic"])
def test_keyflash_dev_reads_a_length_of_other_digits_as_no_length(
    dev_gateway: TestClient, monkeypatch: pytest.MonkeyPatch, declared: bytes
) -> None:
    """`str.isdigit` is true of '²' and of other scripts' digits, which `int` refuses (or
    reads): the gateway answered 500. Only ASCII digits are a length; the body is counted."""
    monkeypatch.setenv(platform_limits.VARIABLE, "vercel")
    scope = {
        "type": "http", "method": "POST", "path": "/api/blob", "raw_path": b"/api/blob",
        "query_string": b"", "headers": [(b"content-length", declared)],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(dev_gateway.app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] != 500, sent


def test_keyflash_dev_still_counts_a_streamed_body_without_a_length(
    dev_gateway: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, "vercel")
    chunks = [b"x" * 1_000_000] * 4 + [b"x" * 500_001]
    refused = dev_gateway.post("/api/blob", content=iter(chunks))
    assert refused.status_code == 413
    assert refused.headers["x-vercel-error"] == "FUNCTION_PAYLOAD_TOO_LARGE"


def test_keyflash_invoke_refuses_an_event_over_lambdas_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler never runs: Lambda refuses the invocation before it starts."""
    monkeypatch.setenv(platform_limits.VARIABLE, "lambda")
    target = invoke.resolve_target("searches")
    body = json.dumps({"name": "x" * LAMBDA_PAYLOAD_MAX})
    request = invoke.Request(method="POST", path="/api/searches", body=body)
    result = invoke.invoke(target, event_file=None, request=request, repeat=1, token_for=str)
    run = result.runs[0]
    assert run.status == 500 and run.refused is not None and "request event" in run.refused
    assert run.response["body"] == LAMBDA_REFUSAL.decode()
    assert "refused by the platform" in invoke.render(result)


def test_keyflash_invoke_refuses_a_result_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, "vercel")
    huge: dict[str, Any] = {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": "a" * (VERCEL_BODY_MAX + 1),
        "isBase64Encoded": False,
    }
    target = invoke.Target("http", "blob", "functions.blob")
    refusal = invoke._response_refusal(target, huge)
    assert refusal is not None and refusal.status == 500
    assert refusal.headers["x-vercel-error"] == "FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE"
    huge["body"] = "a" * VERCEL_BODY_MAX
    assert invoke._response_refusal(target, huge) is None


# --------------------------------------------------------------------------- time

HTTP_API_UNAVAILABLE = b'{"message":"Service Unavailable"}'


def test_each_functions_timeout_is_read_from_its_descriptor() -> None:
    assert platform_limits.configured_timeout_s("functions.health", "lambda") == 10
    assert platform_limits.configured_timeout_s("functions.me_export", "lambda") == 20  # provider
    assert platform_limits.configured_timeout_s("functions.cron.exports", "lambda") == 900
    assert platform_limits.configured_timeout_s("functions.health", "vercel") == 300  # default
    strictest = platform_limits.deadline("functions.cron.exports", "cron")
    assert strictest.seconds == 300 and strictest.refusal.status == 504  # Vercel's is shorter
    on_lambda = platform_limits.deadline("functions.cron.exports", "cron", platforms=["lambda"])
    assert on_lambda.seconds == 900
    assert json.loads(on_lambda.refusal.body) == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 900.00 seconds",
    }


def test_lambda_behind_the_http_api_is_cut_at_30_s_with_a_503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A function allowed longer than the HTTP API waits is answered by the HTTP API at 30 s;
    one whose own timeout comes first fails the invocation: a 500."""
    serverless = {"provider": {"timeout": 20}, "functions": {
        "slow": {"handler": "functions/slow.lambda_handler", "timeout": 60}}}  # fmt: skip
    monkeypatch.setattr(platform_limits, "_descriptors", lambda: (serverless, {"builds": []}))
    slow = platform_limits.deadline("functions.slow", "http", platforms=["lambda"])
    assert (slow.seconds, slow.refusal.status, slow.refusal.body) == (30, 503, HTTP_API_UNAVAILABLE)
    usual = platform_limits.deadline("functions.other", "http", platforms=["lambda"])
    assert (usual.seconds, usual.refusal.status, usual.refusal.body) == (20, 500, LAMBDA_REFUSAL)
    vercel = platform_limits.deadline("functions.other", "http", platforms=["vercel"])
    assert (vercel.seconds, vercel.refusal.status) == (300, 504)
    assert vercel.refusal.headers["x-vercel-error"] == "FUNCTION_INVOCATION_TIMEOUT"


class Gate:
    """A handler's way through: it signals `entered`, then waits until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

    def pass_through(self) -> None:
        self.entered.set()
        assert self.open.wait(timeout=30), "the test never opened the gate"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """`functions.gated` and `functions.cron.gated`: stand-in functions that block on a gate,
    with a tiny imitated timeout. The gate opens at the end, so no abandoned thread stays."""
    from shared.http.app import make_lambda_handler

    opened = Gate()
    app = FastAPI()

    @app.get("/api/gated")
    def gated() -> dict[str, bool]:
        opened.pass_through()
        return {"ok": True}

    module = types.ModuleType("functions.gated")
    module.app = app  # type: ignore[attr-defined]
    module.lambda_handler = make_lambda_handler(app)  # type: ignore[attr-defined]
    cron = types.ModuleType("functions.cron.gated")
    cron.lambda_handler = lambda event, context: opened.pass_through()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "functions.gated", module)
    monkeypatch.setitem(sys.modules, "functions.cron.gated", cron)
    monkeypatch.setenv(platform_limits.TIMEOUT_VARIABLE, "0.2")
    try:
        yield opened
    finally:
        opened.open.set()


@pytest.mark.parametrize(
    ("style", "platform", "status"),
    [("lambda_v2", "lambda", 500), ("asgi", "vercel", 504), ("asgi", "strictest", 500)],
)
def test_the_test_client_answers_an_overrun_as_the_platform_does(
    gate: Gate,
    rsa_keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    style: str,
    platform: str,
    status: int,
) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, platform)
    result = Caller(style, rsa_keys)("gated", "GET", "/api/gated")
    assert gate.entered.wait(timeout=30)  # it ran, and cannot return until the gate opens
    assert result.status == status
    if status == 504:
        assert result.headers["x-vercel-error"] == "FUNCTION_INVOCATION_TIMEOUT"
    else:
        assert result.raw == LAMBDA_REFUSAL
    gate.open.set()  # a handler that returns in time is answered as usual
    assert Caller(style, rsa_keys)("gated", "GET", "/api/gated").json == {"ok": True}


def test_keyflash_dev_answers_an_overrun_as_the_platform_does(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(gateway.Gateway([gateway.load("gated")])) as client:
        try:
            monkeypatch.setenv(platform_limits.VARIABLE, "vercel")
            refused = client.get("/api/gated")
            assert gate.entered.wait(timeout=30)
            assert refused.status_code == 504
            assert refused.headers["x-vercel-error"] == "FUNCTION_INVOCATION_TIMEOUT"
            monkeypatch.setenv(platform_limits.VARIABLE, "lambda")
            refused = client.get("/api/gated")
            assert (refused.status_code, refused.content) == (500, LAMBDA_REFUSAL)
            gate.open.set()
            assert client.get("/api/gated").json() == {"ok": True}
        finally:
            gate.open.set()  # the abandoned invocations finish before the loop closes


def test_keyflash_invoke_answers_an_overrun_as_the_platform_does(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(platform_limits.VARIABLE, "lambda")
    http = invoke.invoke(invoke.Target("http", "gated", "functions.gated"), event_file=None,
                         request=invoke.Request(), repeat=1, token_for=str)  # fmt: skip
    run = http.runs[0]
    assert gate.entered.wait(timeout=30)
    assert run.status == 500 and run.response["body"] == LAMBDA_REFUSAL.decode()
    assert run.refused is not None and "ran past 0.2 s" in run.refused
    assert "refused by the platform" in invoke.render(http)
    cron = invoke.invoke(invoke.Target("cron", "cron.gated", "functions.cron.gated"),
                         event_file=None, request=invoke.Request(), repeat=1,
                         token_for=str)  # fmt: skip
    assert cron.runs[0].response == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "Task timed out after 0.20 seconds",
    }


@pytest.mark.parametrize(
    ("platform", "url_pad", "header_sizes", "expected"),
    [
        ("lambda", 9_000, [], 200),
        ("lambda", 10_300, [], 414),  # the request line alone is over 10,240
        ("lambda", 5_000, [6_000], 431),  # line and header values together
        ("vercel", 13_000, [6_000], 200),
        ("vercel", 14_100, [], 414),  # the URL over 14 KB
        ("vercel", 0, [15_900], 200),
        ("vercel", 0, [16_100], 431),  # one header over 16 KB
        ("vercel", 0, [11_000, 11_000, 11_000], 431),  # all headers over 32 KB
        ("strictest", 5_000, [6_000], 431),
    ],
)
def test_keyflash_dev_refuses_request_heads_the_platform_refuses(
    dev_gateway: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    url_pad: int,
    header_sizes: list[int],
    expected: int,
) -> None:
    """s53t7 L4: a 110 KB URL or a 70 KB header was served locally and refused deployed. Over
    the platform's limit, the platform's status in the envelope, with every answer's headers."""
    monkeypatch.setenv(platform_limits.VARIABLE, platform)
    headers = {f"x-pad-{i}": "a" * size for i, size in enumerate(header_sizes)}
    response = dev_gateway.get(f"/api/blob?n=2&pad={'a' * url_pad}", headers=headers)
    assert response.status_code == expected, response.text[:200]
    if expected == 200:
        return
    body = response.json()
    assert set(body) == {"error", "message", "statusCode", "timestamp"}
    assert body["statusCode"] == expected
    assert body["error"] == HTTPStatus(expected).phrase  # s53r L5: as every envelope says it
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["api-version"] == "v1"
    assert response.headers["x-content-type-options"] == "nosniff"
