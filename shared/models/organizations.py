"""Clerk organizations and their members, mirrored from Clerk's webhooks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Enum,
    ForeignKey,
    Index,
    Integer,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from shared.models import NOW, Base, UserTier, UTCDateTime


class Organization(Base):
    """Addition: a Clerk organization mirrored from its webhooks (or first seen in a token),
    with its tier, billing and pooled monthly keyword quota.

    `clerkUpdatedAt` orders Clerk's events; `deletedAt` is the tombstone that keeps a deleted
    organization from coming back with a late event (its data is gone)."""

    __tablename__ = "organizations"
    __table_args__ = (
        Index("organizations_stripeCustomerId_key", "stripeCustomerId", unique=True),
        Index("organizations_stripeSubscriptionId_key", "stripeSubscriptionId", unique=True),
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    name: Mapped[str] = mapped_column("name", Text)
    slug: Mapped[str | None] = mapped_column("slug", Text)
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
    subscription_event_at: Mapped[datetime | None] = mapped_column(
        "subscriptionEventAt", UTCDateTime()
    )
    subscription_created_at: Mapped[datetime | None] = mapped_column(
        "subscriptionCreatedAt", UTCDateTime()
    )
    subscription_customer_id: Mapped[str | None] = mapped_column("subscriptionCustomerId", Text)
    clerk_updated_at: Mapped[datetime | None] = mapped_column("clerkUpdatedAt", UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column("deletedAt", UTCDateTime())
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())


class OrganizationMember(Base):
    """Addition: a user's membership of an organization as Clerk last reported it.

    No foreign key to `users`: Clerk reports members who have not signed in to KeyFlash yet.
    `deletedAt` is a removed membership's tombstone (a late `created` does not restore it)."""

    __tablename__ = "organization_members"
    __table_args__ = (Index("organization_members_userId_idx", "userId"),)

    organization_id: Mapped[str] = mapped_column(
        "organizationId",
        Text,
        ForeignKey(
            "organizations.id",
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="organization_members_organizationId_fkey",
        ),
        primary_key=True,
    )
    user_id: Mapped[str] = mapped_column("userId", Text, primary_key=True)
    role: Mapped[str] = mapped_column("role", Text)
    permissions: Mapped[list[str] | None] = mapped_column(
        "permissions", ARRAY(Text), server_default=text("ARRAY[]::text[]")
    )
    clerk_updated_at: Mapped[datetime | None] = mapped_column("clerkUpdatedAt", UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column("deletedAt", UTCDateTime())
    created_at: Mapped[datetime] = mapped_column("createdAt", UTCDateTime(), server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())
