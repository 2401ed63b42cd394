"""Asynchronous exports of a user's personal data."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime
from shared.models.users import User


class DataExport(Base):
    """Addition: one asynchronous export of a user's personal data (the exports cron builds it).

    `pending` → `running` → `ready` (the gzip document at `objectKey` until `expiresAt`) or
    `failed`. At most one open (pending or running) export per user; rows go with the user.
    """

    __tablename__ = "data_exports"
    __table_args__ = (
        Index(
            "data_exports_one_open_per_user",
            "userId",
            unique=True,
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
        Index("data_exports_status_createdAt_idx", "status", "createdAt"),
        CheckConstraint(
            "status IN ('pending', 'running', 'ready', 'failed')", name="data_exports_status_check"
        ),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey(User.id, name="data_exports_userId_fkey", ondelete="CASCADE"),
    )
    status: Mapped[str] = mapped_column("status", Text)
    object_key: Mapped[str | None] = mapped_column("objectKey", Text)
    bytes: Mapped[int | None] = mapped_column("bytes", BigInteger)
    gzip_bytes: Mapped[int | None] = mapped_column("gzipBytes", BigInteger)
    attempts: Mapped[int] = mapped_column("attempts", Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column("error", Text)
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column("startedAt", UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column("finishedAt", UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column("expiresAt", UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
