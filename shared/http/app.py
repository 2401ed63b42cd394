"""The app factory every HTTP function uses, and its Lambda handler.

A function module does `app = create_app(...)`, adds its routes, and ends with
`lambda_handler = make_lambda_handler(app)`: Vercel and the emulator serve `app`, Lambda calls
`lambda_handler` (never `handler`, which Vercel's runtime would take before `app`).
Nothing here opens a connection: the engine is created on first use and cached per container
(Mangum runs lifespan on every invocation, so it is off).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import db, snapstart, telemetry
from shared.config import ConfigurationError, get_settings
from shared.db import DatabaseUnavailableError
from shared.db_url import DatabaseUrlError
from shared.errors import EMAIL_IN_USE, AccountDeletedError, EmailInUseError
from shared.http import openapi, security_headers
from shared.http.client_ip import client_ip, stored_ip, stored_user_agent
from shared.http.errors import ApiError, api_error_response, error_response
from shared.http.guards import BodyLimit, ContentCoding, Cors, Csrf, OneValue, UrlEncoding
from shared.http.invocation import database_within_invocation
from shared.http.lambda_events import LambdaHandler
from shared.http.methods import Head, method_not_allowed, path_routes, served
from shared.http.security_headers import API_VERSION, every_answer
from shared.telemetry import log_event, without_emails

# Whether a function of this process has frozen its INIT (`make_lambda_handler`).
_init_frozen = False


def create_app(
    *, title: str, summary: str, record_usage: bool = True, limit_body: bool = True
) -> FastAPI:
    """A FastAPI app with the shared envelope, guards and per-request usage record.

    `limit_body=False` (webhooks) leaves a body's size to the platform (Vercel 4.5 MB, Lambda's
    6 MB event): a provider retries an event we refuse for days and then drops it, so a webhook
    never refuses one the platform let in.

    The OpenAPI document is built on demand (`app.openapi()`), never served by the function;
    it declares the envelope for every error status the shared layer can answer
    (`shared.http.openapi`). A path with a trailing slash is not a route: it gets the 404
    envelope, not a redirect (every refusal is an envelope; a redirect would also point a
    client at a path another function may own).
    """
    app = FastAPI(
        title=title,
        summary=summary,
        version=API_VERSION,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    openapi.install(app)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(DatabaseUnavailableError, _database_unavailable)
    app.add_exception_handler(EmailInUseError, _email_in_use)  # type: ignore[arg-type]
    app.add_exception_handler(AccountDeletedError, _account_deleted)  # type: ignore[arg-type]
    # Added last = outermost: RequestContext sees every response, including guard refusals,
    # and Cors, outside it, adds its headers to every answer, its last-resort 500 included;
    # Head, outside all, makes a HEAD the GET it stands for and drops every answer's body.
    app.add_middleware(UrlEncoding)
    if limit_body:
        app.add_middleware(BodyLimit)
    app.add_middleware(ContentCoding)
    app.add_middleware(Csrf, settings=get_settings)
    app.add_middleware(OneValue)  # before CSRF and auth read either header
    app.add_middleware(RequestContext, record_usage=record_usage)
    app.add_middleware(Cors, settings=get_settings)
    app.add_middleware(Head)
    return app


def make_lambda_handler(app: FastAPI) -> LambdaHandler:
    """API Gateway HTTP API (v2), REST API (v1) and function URL events → `app` (Mangum, made to
    answer every event shape: `shared.http.lambda_events`); on Lambda, the
    SnapStart hooks (`shared.snapstart`) are registered here, during INIT.

    Called last in a function's module, so INIT ends here. What INIT built (modules, classes,
    the app: about 110,000 objects) lives as long as the container, so it is frozen out of the
    garbage collector's reach: otherwise the next full collection, which lands in the first
    request of most functions, walks all of it (40 to 70 ms on 2 cores), as would any later
    one. Only the first function of a process freezes: tests and the emulator load many, and
    must not pin what each other's requests left behind."""
    snapstart.register()
    _install_shutdown_flush()
    global _init_frozen
    handler = LambdaHandler(app, lifespan="off")
    if not _init_frozen:  # the process's first function: a deployed one has no other
        gc.freeze()
        _init_frozen = True
    return handler


def _flush_usage() -> None:
    """Confirm or write the container's unconfirmed `api_usage` rows (`shared.http.usage`)."""
    usage = sys.modules.get("shared.http.usage")  # not imported: no row was ever recorded
    if usage is not None:
        usage.flush()


