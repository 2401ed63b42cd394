"""API usage: one row per HTTP request, written in bulk where requests are batched.

`record`/`record_many` use the ORM; `wire_insert` is the same row as SQL text and text
parameters for the HTTP layer's unawaited send (`shared.http.usage`), which bypasses SQLAlchemy
so that it can go out after the response without waiting for its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, insert

from shared.clock import utcnow
from shared.db import Conn
from shared.ids import new_cuid
from shared.models.api_usage import ApiUsage
from shared.repositories.rows import insert_when
from shared.telemetry import database_operation


@dataclass(frozen=True, slots=True)
class Request:
    endpoint: str
    method: str
    status_code: int
    duration_ms: int
    user_id: str | None = None
    ip_address: str | None = None  # already reduced (see the PII rule)
    user_agent: str | None = None
    timestamp: datetime | None = None


def _values(request: Request, now: datetime) -> dict[str, object]:
    return {
        "id": new_cuid(),
        "user_id": request.user_id,
        "endpoint": request.endpoint,
        "method": request.method,
        "status_code": request.status_code,
        "duration": request.duration_ms,
        "ip_address": request.ip_address,
        "user_agent": request.user_agent,
        "timestamp": request.timestamp or now,
    }


@database_operation("recordApiUsage")
def record(conn: Conn, request: Request) -> None:
    record_many(conn, [request])


def insert_statement(requests: list[Request]) -> Any:
    """One multi-row INSERT for `requests` (also embedded by other writes, see search_history)."""
    now = utcnow()
    return insert(ApiUsage).values([_values(r, now) for r in requests])


def insert_statement_when(request: Request, condition: ColumnElement[bool]) -> Insert:
    """The INSERT of `request`'s row only while `condition` holds (embedded by search_history)."""
    return insert_when(ApiUsage, _values(request, utcnow()), condition)


@database_operation("recordApiUsageMany")
def record_many(conn: Conn, requests: list[Request]) -> None:
    """All rows in one multi-row INSERT: one round trip however many requests."""
    if requests:
        conn.session.execute(insert_statement(requests))


# The wire form's columns, in the order of `_values` (tests pin them to the table's).
WIRE_COLUMNS = (
    ("id", "id"),
    ("user_id", "userId"),
    ("endpoint", "endpoint"),
    ("method", "method"),
    ("status_code", "statusCode"),
    ("duration", "duration"),
    ("ip_address", "ipAddress"),
    ("user_agent", "userAgent"),
    ("timestamp", "timestamp"),
)


def wire_row(request: Request) -> tuple[bytes | None, ...]:
    """One row's parameters in text format, with its id and timestamp fixed now: a row re-sent
    later keeps both (so `ON CONFLICT (id, "timestamp") DO NOTHING` makes a re-send harmless)."""
    values = _values(request, utcnow())
    moment = values["timestamp"]
    assert isinstance(moment, datetime)
    values["timestamp"] = moment.astimezone(UTC).replace(tzinfo=None).isoformat()
    return tuple(
        None if values[key] is None else str(values[key]).encode() for key, _ in WIRE_COLUMNS
    )


def wire_insert(rows: list[tuple[bytes | None, ...]]) -> tuple[bytes, list[bytes | None]]:
    """(SQL, parameters) inserting `rows` in one statement, idempotent on the row ids."""
    width = len(WIRE_COLUMNS)
    groups = ", ".join(
        "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
        for r in range(len(rows))
    )
    columns = ", ".join(f'"{name}"' for _, name in WIRE_COLUMNS)
    sql = (
        f"INSERT INTO api_usage ({columns}) VALUES {groups} "
        'ON CONFLICT (id, "timestamp") DO NOTHING'
    )
    return sql.encode(), [value for row in rows for value in row]
