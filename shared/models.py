"""ORM models over the physical schema that the original Prisma schema generates.

Table and column names, types, defaults, constraints, indexes and FK actions match
`tests/fixtures/prisma/original-ddl.sql` so the original TypeScript app can share the database.
Python attributes are snake_case; columns keep Prisma's quoted camelCase names.

Like the Prisma client, our code (not the database) sets `id` and `updatedAt`.

Additions to Prisma's schema (all nullable or constraint-only, so Prisma keeps working):
- `users."trialStartedAt"`: the legacy Redis user record carries it
(docs/original-app.md#user-service-operations).
- `saved_searches.description`, `results` (JSONB), `"lastRunAt"`, `"resultCount"`: the legacy
  saved-search record carries them (docs/original-app.md#saved-search-record).
- `users_email_lower_key`: emails are unique case-insensitively (docs/original-app.md#d10).
- `users_tier_trialEndsAt_idx`: serves the expired-trial lookup.
- `feature_flags_rolloutPercent_check`: `rolloutPercent` BETWEEN 0 AND 100.
- table `legacy_repairs`: the dual-write outbox of the Redis → Postgres migration.
- table `legacy_counter_deltas`: usage increments still owed to the legacy Redis counters.
- `users."subscriptionEventAt"`: creation time of the last Stripe event applied to the user's
  subscription, so an older event delivered late never rolls it back (`shared.billing`).
- tables `cron_leases` (one lease and resume state per cron job) and `search_daily_rollups`
  (daily search aggregates per provider), and `api_usage_timestamp_idx`,
  `system_metrics_timestamp_idx`, which the retention cron deletes by (`shared.cron`).
- table `keyword_reservations`: a keyword search's quota reservation until it is recorded, so
  one killed mid-call is given back (`shared.repositories.reservations`).
- table `account_tombstones`: what an erasure keeps so that it never resets a trial
  (`shared.repositories.tombstones`).

- tables `organizations` and `organization_members` (Clerk Organizations mirrored), and a
  nullable `organizationId` on `saved_searches`, `search_history` and `keyword_reservations`
  (migration 0013, docs/organizations.md). `saved_searches."userId"` became nullable for it: a
  team's search outlives its creator (`saved_searches_owner_check`: a user or an organization
  owns every search).

Indexes changed from Prisma's by evidence (migration 0012, docs/performance.md, "Indexes from
evidence"): `search_history_userId_searchedAt_stats_idx` (INCLUDE columns) replaces
`search_history_userId_searchedAt_idx`; six indexes nothing reads by, or that duplicate a unique
index, are dropped.

One change, not an addition: `search_history`, `api_usage` and `system_metrics` are partitioned
by range of their time column (retention drops whole partitions, `shared.repositories.partitions`),
so their primary key is (id, time): PostgreSQL requires the partition key in it. Prisma's client
still finds, updates and deletes these rows by `id` (docs/core.md#partitions).
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Dialect,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NOW = text("CURRENT_TIMESTAMP")


class UTCDateTime(TypeDecorator[datetime]):
    """Prisma's `TIMESTAMP(3)` (no time zone) holding UTC; Python sees aware UTC datetimes."""

    impl = TIMESTAMP(precision=3)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class UserTier(enum.StrEnum):
    FREE = "FREE"
    PRO = "PRO"
    ENTERPRISE = "ENTERPRISE"


class Base(DeclarativeBase):
    metadata = MetaData()


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index("users_email_key", "email", unique=True),
        Index("users_stripeCustomerId_key", "stripeCustomerId", unique=True),
        Index("users_stripeSubscriptionId_key", "stripeSubscriptionId", unique=True),
        Index("users_email_lower_key", func.lower(text('"email"')), unique=True),
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
    # Addition: Clerk's `updated_at` of the last user event applied (ordering guard).
    clerk_updated_at: Mapped[datetime | None] = mapped_column("clerkUpdatedAt", UTCDateTime())


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
            "users.id", ondelete="CASCADE", onupdate="CASCADE", name="saved_searches_userId_fkey"
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
            "organizations.id",
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="saved_searches_organizationId_fkey",
        ),
    )


