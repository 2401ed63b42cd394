"""The local stack refuses what Lambda and Vercel refuse, the way they refuse it.

`devkit.platform_limits` holds the limits; the dev gateway (`keyflash dev`), `keyflash invoke`
and the test client apply them. Each is driven here with messages just under and just over each
limit, under each `KEYFLASH_PLATFORM` setting.
"""

from __future__ import annotations

import json
import types
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.testclient import TestClient

from devkit import gateway, invoke, platform_limits
from devkit.platform_limits import LAMBDA_PAYLOAD_MAX, VERCEL_BODY_MAX

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
