"""System metrics: written in batches by the metrics cron, read as time-bucketed series."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, insert, literal, select

from shared.clock import utcnow
from shared.db import Conn
from shared.ids import new_cuid
from shared.models import UTCDateTime
from shared.models.system_metrics import SystemMetric
from shared.telemetry import database_operation

Bucket = Literal["minute", "hour", "day"]


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    value: float
    tags: dict[str, Any] | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class Point:
    bucket: datetime
    avg: float
    min: float
    max: float
    count: int


@database_operation("recordMetrics")
def record_many(conn: Conn, samples: list[Sample]) -> None:
    """All samples in one multi-row INSERT."""
    if not samples:
        return
    now = utcnow()
    rows = [
        {
            "id": new_cuid(),
            "metric": s.metric,
            "value": s.value,
            "tags": s.tags,
            "timestamp": s.timestamp or now,
        }
        for s in samples
    ]
    conn.session.execute(insert(SystemMetric).values(rows))


@database_operation("queryMetricSeries")
def series(
    conn: Conn, metric: str, *, start: datetime, end: datetime, bucket: Bucket
) -> list[Point]:
    """avg/min/max/count per `date_trunc(bucket)` over [start, end), oldest first."""
    truncated = func.date_trunc(literal(bucket), SystemMetric.timestamp, type_=UTCDateTime()).label(
        "bucket"
    )
    statement = (
        select(
            truncated,
            func.avg(SystemMetric.value),
            func.min(SystemMetric.value),
            func.max(SystemMetric.value),
            func.count(),
        )
        .where(
            SystemMetric.metric == metric,
            SystemMetric.timestamp >= start,
            SystemMetric.timestamp < end,
        )
        .group_by(truncated)
        .order_by(truncated)
    )
    return [
        Point(bucket=b, avg=float(a), min=float(lo), max=float(hi), count=n)
        for b, a, lo, hi, n in conn.session.execute(statement)
    ]
