"""System metrics: written in batches by the metrics cron, read as time-bucketed series."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Numeric, Text, cast, func, insert, literal, select

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
    """One bucket: `avg`/`min`/`max` of its `count` finite values (None when it has none), and
    `non_finite` values (NaN, ±Infinity) left out of them."""

    bucket: datetime
    avg: float | None
    min: float | None
    max: float | None
    count: int
    non_finite: int


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
    """avg/min/max/count of the finite values per `date_trunc(bucket)` over [start, end), oldest
    first, with the number of non-finite ones.

    `double precision` takes NaN and ±Infinity from any writer (psql, the original app) and
    JSON has neither, so they are counted, not aggregated (PostgreSQL orders NaN above every
    number: the range test excludes it too). The mean is taken in `numeric`, where a sum past
    the largest double cannot overflow, from each value's text (its shortest exact digits under
    the default extra_float_digits; the direct cast keeps 15)."""
    truncated = func.date_trunc(literal(bucket), SystemMetric.timestamp, type_=UTCDateTime()).label(
        "bucket"
    )
    finite = SystemMetric.value.between(-sys.float_info.max, sys.float_info.max)
    exact = cast(cast(SystemMetric.value, Text), Numeric)
    statement = (
        select(
            truncated,
            func.avg(exact).filter(finite),
            func.min(SystemMetric.value).filter(finite),
            func.max(SystemMetric.value).filter(finite),
            func.count().filter(finite),
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
        Point(b, _float(a), _float(lo), _float(hi), count=n, non_finite=total - n)
        for b, a, lo, hi, n, total in conn.session.execute(statement)
    ]


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)
