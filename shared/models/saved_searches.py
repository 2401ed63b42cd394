"""Saved searches: a user's, or a team's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime
from shared.models.organizations import Organization
from shared.models.users import User


class SavedSearch(Base):
    __tablename__ = "saved_searches"
    __table_args__ = (
        Index("saved_searches_userId_createdAt_idx", "userId", "createdAt"),
        Index("saved_searches_userId_lastAccessedAt_idx", "userId", "lastAccessedAt"),
        Index(
            "saved_searches_organizationId_updatedAt_idx",
            "organizationId",
            "updatedAt",
            postgresql_where=text('"organizationId" IS NOT NULL'),
        ),
        CheckConstraint(
            '"userId" IS NOT NULL OR "organizationId" IS NOT NULL',
            name="saved_searches_owner_check",
        ),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    # NULL only for a team's search whose creator was erased.
    user_id: Mapped[str | None] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            User.id, ondelete="CASCADE", onupdate="CASCADE", name="saved_searches_userId_fkey"
        ),
    )
    name: Mapped[str] = mapped_column("name", Text)
    keywords: Mapped[list[str] | None] = mapped_column("keywords", ARRAY(Text))
    location: Mapped[str] = mapped_column("location", Text, server_default=text("'US'"))
    language: Mapped[str] = mapped_column("language", Text, server_default=text("'en'"))
    match_type: Mapped[str] = mapped_column("matchType", Text, server_default=text("'broad'"))
    keyword_count: Mapped[int] = mapped_column("keywordCount", Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
    last_accessed_at: Mapped[datetime] = mapped_column(
        "lastAccessedAt", UTCDateTime(), server_default=NOW
    )
    # Additions: fields of the legacy Redis saved-search record (nullable; Prisma ignores them).
    description: Mapped[str | None] = mapped_column("description", Text)
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(
        "results", JSONB(none_as_null=True)
    )
    last_run_at: Mapped[datetime | None] = mapped_column("lastRunAt", UTCDateTime())
    result_count: Mapped[int | None] = mapped_column("resultCount", Integer)
    # Addition: the team that shares the search; NULL for a personal one.
    organization_id: Mapped[str | None] = mapped_column(
        "organizationId",
        Text,
        ForeignKey(
            Organization.id,
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="saved_searches_organizationId_fkey",
        ),
    )
