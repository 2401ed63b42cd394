"""A cron job's two platform entries, without a web framework: `lambda_handler` and `app`.

- Lambda: `lambda_handler(event, context)` for EventBridge `schedule` events (Mangum cannot take
  them). Options come from a manual invoke's payload (`{"full": true}`); a scheduled event's
  `detail` is empty. Failures raise, so the invocation is recorded as failed.
- Vercel: its Python runtime serves `app` (it would take a `handler` first, and refuse it
  unless it is a `BaseHTTPRequestHandler` subclass: hence `lambda_handler`). Vercel Cron
  sends `GET <path>` with `Authorization: Bearer $CRON_SECRET`; anything else answers 401 in
  the API's error envelope, and an unset CRON_SECRET answers 500 (refusing is safer than
  letting anyone start a job). Query parameters become options (`?full=true`).

The ASGI callable is a few lines on purpose: importing Starlette or FastAPI would add their
import time to every cron cold start for one route.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from shared.config import get_settings
from shared.cron.runner import Job, run_job
from shared.db import DatabaseUnavailableError
from shared.envelope import (
    BEARER_CHALLENGE,
    GENERIC_500,
    GENERIC_503,
    INVALID_TOKEN_CHALLENGE,
    envelope,
)
from shared.one_value import repeated
from shared.telemetry import log_event

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
LambdaHandler = Callable[[Any, Any], dict[str, Any]]

UNAUTHORIZED = "Missing or invalid cron secret"


def event_options(event: Any) -> dict[str, Any]:
    """Options from a Lambda payload: a manual invoke's own keys; nothing from a schedule."""
    if not isinstance(event, Mapping) or event.get("source") == "aws.events":
        return {}
    return {str(key): value for key, value in event.items()}


def make_lambda_handler(job: Job) -> LambdaHandler:
    """`lambda_handler(event, context)` running `job` within the invocation's remaining time."""

    def handler(event: Any, context: Any) -> dict[str, Any]:
        return run_job(job, context=context, options=event_options(event))

    handler.__name__ = f"{job.name}_handler"
    handler.__doc__ = f"Lambda entry of the {job.name} cron (EventBridge schedule events)."
    return handler


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value)
    return b""


def authorized(scope: Scope, secret: str) -> bool:
    """Whether the request carries `Authorization: Bearer <secret>`, the scheme in any case
    (RFC 9110 §11.1), the secret compared in constant time."""
    scheme, _, token = _header(scope, b"authorization").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token, secret.encode())


def _challenge(scope: Scope) -> str:
    """A 401's challenge: a Bearer credential came and was not the secret, or none came."""
    scheme, _, token = _header(scope, b"authorization").partition(b" ")
    refused = scheme.lower() == b"bearer" and bool(token.strip())
    return INVALID_TOKEN_CHALLENGE if refused else BEARER_CHALLENGE


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_json(
    send: Send, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    raw = json.dumps(body, default=str, separators=(",", ":")).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(raw)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def asgi_app(job: Job) -> ASGIApp:
    """A bare ASGI app answering Vercel Cron's authenticated GET by running `job`."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            secret = get_settings().cron_secret
        except Exception as error:  # ConfigurationError: the message names the variable
            log_event(
                "cron_http_misconfigured", level=logging.ERROR, job=job.name, reason=str(error)
            )
            await _send_json(send, 500, envelope(500, GENERIC_500))
            return
        if not secret:
            log_event(
                "cron_secret_not_set",
                level=logging.ERROR,
                job=job.name,
                fix="set CRON_SECRET in the project's environment variables",
            )
            await _send_json(send, 500, envelope(500, GENERIC_500))
            return
        several = repeated(scope.get("headers") or [])
        if several is not None:  # as every function answers (`guards.OneValue`)
            await _send_json(send, 400, envelope(400, several))
            return
        if not authorized(scope, secret):
            log_event("cron_http_unauthorized", level=logging.WARNING, job=job.name)
            challenge = {"WWW-Authenticate": _challenge(scope)}
            await _send_json(send, 401, envelope(401, UNAUTHORIZED), challenge)
            return
        if scope.get("method") != "GET":
            await _send_json(
                send, 405, envelope(405, "Use GET (as Vercel Cron does)"), {"Allow": "GET"}
            )
            return
        query = scope.get("query_string") or b""
        options = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
        try:
            summary = await asyncio.to_thread(run_job, job, options=options)
        except DatabaseUnavailableError:
            await _send_json(send, 503, envelope(503, GENERIC_503), {"Retry-After": "60"})
            return
        except Exception:  # logged by the runner (cron_job_failed) with the error's type
            await _send_json(send, 500, envelope(500, GENERIC_500))
            return
        await _send_json(send, 200, summary)

    app.__doc__ = f"Vercel entry of the {job.name} cron (GET with Bearer $CRON_SECRET)."
    return app
