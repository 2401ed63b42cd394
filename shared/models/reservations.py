"""Keyword reservations: quota held by a search not recorded yet."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime
from shared.models.organizations import Organization
from shared.models.users import User


class KeywordReservation(Base):
    """Addition: keywords counted against a user's quota whose search is not recorded yet.

    Written with the reservation, deleted when the search is recorded or fails; one left past
    `expiresAt` (its function was killed) is given back by the reconcile_reservations cron.
    """

    __tablename__ = "keyword_reservations"
    __table_args__ = (
        Index("keyword_reservations_expiresAt_idx", "expiresAt"),
        Index("keyword_reservations_userId_idx", "userId"),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            User.id,
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="keyword_reservations_userId_fkey",
        ),
    )
    keywords: Mapped[int] = mapped_column("keywords", Integer)
    # Addition (0013): the organization whose quota holds the keywords; NULL: the user's own.
    organization_id: Mapped[str | None] = mapped_column(
        "organizationId",
        Text,
        ForeignKey(
            Organization.id,
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="keyword_reservations_organizationId_fkey",
        ),
    )
    reserved_at: Mapped[datetime] = mapped_column("reservedAt", UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column("expiresAt", UTCDateTime())
