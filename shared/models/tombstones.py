"""Account tombstones: what an erasure keeps of a trial."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    Integer,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import Base, UTCDateTime


class AccountTombstone(Base):
    """Addition: an erased account's trial, under a keyed HMAC of its Clerk id or its email
    (never the values), so that erasing and signing in again continues the trial instead of
    starting a new one (`shared.repositories.tombstones`). A retention exception of the erasure.
    `clerk_deleted` (an id's row only): Clerk deleted the user, so the id never comes back."""

    __tablename__ = "account_tombstones"

    key: Mapped[str] = mapped_column("key", Text, primary_key=True)
    trial_ends_at: Mapped[datetime] = mapped_column("trialEndsAt", UTCDateTime())
    keywords_used: Mapped[int] = mapped_column("keywordsUsed", Integer)
    clerk_deleted: Mapped[bool] = mapped_column(
        "clerkDeleted", Boolean, server_default=text("false")
    )