class SearchHistory(Base):
    __tablename__ = "search_history"
    __table_args__ = (
        # INCLUDE: a user's history stats read the index alone (migration 0012).
        Index(
            "search_history_userId_searchedAt_stats_idx",
            "userId",
            "searchedAt",
            postgresql_include=["provider", "responseTime", "cacheHit"],
        ),
        Index("search_history_searchedAt_idx", "searchedAt"),
        Index(
            "search_history_organizationId_searchedAt_idx",
            "organizationId",
            "searchedAt",
            postgresql_where=text('"organizationId" IS NOT NULL'),
        ),
        {"postgresql_partition_by": 'RANGE ("searchedAt")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str | None] = mapped_column(
        "userId",
        Text,
        ForeignKey(
            "users.id", ondelete="SET NULL", onupdate="CASCADE", name="search_history_userId_fkey"
        ),
    )
    keywords: Mapped[list[str] | None] = mapped_column("keywords", ARRAY(Text))
    location: Mapped[str] = mapped_column("location", Text)
    language: Mapped[str] = mapped_column("language", Text)
    match_type: Mapped[str] = mapped_column("matchType", Text)
    provider: Mapped[str] = mapped_column("provider", Text)
    cache_hit: Mapped[bool] = mapped_column("cacheHit", Boolean, server_default=text("false"))
    response_time: Mapped[int] = mapped_column("responseTime", Integer)
    keyword_count: Mapped[int] = mapped_column("keywordCount", Integer, server_default=text("0"))
    avg_volume: Mapped[int] = mapped_column("avgVolume", Integer, server_default=text("0"))
    total_volume: Mapped[int] = mapped_column("totalVolume", Integer, server_default=text("0"))
    searched_at: Mapped[datetime] = mapped_column(
        "searchedAt", UTCDateTime(), primary_key=True, server_default=NOW
    )
    user_agent: Mapped[str | None] = mapped_column("userAgent", Text)
    ip_address: Mapped[str | None] = mapped_column("ipAddress", Text)
    # Addition: the team the search was made for (its quota); no foreign key on the partitioned
    # log, the organization's deletion handles its rows.
    organization_id: Mapped[str | None] = mapped_column("organizationId", Text)


class ApiUsage(Base):
    __tablename__ = "api_usage"
    __table_args__ = (
        Index("api_usage_userId_timestamp_idx", "userId", "timestamp"),
        Index("api_usage_timestamp_idx", "timestamp"),  # addition: retention deletes
        {"postgresql_partition_by": 'RANGE ("timestamp")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    user_id: Mapped[str | None] = mapped_column("userId", Text)
    endpoint: Mapped[str] = mapped_column("endpoint", Text)
    method: Mapped[str] = mapped_column("method", Text)
    status_code: Mapped[int] = mapped_column("statusCode", Integer)
    duration: Mapped[int] = mapped_column("duration", Integer)
    ip_address: Mapped[str | None] = mapped_column("ipAddress", Text)
    user_agent: Mapped[str | None] = mapped_column("userAgent", Text)
    timestamp: Mapped[datetime] = mapped_column(
        "timestamp", UTCDateTime(), primary_key=True, server_default=NOW
    )


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


class SystemMetric(Base):
    __tablename__ = "system_metrics"
    __table_args__ = (
        Index("system_metrics_metric_timestamp_idx", "metric", "timestamp"),
        Index("system_metrics_timestamp_idx", "timestamp"),  # addition: retention deletes
        {"postgresql_partition_by": 'RANGE ("timestamp")'},
    )

    id: Mapped[str] = mapped_column("id", Text, primary_key=True)
    metric: Mapped[str] = mapped_column("metric", Text)
    value: Mapped[float] = mapped_column("value", Double)
    tags: Mapped[dict[str, Any] | None] = mapped_column("tags", JSONB(none_as_null=True))
    timestamp: Mapped[datetime] = mapped_column(
        "timestamp", UTCDateTime(), primary_key=True, server_default=NOW
    )


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


class ErasedBillingCustomer(Base):
    """Addition: the SHA-256 of an erased user's Stripe customer id, so that customer's later
    Stripe events are recognised (and recorded without payload) rather than retried for days."""

    __tablename__ = "erased_billing_customers"

    customer_hash: Mapped[str] = mapped_column("customerHash", Text, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column("erasedAt", UTCDateTime())


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
            "users.id",
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
            "organizations.id",
            ondelete="CASCADE",
            onupdate="CASCADE",
            name="keyword_reservations_organizationId_fkey",
        ),
    )
    reserved_at: Mapped[datetime] = mapped_column("reservedAt", UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column("expiresAt", UTCDateTime())


class SearchDailyRollup(Base):
    """Addition: `search_history` aggregated per UTC day and provider (the rollup cron).

    The response-time total is kept beside the average so longer periods average exactly.
    """

    __tablename__ = "search_daily_rollups"

    day: Mapped[date] = mapped_column("day", Date, primary_key=True)
    provider: Mapped[str] = mapped_column("provider", Text, primary_key=True)
    searches: Mapped[int] = mapped_column("searches", Integer)
    keywords: Mapped[int] = mapped_column("keywords", BigInteger)
    cache_hits: Mapped[int] = mapped_column("cacheHits", Integer)
    response_time_total: Mapped[int] = mapped_column("responseTimeTotal", BigInteger)
    avg_response_time: Mapped[float] = mapped_column("avgResponseTime", Double)
    updated_at: Mapped[datetime] = mapped_column("updatedAt", UTCDateTime())


class AccountTombstone(Base):
    """Addition: an erased account's trial, under a keyed HMAC of its Clerk id or its email
    (never the values), so that erasing and signing in again continues the trial instead of
    starting a new one (`shared.repositories.tombstones`). A retention exception of the erasure."""

    __tablename__ = "account_tombstones"

    key: Mapped[str] = mapped_column("key", Text, primary_key=True)
    trial_ends_at: Mapped[datetime] = mapped_column("trialEndsAt", UTCDateTime())
    keywords_used: Mapped[int] = mapped_column("keywordsUsed", Integer)


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
        ForeignKey("users.id", name="data_exports_userId_fkey", ondelete="CASCADE"),
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
