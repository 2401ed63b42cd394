"""Search history: one row per keyword search, partitioned by time."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime
from shared.models.users import User


class SearchHistory(Base):
    __tablename__ = "search_history"
    __table_args__ = (
        # INCLUDE: a user's history stats read the index alone (migration 0012).
        Index(
            "search_history_userId_searchedAt_stats_idx",
            "userId",
            "searchedAt",
            postgresql_include=["provider", "responseTime", "cacheHit"],
        ),
        Index("search_history_searchedAt_idx", "searchedAt"),
        Index(
            "search_history_organizationId_searchedAt_idx",
            "organizationId",
            "searchedAt",
            postgresql_where=text('"organizationId" IS NOT NULL'),
        ),
        {"postgresql_partition_by": 'RANGE ("searchedAt")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str | None] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            User.id, ondelete="SET NULL", onupdate="CASCADE", name="search_history_userId_fkey"
        ),
    )
    keywords: Mapped[list[str] | None] = mapped_column("keywords", ARRAY(Text))
    location: Mapped[str] = mapped_column("location", Text)
    language: Mapped[str] = mapped_column("language", Text)
    match_type: Mapped[str] = mapped_column("matchType", Text)
    provider: Mapped[str] = mapped_column("provider", Text)
    cache_hit: Mapped[bool] = mapped_column("cacheHit", Boolean, server_default=text("false"))
    response_time: Mapped[int] = mapped_column("responseTime", Integer)
    keyword_count: Mapped[int] = mapped_column("keywordCount", Integer, server_default=text("0"))
    avg_volume: Mapped[int] = mapped_column("avgVolume", Integer, server_default=text("0"))
    total_volume: Mapped[int] = mapped_column("totalVolume", Integer, server_default=text("0"))
    searched_at: Mapped[datetime] = mapped_column(
        "searchedAt", UTCDateTime(), primary_key=True, server_default=NOW
    )
    user_agent: Mapped[str | None] = mapped_column("userAgent", Text)
    ip_address: Mapped[str | None] = mapped_column("ipAddress", Text)
    # Addition: the team the search was made for (its quota); no foreign key on the partitioned
    # log, the organization's deletion handles its rows.
    organization_id: Mapped[str | None] = mapped_column("organizationId", Text)
