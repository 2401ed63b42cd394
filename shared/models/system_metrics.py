"""System metrics, partitioned by time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Double,
    Index,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime


class SystemMetric(Base):
    __tablename__ = "system_metrics"
    __table_args__ = (
        Index("system_metrics_metric_timestamp_idx", "metric", "timestamp"),
        Index("system_metrics_timestamp_idx", "timestamp"),  # addition: retention deletes
        {"postgresql_partition_by": 'RANGE ("timestamp")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    metric: Mapped[str] = mapped_column("metric", Text)
    value: Mapped[float] = mapped_column("value", Double)
    tags: Mapped[dict[str, Any] | None] = mapped_column("tags", JSONB(none_as_null=True))
    timestamp: Mapped[datetime] = mapped_column(
        "timestamp", UTCDateTime(), primary_key=True, server_default=NOW
    )
