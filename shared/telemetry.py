"""Structured JSON logs: one line per event, so log platforms can index the fields.

Values are logged as given: callers pass ids and durations, never raw SQL parameters, emails or
connection strings (see `shared.db_url.redact_url`). A line logged while a request is served
carries its `requestId`, the `X-Request-ID` its client got (the only id a client can quote).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from shared.errors import DomainError

logger = logging.getLogger("keyflash")
# The X-Request-ID of the request being served (set by `shared.http.app.RequestContext`).
request_id: ContextVar[str | None] = ContextVar("keyflash_request_id", default=None)

P = ParamSpec("P")
T = TypeVar("T")


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Emit one JSON log line `{"event": ..., "ts": ..., "requestId": ..., **fields}`."""
    if not logger.isEnabledFor(level):
        return
    record = {"event": event, "ts": datetime.now(UTC).isoformat(timespec="milliseconds")}
    if (current := request_id.get()) is not None:
        record["requestId"] = current
    record.update(fields)
    logger.log(level, json.dumps(record, default=str, separators=(",", ":")))


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
