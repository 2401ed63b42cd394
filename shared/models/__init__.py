"""ORM models over the physical schema that the original Prisma schema generates.

One module per table (organizations with their members, and the legacy migration's two tables,
share one), so that a function maps only the tables it uses; this package holds what they share.
`shared.models.schema` imports them all, for Alembic.

Table and column names, types, defaults, constraints, indexes and FK actions match
`tests/fixtures/prisma/original-ddl.sql` so the original TypeScript app can share the database.
Python attributes are snake_case; columns keep Prisma's quoted camelCase names.

Like the Prisma client, our code (not the database) sets `id` and `updatedAt`.

Additions to Prisma's schema (all nullable or constraint-only, so Prisma keeps working):
- `users."trialStartedAt"`: the legacy Redis user record carries it
(docs/original-app.md#user-service-operations).
- `saved_searches.description`, `results` (JSONB), `"lastRunAt"`, `"resultCount"`: the legacy
  saved-search record carries them (docs/original-app.md#saved-search-record).
- `users_email_lower_key`: emails are unique case-insensitively (docs/original-app.md#d10), the
  `{id}@keyflash.local` placeholder exactly, as Clerk ids are case-sensitive.
- `users_tier_trialEndsAt_idx`: serves the expired-trial lookup.
- `feature_flags_rolloutPercent_check`: `rolloutPercent` BETWEEN 0 AND 100.
- table `legacy_repairs`: the dual-write outbox of the Redis → Postgres migration.
- table `legacy_counter_deltas`: usage increments still owed to the legacy Redis counters.
- `users."subscriptionEventAt"`: creation time of the last Stripe event applied to the user's
  subscription, so an older event delivered late never rolls it back (`shared.billing`).
- `users."subscriptionCustomerId"` (and the organizations' column): the Stripe customer the
  current subscription is on, so `customer.deleted` ends only that customer's subscription
  (migration 0016).
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
from datetime import UTC, datetime

from sqlalchemy import Dialect, MetaData, text
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import DeclarativeBase
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
