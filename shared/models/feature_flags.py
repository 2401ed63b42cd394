"""Feature flags."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime


class FeatureFlag(Base):
    __tablename__ = "feature_flags"
    __table_args__ = (
        Index("feature_flags_key_key", "key", unique=True),
        CheckConstraint(
            '"rolloutPercent" >= 0 AND "rolloutPercent" <= 100',
            name="feature_flags_rolloutPercent_check",
        ),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    key: Mapped[str] = mapped_column("key", Text)
    enabled: Mapped[bool] = mapped_column("enabled", Boolean, server_default=text("false"))
    rollout_percent: Mapped[int] = mapped_column(
        "rolloutPercent", Integer, server_default=text("0")
    )
    allowed_users: Mapped[list[str] | None] = mapped_column("allowedUsers", ARRAY(Text))
    description: Mapped[str | None] = mapped_column("description", Text)
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
    created_by: Mapped[str | None] = mapped_column("createdBy", Text)
