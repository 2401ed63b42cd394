"""API usage: one row per HTTP request, written in bulk where requests are batched."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.ids import new_cuid
from shared.models import ApiUsage
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
def record(session: Session, request: Request) -> None:
    record_many(session, [request])


def insert_statement(requests: list[Request]) -> Any:
    """One multi-row INSERT for `requests` (also embedded by other writes, see search_history)."""
    now = utcnow()
    return insert(ApiUsage).values([_values(r, now) for r in requests])


@database_operation("recordApiUsageMany")
def record_many(session: Session, requests: list[Request]) -> None:
    """All rows in one multi-row INSERT: one round trip however many requests."""
    if requests:
        session.execute(insert_statement(requests))
