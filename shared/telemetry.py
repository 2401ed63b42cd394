"""Structured JSON logs: one line per event, so log platforms can index the fields.

Values are logged as given: callers pass ids and durations, never raw SQL parameters, emails or
connection strings (see `shared.db_url.redact_url`). A line logged while a request is served
carries its `requestId`, the `X-Request-ID` its client got (the only id a client can quote).

Levels (docs/deploy.md#logs): on Lambda our logger takes `AWS_LAMBDA_LOG_LEVEL`, INFO when it is
unset (the runtime then leaves Python's root at WARNING, where Vercel's sets INFO), so the
documented INFO events are logged on both; libraries keep the root's level. Under Lambda's JSON
log format (`AWS_LAMBDA_LOG_FORMAT=JSON`) the runtime writes each record as an object of its own:
our fields go in it as the object `keyflash`, the message being the event's name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from shared.clock import iso_ms, utcnow
from shared.errors import DomainError

logger = logging.getLogger("keyflash")
# Libraries whose lines carry credentials or personal data, and the lowest level each logs at,
# whatever the root's. botocore's DEBUG lines hold the request's signed headers (the session
# token among them). stripe-python logs only at DEBUG (whole bodies) and INFO (each request, and
# "Stripe v1 API error received" with Stripe's error message, which may quote an email, a
# customer id or a masked key): none of its lines is kept; ours (`stripe_request_failed`) say
# what failed without the message.
CREDENTIAL_LOGGERS = {"botocore": logging.INFO, "stripe": logging.WARNING}
# How many more times a path segment is percent-decoded, looking for an email's `@`.
_DECODINGS = 8


def without_emails(path: str) -> str:
    """`path` with each segment holding an email shown as `…`: personal data neither a log line
    nor a stored usage row has any need of."""
    return "/".join("…" if _holds_email(segment) else segment for segment in path.split("/"))


def _holds_email(segment: str) -> bool:
    """Whether a path segment holds an `@`, however often a client percent-encoded it, or as a
    compatibility form (U+FF20 full-width, U+FE6B small). A segment still decoding after
    `_DECODINGS` rounds counts as one too. Imports on first use: only a 404 or a dev log line
    asks, so no function's cold start pays for them."""
    import unicodedata
    from urllib.parse import unquote

    for _ in range(_DECODINGS):
        if "@" in unicodedata.normalize("NFKC", segment):
            return True
        decoded = unquote(segment)
        if decoded == segment:
            return False
        segment = decoded
    return True


# The X-Request-ID of the request being served (set by `shared.http.app.RequestContext`).
request_id: ContextVar[str | None] = ContextVar("keyflash_request_id", default=None)


def new_request_id() -> str:
    """A fresh X-Request-ID (`req_` and 16 hex digits), the one handle a client can quote."""
    return f"req_{secrets.token_hex(8)}"


P = ParamSpec("P")
T = TypeVar("T")


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Emit one JSON log line `{"event": ..., "ts": ..., "requestId": ..., **fields}`."""
    if not logger.isEnabledFor(level):
        return
    record = {"event": event, "ts": iso_ms(utcnow())}  # the API's form: one parser for both
    if (current := request_id.get()) is not None:
        record["requestId"] = current
    record.update(fields)
    line = json.dumps(record, default=str, separators=(",", ":"))
    if os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON":
        logger.log(level, event, extra={"keyflash": json.loads(line)})  # only JSON's types
    else:
        logger.log(level, line)


def lambda_level() -> int:
    """The level `AWS_LAMBDA_LOG_LEVEL` names (TRACE is DEBUG, as the runtime takes it); INFO
    when it names none."""
    name = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    return logging.getLevelNamesMapping().get("DEBUG" if name == "TRACE" else name, logging.INFO)


def _set_levels() -> None:
    """Run at import, which on both platforms follows their runtime's logging set-up. A level
    someone set on our logger (the dev stack, a test) is kept."""
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and logger.level == logging.NOTSET:
        logger.setLevel(lambda_level())
    root = logging.getLogger().getEffectiveLevel()
    for name, floor in CREDENTIAL_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root))


_set_levels()


def log_database_operation(name: str, duration_ms: float, success: bool, **context: Any) -> None:
    """The original app's per-operation database log, as structured JSON."""
    log_event(
        "database_operation",
        level=logging.INFO if success else logging.WARNING,
        operation=name,
        durationMs=round(duration_ms, 2),
        success=success,
        **context,
    )


def database_operation(name: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a repository function so each call logs its name, duration and outcome."""

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        @wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except DomainError as outcome:
                elapsed = (time.perf_counter() - started) * 1000
                log_database_operation(name, elapsed, True, outcome=type(outcome).__name__)
                raise
            except Exception as error:
                elapsed = (time.perf_counter() - started) * 1000
                log_database_operation(name, elapsed, False, error=type(error).__name__)
                raise
            log_database_operation(name, (time.perf_counter() - started) * 1000, True)
            return result

        return wrapper

    return decorate
