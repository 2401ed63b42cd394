"""Daily search rollups (the rollup cron)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    Double,
    Integer,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime


class SearchDailyRollup(Base):
    """Addition: `search_history` aggregated per UTC day and provider (the rollup cron).

    The response-time total is kept beside the average so longer periods average exactly.
    """

    __tablename__ = "search_daily_rollups"

    day: Mapped[date] = mapped_column("day", Date, primary_key=True)
    provider: Mapped[str] = mapped_column("provider", Text, primary_key=True)
    searches: Mapped[int] = mapped_column("searches", Integer)
    keywords: Mapped[int] = mapped_column("keywords", BigInteger)
    cache_hits: Mapped[int] = mapped_column("cacheHits", Integer)
    response_time_total: Mapped[int] = mapped_column("responseTimeTotal", BigInteger)
    avg_response_time: Mapped[float] = mapped_column("avgResponseTime", Double)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
