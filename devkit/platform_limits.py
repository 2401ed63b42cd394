"""The platforms' payload limits, refused locally the way the platforms refuse them.

A deployed function cannot answer more than its platform carries, and nothing in-process would
notice: a 12 MB answer works on a laptop and fails on Lambda and Vercel. `keyflash dev`,
`keyflash invoke` and the test client therefore pass every request and response through
`refusal()` here and, over a limit, answer what the platform would have answered instead:

- AWS Lambda behind the API Gateway HTTP API: a synchronous invocation's payload, the event
  going in and the handler's result document coming out (as JSON, body base64-encoded when it
  is binary), may be at most 6,291,556 bytes. Over it, Lambda fails the invocation and the
  HTTP API answers `500 {"message":"Internal Server Error"}`.
- Vercel Functions: the request body and the response body may be at most 4.5 MB. Over it,
  the request is refused with `413 FUNCTION_PAYLOAD_TOO_LARGE`, the response replaced by
  `500 FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE` (plain text, header `x-vercel-error`).

`KEYFLASH_PLATFORM` chooses what is imitated: `lambda`, `vercel`, or `strictest` (the default:
both, so whichever limit a message would break first refuses it).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LAMBDA_PAYLOAD_MAX = 6_291_556  # bytes: what Lambda's "6 MB" check really allows
VERCEL_BODY_MAX = 4_500_000  # bytes: Vercel's "4.5 MB", read as decimal megabytes (stricter)
PLATFORMS = ("lambda", "vercel")
VARIABLE = "KEYFLASH_PLATFORM"
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml")


@dataclass(frozen=True)
class Refusal:
    """What the platform answers instead of the function's response."""

    platform: str
    status: int
    headers: dict[str, str]
    body: bytes
    reason: str  # for logs: which limit, and the size that broke it


def imitated(value: str | None = None) -> tuple[str, ...]:
    """The platforms whose limits apply: `KEYFLASH_PLATFORM` (or `value`), default both."""
    chosen = (value if value is not None else os.environ.get(VARIABLE, "")).strip().lower()
    if chosen in ("", "strictest"):
        return PLATFORMS
    if chosen in PLATFORMS:
        return (chosen,)
    raise ValueError(f"{VARIABLE} must be lambda, vercel or strictest, not {chosen!r}")


def _lambda_refusal(reason: str) -> Refusal:
    body = b'{"message":"Internal Server Error"}'
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    return Refusal("lambda", 500, headers, body, reason)


def _vercel_refusal(status: int, code: str, title: str, reason: str) -> Refusal:
    body = f"{title}\n\n{code}\n".encode()
    headers = {
        "content-type": "text/plain; charset=utf-8",
        "content-length": str(len(body)),
        "x-vercel-error": code,
    }
    return Refusal("vercel", status, headers, body, reason)


def request_refusal(
    body: bytes, *, event_bytes: int | None = None, platforms: Sequence[str] | None = None
) -> Refusal | None:
    """The refusal of a request whose body is `body` (and, on Lambda, whose event document is
    `event_bytes` long: estimated from the body when not given), or None when it fits."""
    for platform in platforms or imitated():
        if platform == "vercel" and len(body) > VERCEL_BODY_MAX:
            return _vercel_refusal(
                413, "FUNCTION_PAYLOAD_TOO_LARGE", "Payload Too Large",
                f"request body {len(body)} bytes > Vercel's {VERCEL_BODY_MAX}",
            )  # fmt: skip
        if platform == "lambda":
            size = event_bytes if event_bytes is not None else _lambda_body_bytes(body, True)
            if size > LAMBDA_PAYLOAD_MAX:
                return _lambda_refusal(
                    f"request event {size} bytes > Lambda's {LAMBDA_PAYLOAD_MAX}"
                )
    return None


def response_refusal(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    result_bytes: int | None = None,
    platforms: Sequence[str] | None = None,
) -> Refusal | None:
    """The refusal of a response (`result_bytes`: the Lambda result document's size when the
    caller has it; else estimated as Mangum would build it), or None when it fits."""
    for platform in platforms or imitated():
        if platform == "vercel" and len(body) > VERCEL_BODY_MAX:
            return _vercel_refusal(
                500, "FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE", "A server error has occurred",
                f"response body {len(body)} bytes > Vercel's {VERCEL_BODY_MAX}",
            )  # fmt: skip
        if platform == "lambda":
            size = result_bytes if result_bytes is not None else lambda_result_bytes(
                status, headers, body
            )  # fmt: skip
            if size > LAMBDA_PAYLOAD_MAX:
                return _lambda_refusal(
                    f"response payload {size} bytes > Lambda's {LAMBDA_PAYLOAD_MAX}"
                )
    return None


def lambda_result_bytes(status: int, headers: Mapping[str, str], body: bytes) -> int:
    """The size of the HTTP API (v2) result document Mangum would return for this response."""
    lowered = {k.lower(): v for k, v in headers.items()}
    textual = "content-encoding" not in lowered and lowered.get("content-type", "").startswith(
        _TEXT_TYPES
    )
    document = {
        "statusCode": status,
        "headers": lowered,
        "body": "",
        "isBase64Encoded": not textual,
    }
    return len(json.dumps(document).encode()) + _lambda_body_bytes(body, textual)


def _lambda_body_bytes(body: bytes, textual: bool) -> int:
    """The body's size inside the JSON document: escaped text, or base64."""
    if textual:
        try:
            return len(json.dumps(body.decode()).encode()) - 2
        except UnicodeDecodeError:
            pass
    return len(base64.b64encode(body))
