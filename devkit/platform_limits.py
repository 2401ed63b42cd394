"""The platforms' payload, request head and time limits, refused locally as the platforms refuse
them.

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

Request heads (`head_refusal`): the API Gateway HTTP API caps the request line and the header
values together at 10,240 bytes; Vercel's CDN caps the URL at 14 KB (`414 URL_TOO_LONG`), one
header at 16 KB and all headers, names included, at 32 KB (`431 REQUEST_HEADER_TOO_LARGE`).
AWS does not say which status it answers: 414 when the request line alone is over, else 431.
The dev gateway answers these in the functions' envelope (no function runs).

Time (`deadline`, `call_within`): each function's configured timeout, read from the
descriptors. Lambda: the function's `timeout` in serverless.yml, else the provider's; behind the
HTTP API, whose integration gives up after 30 s. A function that overruns its own timeout fails
the invocation ("Task timed out after …"), which the HTTP API answers `500 {"message":"Internal
Server Error"}`; one still running when the HTTP API's 30 s are up is answered `503
{"message":"Service Unavailable"}`. A scheduled (cron) invocation has no client: it fails with
Lambda's timeout error document. Vercel: the build's `maxDuration` in vercel.json, else Vercel's
default (300 s; vercel.json sets none), answered `504 FUNCTION_INVOCATION_TIMEOUT`.
`KEYFLASH_TIMEOUT_S` replaces every function's timeout (tests, experiments).

`KEYFLASH_PLATFORM` chooses what is imitated: `lambda`, `vercel`, or `strictest` (the default:
both, so whichever limit a message would break first refuses it, and the shorter timeout
applies).
"""

from __future__ import annotations

import base64
import contextvars
import functools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

HTTP_API_HEAD_MAX = 10_240  # bytes: the request line and the header values, together
VERCEL_URL_MAX = 14_000  # bytes: Vercel's "14 KB", "16 KB" and "32 KB", read as decimal
VERCEL_HEADER_MAX = 16_000  # one header, name and value
VERCEL_HEADERS_MAX = 32_000  # every header, names and values
LAMBDA_PAYLOAD_MAX = 6_291_556  # bytes: what Lambda's "6 MB" check really allows
VERCEL_BODY_MAX = 4_500_000  # bytes: Vercel's "4.5 MB", read as decimal megabytes (stricter)
PLATFORMS = ("lambda", "vercel")
VARIABLE = "KEYFLASH_PLATFORM"
TIMEOUT_VARIABLE = "KEYFLASH_TIMEOUT_S"
HTTP_API_TIMEOUT_S = 30.0  # the HTTP API's integration timeout (its maximum)
LAMBDA_DEFAULT_TIMEOUT_S = (
    6.0  # the Serverless Framework's, when neither function nor provider sets one
)
VERCEL_DEFAULT_MAX_DURATION_S = 300.0  # Vercel Functions' default maximum duration
T = TypeVar("T")
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
            return _vercel_body_refusal(f"request body {len(body)} bytes")
        if platform == "lambda":
            size = event_bytes if event_bytes is not None else _lambda_body_bytes(body, True)
            if size > LAMBDA_PAYLOAD_MAX:
                return _lambda_refusal(
                    f"request event {size} bytes > Lambda's {LAMBDA_PAYLOAD_MAX}"
                )
    return None


def declared_refusal(length: int, *, platforms: Sequence[str] | None = None) -> Refusal | None:
    """What `request_refusal` would say of any body `length` bytes long (its Lambda event is
    longer still), known from a `Content-Length` before a byte is read; None when it may fit."""
    for platform in platforms or imitated():
        if platform == "vercel" and length > VERCEL_BODY_MAX:
            return _vercel_body_refusal(f"declared request body {length} bytes")
        if platform == "lambda" and length > LAMBDA_PAYLOAD_MAX:
            return _lambda_refusal(
                f"declared request body {length} bytes > Lambda's {LAMBDA_PAYLOAD_MAX}"
            )
    return None


def _vercel_body_refusal(what: str) -> Refusal:
    reason = f"{what} > Vercel's {VERCEL_BODY_MAX}"
    return _vercel_refusal(413, "FUNCTION_PAYLOAD_TOO_LARGE", "Payload Too Large", reason)


@dataclass(frozen=True)
class HeadRefusal:
    """A request head over a platform's limit: its status, and why (the envelope's message)."""

    platform: str
    status: int
    reason: str