def _install_shutdown_flush() -> None:
    """`_flush_usage` at interpreter exit and, on Lambda, at SIGTERM, which Lambda sends the
    runtime before ending an environment only when an extension is registered (then it waits up
    to 300 ms, 500 ms with an internal extension, before SIGKILL); without one the environment is
    killed without notice, so the guarantee must not depend on this (docs/performance.md)."""
    atexit.register(_flush_usage)
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # someone else owns shutdown; atexit still flushes

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        _flush_usage()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


async def _api_error(request: Request, error: ApiError) -> Response:
    if error.status >= 500:  # our own words, never a value: the log's reason for this answer
        request.state.failure = error.message
    return api_error_response(error)


async def _email_in_use(request: Request, error: EmailInUseError) -> Response:
    """Provisioning or an email change met another account's address, wherever it happened."""
    return api_error_response(ApiError(409, EMAIL_IN_USE))


async def _account_deleted(request: Request, error: AccountDeletedError) -> Response:
    """A session token that outlived its user's deletion in Clerk: signed out, and this
    request's usage row names no one (the erased id must not reappear)."""
    request.state.user_id = None
    from shared.http.auth import unauthenticated  # loaded by every route that authenticates

    return api_error_response(unauthenticated(request))


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    issues = error.errors()
    if any(issue.get("type") == "json_invalid" for issue in issues):
        return error_response(400, "Invalid JSON payload")
    return error_response(400, validation_message(issues), label="Validation Error")


# At most this many distinct messages are listed; the rest are counted (", and K more"). A body
# far below the size cap can fail on every one of 150,000 items: listing them all made a 400 of
# several megabytes, which Lambda (6 MB) and Vercel (4.5 MB) refuse, so the client got a 500.
VALIDATION_MESSAGES_SHOWN = 10


def validation_message(issues: Any) -> str:
    """Every issue's message joined with ", " (the original's format), duplicates once, at most
    VALIDATION_MESSAGES_SHOWN of them followed by ", and K more" (K distinct messages not shown).
    Our validators raise `PydanticCustomError` with the original wording; pydantic's own
    messages get the field path. Only the shown messages are formatted: the rest are counted by
    a key (the type and the message, or the location and the message), never formatted."""
    shown: dict[str, None] = {}
    rest: set[tuple[Any, ...]] = set()
    for issue in issues:
        custom = issue.get("type", "").startswith("kf_")
        if custom and issue["msg"] in shown:
            continue
        if len(shown) >= VALIDATION_MESSAGES_SHOWN:
            key = (issue["msg"],) if custom else (tuple(issue.get("loc", ())), issue["msg"])
            rest.add(key)
            continue
        if custom:
            shown[issue["msg"]] = None
            continue
        path = ".".join(str(part) for part in issue.get("loc", ()) if part not in ("body", "query"))
        shown[f"{path}: {issue['msg']}" if path else issue["msg"]] = None
    message = ", ".join(shown)
    return f"{message}, and {len(rest)} more" if rest else message


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    if error.status_code == 405:
        return api_error_response(method_not_allowed(served(request.scope)))
    if error.status_code == 404:
        return error_response(404, "Not found", label="Not Found")
    if error.status_code == 400:
        return error_response(400, "Invalid JSON payload")
    return error_response(error.status_code, str(error.detail))


async def _database_unavailable(request: Request, error: Exception) -> Response:
    request.state.failure = "database_unavailable"
    # No usage row for this request: the write would most likely wait out a second retry
    # budget before failing too, doubling the time to this 503 (found by tests/faults).
    request.state.database_unavailable = True
    return error_response(503, "unavailable")


