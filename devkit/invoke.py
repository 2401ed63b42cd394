"""`keyflash invoke`: call one function's Lambda `lambda_handler` in-process with a real event.

HTTP functions get an API Gateway HTTP API (v2) event built from --method/--path/--body/
--header (or any event loaded from a file), crons an EventBridge schedule event. The handler
is the deployed entry point (Mangum for HTTP), so this exercises what Lambda runs. An HTTP
event or result over the imitated platform's payload limit (`devkit.platform_limits`,
`KEYFLASH_PLATFORM`) is answered with the platform's refusal, and the reason is printed.

Timing: run 1 is "cold" for the function — its module is imported then (after the CLI set up
the database and Redis) and its first call opens the database connection. Libraries the CLI
itself already loaded (SQLAlchemy, when it had to migrate) are not counted, so a real Lambda
cold start is slower by the interpreter's start and those imports.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from devkit import events, platform_limits
from devkit.console import CliError, paint
from devkit.layout import CRON_PACKAGE, FUNCTIONS_PACKAGE, cron_modules, http_functions

MAX_REPEAT = 1000
_QUERY_AS_SENT = "!$&'()*+,;=:@/?%"  # RFC 3986 query characters (and escapes) a client keeps


@dataclass(frozen=True)
class Target:
    kind: Literal["http", "cron"]
    name: str  # as shown: "health", "cron.cleanup"
    module: str  # functions.health, functions.cron.cleanup


def resolve_target(name: str) -> Target:
    """The function called `name`: `health`, `functions/health.py`, `cron.cleanup`, `cleanup`
    (a bare job name works when no HTTP function has it)."""
    wanted = name.strip().removesuffix(".py").replace("/", ".")
    wanted = wanted.removeprefix(f"{FUNCTIONS_PACKAGE}.")
    http, crons = http_functions(), cron_modules()
    if wanted.startswith(f"{CRON_PACKAGE}."):
        job = wanted.removeprefix(f"{CRON_PACKAGE}.")
        if job in crons:
            return Target("cron", f"{CRON_PACKAGE}.{job}", f"{FUNCTIONS_PACKAGE}.{wanted}")
    elif wanted in http:
        return Target("http", wanted, f"{FUNCTIONS_PACKAGE}.{wanted}")
    elif wanted in crons:
        return Target("cron", f"{CRON_PACKAGE}.{wanted}", f"{FUNCTIONS_PACKAGE}.cron.{wanted}")
    known = ", ".join([*http, *(f"{CRON_PACKAGE}.{job}" for job in crons)])
    raise CliError(f"no function {name!r} in functions/ (functions: {known})", code=2)


@dataclass(frozen=True)
class Request:
    """What to send an HTTP function when no event file is given."""

    method: str | None = None
    path: str | None = None
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    user: str | None = None


def load_event(source: str) -> dict[str, Any]:
    """An event from a JSON file (or `-` for stdin); a clear error for anything else."""
    label = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except FileNotFoundError:
        raise CliError(f"--event: {source} does not exist", code=2) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"--event: cannot read {label}: {error}", code=2) from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(
            f"--event: {label} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})",
            code=2,
        ) from None
    if not isinstance(event, dict):
        raise CliError(
            f"--event: {label} holds a JSON {type(event).__name__}; a Lambda event is an object",
            code=2,
        )
    return event


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {value!r} is not NAME:VALUE", code=2)
        headers[name.strip().lower()] = content.strip()
    return headers


def read_body(value: str | None) -> str | None:
    """`--body TEXT`, or `--body @FILE` (curl's convention) for a file's contents."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text()
    except OSError as error:
        raise CliError(f"--body {value}: {error.strerror or error}", code=2) from None


@dataclass
class Run:
    status: int | None
    elapsed_ms: float
    response: Any
    refused: str | None = None  # the platform limit that replaced the response, if any


@dataclass
class Invocation:
    target: Target
    description: str
    import_ms: float
    runs: list[Run]


def invoke(
    target: Target,
    *,
    event_file: dict[str, Any] | None,
    request: Request,
    repeat: int,
    token_for: Callable[[str], str],
) -> Invocation:
    """Import the module (timed), then call its handler `repeat` times (each timed)."""
    if not 1 <= repeat <= MAX_REPEAT:
        raise CliError(f"--repeat must be between 1 and {MAX_REPEAT}", code=2)
    started = time.perf_counter()
    module = importlib.import_module(target.module)
    import_ms = (time.perf_counter() - started) * 1000
    handler = getattr(module, "lambda_handler", None)
    if not callable(handler):
        raise CliError(f"{target.module} has no `lambda_handler` to invoke")
    if event_file is not None:
        description = "event from file"

        def make_event() -> dict[str, Any]:
            return copy.deepcopy(event_file)
    elif target.kind == "cron":
        description = "EventBridge schedule event"

        def make_event() -> dict[str, Any]:
            return events.schedule(rule=f"keyflash-{target.name.replace('.', '-')}")
    else:
        method, path, query, body, headers = _http_request(module, target, request, token_for)
        description = f"{method} {path}" + (f"?{query}" if query else "")

        def make_event() -> dict[str, Any]:
            return events.http_api_v2(method, path, headers=headers, query=query, body=body)

    runs = []
    context_name = f"keyflash-functions-dev-{target.name.replace('.', '-')}"
    deadline = platform_limits.deadline(target.module, target.kind)
    for _ in range(repeat):
        event = make_event()
        context = events.lambda_context(context_name, timeout_ms=int(deadline.seconds * 1000))
        refusal = _request_refusal(target, event)
        if refusal is not None:
            runs.append(Run(refusal.status, 0.0, _as_result(refusal), refusal.reason))
            continue
        began = time.perf_counter()
        try:
            response = platform_limits.call_within(
                deadline.seconds, functools.partial(_in_own_loop, handler, event, context)
            )
        except platform_limits.Overrun:
            elapsed = (time.perf_counter() - began) * 1000
            timed_out = _timeout_result(target, deadline.refusal)
            runs.append(Run(deadline.refusal.status, elapsed, timed_out, deadline.refusal.reason))
            continue
        except Exception as error:
            raise CliError(
                f"{target.module}.lambda_handler raised {type(error).__name__}: {error}"
            ) from error
        elapsed = (time.perf_counter() - began) * 1000
        refusal = _response_refusal(target, response)
        if refusal is not None:
            runs.append(Run(refusal.status, elapsed, _as_result(refusal), refusal.reason))
            continue
        status = response.get("statusCode") if isinstance(response, dict) else None
        runs.append(Run(status if isinstance(status, int) else None, elapsed, response))
    return Invocation(target, description, import_ms, runs)


def _text_bytes(body: Any) -> bytes:
    """A text body's bytes for the size checks; a lone surrogate (which the handler refuses
    with a 400) is counted, not a crash of the tool."""
    return str(body).encode("utf-8", "surrogatepass")


def _request_refusal(target: Target, event: dict[str, Any]) -> platform_limits.Refusal | None:
    if target.kind != "http":
        return None
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else _text_bytes(body)
    return platform_limits.request_refusal(raw, event_bytes=len(json.dumps(event)))


def _response_refusal(target: Target, response: Any) -> platform_limits.Refusal | None:
    if target.kind != "http" or not isinstance(response, dict):
        return None
    body = response.get("body") or ""
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else _text_bytes(body)
    return platform_limits.response_refusal(
        int(response.get("statusCode") or 500),
        {str(k): str(v) for k, v in (response.get("headers") or {}).items()},
        raw,
        result_bytes=platform_limits.lambda_document_bytes(response),
    )


def _in_own_loop(handler: Callable[..., Any], event: Any, context: Any) -> Any:
    """Call the handler on a fresh event loop: Mangum runs on the thread's loop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return handler(event, context)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _timeout_result(target: Target, refusal: platform_limits.Refusal) -> dict[str, Any]:
    """What the invoker gets back from a timed-out invocation: Lambda's error document for a
    scheduled one, else the client's answer."""
    if target.kind == "cron" and refusal.platform == "lambda":
        document: dict[str, Any] = json.loads(refusal.body)
        return document
    return _as_result(refusal)


def _as_result(refusal: platform_limits.Refusal) -> dict[str, Any]:
    """The refusal in a Lambda result's shape, as the client would receive it."""
    return {
        "statusCode": refusal.status,
        "headers": refusal.headers,
        "body": refusal.body.decode(),
        "isBase64Encoded": False,
    }


def _http_request(
    module: Any, target: Target, request: Request, token_for: Callable[[str], str]
) -> tuple[str, str, str, str | None, dict[str, str]]:
    """Method, path, query, body and headers, defaulting to the function's first route. The
    query is sent as given, percent-encoded as a client would (spaces, non-ASCII), its escapes
    kept: API Gateway's `rawQueryString`, which the handler checks for UTF-8 itself."""
    from fastapi.routing import APIRoute

    routes = [r for r in module.app.routes if isinstance(r, APIRoute)]
    path = request.path
    if path is None:
        templates = [r.path for r in routes]
        plain = [p for p in templates if "{" not in p]
        if not plain:
            example = templates[0] if templates else "/api/…"
            raise CliError(
                f"{target.name} takes path parameters: pass --path, e.g. --path {example}",
                code=2,
            )
        path = plain[0]
    parts = urlsplit(path)
    path, query = parts.path, quote(parts.query, safe=_QUERY_AS_SENT)
    method = request.method or ""  # as given: methods are case-sensitive (RFC 9110 §9.1)
    if not method:
        offered = sorted({m for r in routes if r.path_regex.match(path) for m in (r.methods or ())})
        method = "GET" if "GET" in offered or not offered else offered[0]
    headers = {"user-agent": "keyflash-invoke/1.0", **request.headers}
    if request.user:
        headers["authorization"] = f"Bearer {token_for(request.user)}"
    body = request.body
    if body is not None and "content-type" not in headers:
        headers["content-type"] = "application/json" if _is_json(body) else "text/plain"
    return method, path, query, body, headers


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def render(invocation: Invocation) -> str:
    """Status, headers and body of the last run, then the timings."""
    last = invocation.runs[-1]
    lines = [paint(f"{invocation.target.module}.lambda_handler  ({invocation.description})", "dim")]
    if last.refused:
        lines.append(paint(f"refused by the platform: {last.refused}", "red"))
    response = last.response
    if invocation.target.kind == "http" and isinstance(response, dict):
        status = response.get("statusCode")
        colour = "green" if isinstance(status, int) and status < 400 else "red"
        lines.append(paint(f"status {status}", colour))
        headers = {str(k).lower(): str(v) for k, v in (response.get("headers") or {}).items()}
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers[str(name).lower()] = ", ".join(str(v) for v in values)
        lines += [f"{name}: {value}" for name, value in sorted(headers.items())]
        lines += [f"set-cookie: {cookie}" for cookie in response.get("cookies") or []]
        lines += ["", _pretty_body(response)]
    else:
        lines += ["result:", json.dumps(response, indent=2, default=str)]
    lines.append("")
    lines += _timings(invocation)
    return "\n".join(lines)


def _pretty_body(response: dict[str, Any]) -> str:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(body)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(raw)} bytes of binary body>"
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return str(body)


def _timings(invocation: Invocation) -> list[str]:
    runs = invocation.runs
    first = runs[0]
    lines = [
        f"run 1 (cold): {first.elapsed_ms:.1f} ms call + {invocation.import_ms:.0f} ms import"
        + (f"  status {first.status}" if first.status is not None else "")
    ]
    warm = [run.elapsed_ms for run in runs[1:]]
    if len(runs) <= 10:
        lines += [
            f"run {n} (warm): {run.elapsed_ms:.1f} ms"
            + (f"  status {run.status}" if run.status is not None else "")
            for n, run in enumerate(runs[1:], start=2)
        ]
    if warm:
        lines.append(
            f"warm: {len(warm)} runs, median {statistics.median(warm):.1f} ms, "
            f"min {min(warm):.1f} ms, max {max(warm):.1f} ms "
            f"(cold call was {first.elapsed_ms / max(statistics.median(warm), 0.001):.0f}x slower)"
        )
    return lines