def head_refusal(
    request_line: bytes,
    url: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    platforms: Sequence[str] | None = None,
) -> HeadRefusal | None:
    """The refusal of a request head (its request line, its target URL, its header fields),
    or None when every imitated platform takes it."""
    line, values = len(request_line), sum(len(value) for _, value in headers)
    fields = [len(name) + len(value) for name, value in headers]
    for platform in platforms or imitated():
        if platform == "lambda" and line + values > HTTP_API_HEAD_MAX:
            status = 414 if line > HTTP_API_HEAD_MAX else 431
            reason = f"request line and header values {line + values} bytes > {HTTP_API_HEAD_MAX}"
            return HeadRefusal("lambda", status, f"Request too large for API Gateway: {reason}")
        if platform == "vercel":
            if len(url) > VERCEL_URL_MAX:
                reason = f"URL {len(url)} bytes > {VERCEL_URL_MAX}"
                return HeadRefusal("vercel", 414, f"URL too long for Vercel: {reason}")
            if max(fields, default=0) > VERCEL_HEADER_MAX:
                reason = f"one header {max(fields)} bytes > {VERCEL_HEADER_MAX}"
                return HeadRefusal("vercel", 431, f"Headers too large for Vercel: {reason}")
            if sum(fields) > VERCEL_HEADERS_MAX:
                reason = f"all headers {sum(fields)} bytes > {VERCEL_HEADERS_MAX}"
                return HeadRefusal("vercel", 431, f"Headers too large for Vercel: {reason}")
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
    return lambda_document_bytes(document) + _lambda_body_bytes(body, textual, ensure_ascii=False)


def lambda_document_bytes(result: Any) -> int:
    """A handler's result as the python3.12 runtime (serverless.yml's) sends it: JSON with
    non-ASCII text as UTF-8. Its marshaller (aws-lambda-python-runtime-interface-client, commit
    80eefef) sets `ensure_ascii=False` on python3.12 only; older runtimes escaped each
    character (an emoji 12 bytes, not 4)."""
    return len(json.dumps(result, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _lambda_body_bytes(body: bytes, textual: bool, *, ensure_ascii: bool = True) -> int:
    """The body's size inside the JSON document: escaped text, or base64. A request event is
    counted with non-ASCII escaped (what API Gateway sends is not documented: the larger)."""
    if textual:
        try:
            return len(json.dumps(body.decode(), ensure_ascii=ensure_ascii).encode()) - 2
        except UnicodeDecodeError:
            pass
    return len(base64.b64encode(body))


# --------------------------------------------------------------------------- time


class Overrun(Exception):  # a platform outcome, not a bug of ours
    """The invocation ran past its deadline; `call_within` abandoned it."""


@dataclass(frozen=True)
class Deadline:
    """How long an invocation may run on the imitated platform, and what answers it then."""

    seconds: float
    refusal: Refusal  # for a Lambda cron: the failed invocation's error document as the body


@functools.cache
def _descriptors() -> tuple[dict[str, Any], dict[str, Any]]:
    from devkit.descriptors import load_serverless, load_vercel

    return load_serverless(), load_vercel()


def configured_timeout_s(module: str, platform: str) -> float:
    """The timeout `module` (`functions.health`, `functions.cron.exports`) is deployed with."""
    serverless, vercel = _descriptors()
    source = module.replace(".", "/")
    if platform == "lambda":
        for spec in (serverless.get("functions") or {}).values():
            if spec.get("handler") == f"{source}.lambda_handler" and "timeout" in spec:
                return float(spec["timeout"])
        return float(serverless.get("provider", {}).get("timeout", LAMBDA_DEFAULT_TIMEOUT_S))
    for build in vercel.get("builds", []):
        if build.get("src") == f"{source}.py" and "maxDuration" in build.get("config", {}):
            return float(build["config"]["maxDuration"])
    return VERCEL_DEFAULT_MAX_DURATION_S


def _timeout_refusal(platform: str, kind: str, seconds: float, configured: float) -> Refusal:
    reason = f"ran past {seconds:g} s on {platform}"
    if platform == "vercel":
        return _vercel_refusal(504, "FUNCTION_INVOCATION_TIMEOUT", "Gateway Timeout", reason)
    if kind == "cron":
        document = {"errorType": "Sandbox.Timedout",
                    "errorMessage": f"Task timed out after {configured:.2f} seconds"}  # fmt: skip
        body = json.dumps(document).encode()
        return Refusal("lambda", 500, {"content-type": "application/json"}, body, reason)
    if configured < HTTP_API_TIMEOUT_S:  # Lambda's own timeout fails the invocation first
        return _lambda_refusal(reason)
    body = b'{"message":"Service Unavailable"}'
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    return Refusal("lambda", 503, headers, body, reason)


def deadline(
    module: str, kind: Literal["http", "cron"], *, platforms: Sequence[str] | None = None
) -> Deadline:
    """The imitated deadline of one invocation of `module`: the shortest of the imitated
    platforms' (an HTTP invocation on Lambda also ends at the HTTP API's 30 s)."""
    override = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    chosen: Deadline | None = None
    for platform in platforms or imitated():
        configured = float(override) if override else configured_timeout_s(module, platform)
        seconds = configured
        if platform == "lambda" and kind == "http":
            seconds = min(configured, HTTP_API_TIMEOUT_S)
        if chosen is None or seconds < chosen.seconds:
            chosen = Deadline(seconds, _timeout_refusal(platform, kind, seconds, configured))
    assert chosen is not None  # imitated() is never empty
    return chosen


def call_within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, run in its own thread; `Overrun` when it has not returned after `seconds`.
    The platform stops waiting, not the code: the thread is abandoned (a daemon) and finishes
    or blocks on its own, as a timed-out container's work is lost to its client. The caller's
    context variables are carried over."""
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(
        target=context.run, args=(run,), name="keyflash-invocation", daemon=True
    )
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise Overrun(f"still running after {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value
