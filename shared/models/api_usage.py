"""API usage: one row per request, partitioned by time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Index,
    Integer,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime


class ApiUsage(Base):
    __tablename__ = "api_usage"
    __table_args__ = (
        Index("api_usage_userId_timestamp_idx", "userId", "timestamp"),
        Index("api_usage_timestamp_idx", "timestamp"),  # addition: retention deletes
        {"postgresql_partition_by": 'RANGE ("timestamp")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str | None] = mapped_column("userId", Text)
    endpoint: Mapped[str] = mapped_column("endpoint", Text)
    method: Mapped[str] = mapped_column("method", Text)
    status_code: Mapped[int] = mapped_column("statusCode", Integer)
    duration: Mapped[int] = mapped_column("duration", Integer)
    ip_address: Mapped[str | None] = mapped_column("ipAddress", Text)
    user_agent: Mapped[str | None] = mapped_column("userAgent", Text)
    timestamp: Mapped[datetime] = mapped_column(
        "timestamp", UTCDateTime(), primary_key=True, server_default=NOW
    )
