"""Users: Clerk accounts extended with a tier, a trial and monthly keyword usage."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Enum,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UserTier, UTCDateTime

_PLACEHOLDER_EXACT = (
    "\nCASE\n    WHEN \"right\"(lower(email), 15) = '@keyflash.local'::text THEN email\n"
    "    ELSE ''::text\nEND"
)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index("users_email_key", "email", unique=True),
        Index("users_stripeCustomerId_key", "stripeCustomerId", unique=True),
        Index("users_stripeSubscriptionId_key", "stripeSubscriptionId", unique=True),
        # Real addresses unique case-insensitively, the `{id}@keyflash.local` placeholder exactly
        # (Clerk ids are case-sensitive): migration 0017. Written as PostgreSQL prints it, line
        # breaks included, so that `alembic check` compares it equal.
        Index(
            "users_email_lower_key",
            func.lower(text('"email"')),
            text(_PLACEHOLDER_EXACT),
            unique=True,
        ),
        Index("users_tier_trialEndsAt_idx", "tier", "trialEndsAt"),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    email: Mapped[str] = mapped_column("email", Text)
    tier: Mapped[UserTier] = mapped_column(
        "tier",
        Enum(UserTier, name="UserTier", values_callable=lambda e: [m.value for m in e]),
        server_default=text("'FREE'"),
    )
    keyword_searches_this_month: Mapped[int] = mapped_column(
        "keywordSearchesThisMonth", Integer, server_default=text("0")
    )
    keyword_searches_total: Mapped[int] = mapped_column(
        "keywordSearchesTotal", Integer, server_default=text("0")
    )
    monthly_reset_at: Mapped[datetime] = mapped_column(
        "monthlyResetAt", UTCDateTime(), server_default=NOW
    )
    stripe_customer_id: Mapped[str | None] = mapped_column("stripeCustomerId", Text)
    stripe_subscription_id: Mapped[str | None] = mapped_column("stripeSubscriptionId", Text)
    subscription_status: Mapped[str | None] = mapped_column("subscriptionStatus", Text)
    subscription_plan: Mapped[str | None] = mapped_column("subscriptionPlan", Text)
    subscription_ends_at: Mapped[datetime | None] = mapped_column(
        "subscriptionEndsAt", UTCDateTime()
    )
    trial_ends_at: Mapped[datetime | None] = mapped_column("trialEndsAt", UTCDateTime())
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
    # Addition: the legacy Redis record's trial start (nullable; Prisma ignores it).
    trial_started_at: Mapped[datetime | None] = mapped_column("trialStartedAt", UTCDateTime())
    # Addition: when the last applied Stripe subscription event was created (ordering guard).
    subscription_event_at: Mapped[datetime | None] = mapped_column(
        "subscriptionEventAt", UTCDateTime()
    )
    # Addition: Stripe's `created` of the current subscription (which of two is newer).
    subscription_created_at: Mapped[datetime | None] = mapped_column(
        "subscriptionCreatedAt", UTCDateTime()
    )
    # Addition: the Stripe customer the current subscription is on (may differ from
    # stripeCustomerId when that customer is another account's): `customer.deleted` ends it.
    subscription_customer_id: Mapped[str | None] = mapped_column("subscriptionCustomerId", Text)
    # Addition: Clerk's `updated_at` of the last user event applied (ordering guard).
    clerk_updated_at: Mapped[datetime | None] = mapped_column("clerkUpdatedAt", UTCDateTime())
