"""The Redis → Postgres migration's own tables: what the legacy keys are still owed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime


class LegacyRepair(Base):
    """Addition: the dual-write outbox (`shared.legacy.bridge`), one row per legacy Redis key that
    must still be made to match Postgres. Our own table: Prisma never reads or writes it."""

    __tablename__ = "legacy_repairs"
    __table_args__ = (
        Index("legacy_repairs_userId_idx", "userId"),
        CheckConstraint(
            "kind IN ('user', 'saved_search', 'usage', 'erasure')", name="legacy_repairs_kind_check"
        ),
    )

    key: Mapped[str] = mapped_column("key", Text, primary_key=True)
    kind: Mapped[str] = mapped_column("kind", Text)
    user_id: Mapped[str] = mapped_column("userId", Text)
    attempts: Mapped[int] = mapped_column("attempts", Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column("error", Text)
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())


class LegacyCounterDelta(Base):
    """Addition: a usage increment (or a release, negative) still owed to the original app's
    Redis counter `key` (`shared.legacy.bridge`); applied once with INCRBY, then deleted. Our own
    table: Prisma never reads or writes it."""

    __tablename__ = "legacy_counter_deltas"
    __table_args__ = (Index("legacy_counter_deltas_userId_idx", "userId"),)

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    key: Mapped[str] = mapped_column("key", Text)
    user_id: Mapped[str] = mapped_column("userId", Text)
    delta: Mapped[int] = mapped_column("delta", Integer)
    expires_at: Mapped[datetime] = mapped_column("expiresAt", UTCDateTime())
    attempts: Mapped[int] = mapped_column("attempts", Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column("error", Text)
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