class RequestContext:
    """Request id, platform headers, the last-resort 500 (503 for a statement the server
    cancelled), one `api_usage` row per request, and one `request_failed` line for every 5xx
    answer (the request id is on every line logged while the request is served:
    `shared.telemetry.request_id`). The request's database round trips end before its
    invocation does (`database_within_invocation`)."""

    def __init__(self, app: ASGIApp, *, record_usage: bool) -> None:
        self.app = app
        self.record_usage = record_usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = telemetry.new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        logged_as = telemetry.request_id.set(request_id)
        status = 500
        response_started = False
        production = security_headers.production()
        shared_headers = every_answer(request_id, production=production)
        consistency = _consistency(scope)
        reset = db.consistency.set(consistency) if consistency is not None else None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in shared_headers.items():
                    headers.setdefault(name, value)
                # Once the rate-limit check counted the request, every answer tells its window.
                for name, value in state.get("rate_limit_headers", {}).items():
                    headers.setdefault(name, value)
                if consistency is not None:
                    from shared.http import consistency as tokens

                    tokens.add_token(headers, consistency, secure=production)
            await send(message)

        try:
            with database_within_invocation(scope):
                await self.app(scope, receive, send_with_headers)
        except Exception as error:
            driver_error = getattr(error, "orig", None)  # SQLAlchemy's wrapped driver error
            configuration = isinstance(error, ConfigurationError | DatabaseUrlError)
            # A statement the server cancelled (its statement or lock timeout: another writer
            # held a row) is the database refusing the work for now: a 503, as when it is down.
            cancelled = db.cancelled_statement(error)
            failure = 500 if cancelled is None else 503
            # A setting the core cannot use: its message names the variable, never its value
            # (the log is all a deployment has to find which one).
            reason = str(error) if configuration else cancelled
            log_event(
                "request_failed",
                level=logging.ERROR,
                status=failure,
                path=scope["path"],
                error=type(error).__name__,
                # The driver's class and SQLSTATE, never its message (which may quote data).
                **(
                    {"cause": type(driver_error).__name__, "sqlstate": driver_error.sqlstate}
                    if isinstance(driver_error, psycopg.Error)
                    else {}
                ),
                configuration=configuration,
                **({"reason": reason} if reason else {}),
            )
            if response_started:
                raise
            message = "internal" if cancelled is None else "unavailable"
            await error_response(failure, message)(scope, receive, send_with_headers)
        else:
            if status >= 500:
                log_event(
                    "request_failed",
                    level=logging.ERROR,
                    status=status,
                    path=scope["path"],
                    reason=state.get("failure"),
                )
        finally:
            telemetry.request_id.reset(logged_as)
            if reset is not None:
                db.consistency.reset(reset)
        duration_ms = round((time.perf_counter() - started) * 1000)
        if (
            self.record_usage
            and not state.get("usage_recorded")
            and not state.get("database_unavailable")
        ):
            _record_usage(scope, state, status, duration_ms)


def _consistency(scope: Scope) -> db.Consistency | None:
    """The request's read-your-writes state, only while reads may go to a replica (the token
    module is imported only then)."""
    try:
        if get_settings().database_read_url is None:
            return None
    except ConfigurationError:
        return None
    from shared.http import consistency as tokens

    return tokens.from_request(Headers(scope=scope))


def _route_template(scope: Scope) -> str:
    """The template of the route the request's path belongs to (`/api/searches/{search_id}`),
    never its ids (docs/http-contract.md "Usage"). A request a guard answered before FastAPI
    routed it (a preflight, a CSRF refusal, a 413) has no `route` in its scope: the template is
    the app's route whose path matches. A path no route serves (a 404) is kept as sent, but
    for a segment holding an email (`without_emails`, as the dev log shows it)."""
    route = scope.get("route")
    if route is None and isinstance(scope.get("app"), FastAPI):
        route = next(iter(path_routes(scope)), None)
    template = getattr(route, "path", None)
    return without_emails(scope["path"]) if template is None else str(template)


def _record_usage(scope: Scope, state: dict[str, Any], status: int, duration_ms: int) -> None:
    """Write the request's `api_usage` row; analytics must never fail a request."""
    # Imported here: it loads the ORM mappers, which a function recording no usage (health)
    # never needs; the others pay for it on their first request.
    from shared.http import usage
    from shared.repositories import api_usage

    try:
        settings = get_settings()
        headers = Headers(scope=scope)
        peer = scope.get("client")
        ip = client_ip(headers, peer[0] if peer else None, trust_proxy=settings.proxy_trust)
        row = api_usage.Request(
            endpoint=_route_template(scope),
            method=scope["method"],
            status_code=status,
            duration_ms=duration_ms,
            user_id=state.get("user_id"),
            ip_address=stored_ip(ip, settings.ip_storage),
            user_agent=stored_user_agent(headers.get("user-agent")),
        )
        usage.record(row)  # sent now, answer read at the next checkout: no wait
    except Exception as error:
        log_event("usage_record_failed", level=logging.WARNING, error=type(error).__name__)
