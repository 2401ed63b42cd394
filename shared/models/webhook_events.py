"""Stripe webhook events, claimed once each."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UTCDateTime


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("webhook_events_type_createdAt_idx", "type", "createdAt"),
        Index("webhook_events_processed_createdAt_idx", "processed", "createdAt"),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    type: Mapped[str] = mapped_column("type", Text)
    provider: Mapped[str] = mapped_column("provider", Text, server_default=text("'stripe'"))
    processed: Mapped[bool] = mapped_column("processed", Boolean, server_default=text("false"))
    processed_at: Mapped[datetime | None] = mapped_column("processedAt", UTCDateTime())
    attempts: Mapped[int] = mapped_column("attempts", Integer, server_default=text("1"))
    last_attempt_at: Mapped[datetime] = mapped_column(
        "lastAttemptAt", UTCDateTime(), server_default=NOW
    )
    error: Mapped[str | None] = mapped_column("error", Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column("payload", JSONB(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
