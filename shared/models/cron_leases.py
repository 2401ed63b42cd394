"""Cron leases: one row per cron job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime


class CronLease(Base):
    """Addition: one row per cron job, its lease (who runs it, until when) and resume state.

    A row, not an advisory lock: through the transaction pooler a session lock cannot outlive
    a batch. `expiresAt` bounds a crashed holder's claim to its invocation's time limit.
    """

    __tablename__ = "cron_leases"

    job: Mapped[str] = mapped_column("job", Text, primary_key=True)
    holder: Mapped[str | None] = mapped_column("holder", Text)
    acquired_at: Mapped[datetime | None] = mapped_column("acquiredAt", UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column("expiresAt", UTCDateTime())
    last_completed_at: Mapped[datetime | None] = mapped_column("lastCompletedAt", UTCDateTime())
    state: Mapped[dict[str, Any] | None] = mapped_column("state", JSONB)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
