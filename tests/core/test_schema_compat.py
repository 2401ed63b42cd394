"""Our migrated schema is Prisma's schema plus only the documented additions.

The original TypeScript app keeps using the same database through Prisma, so every table, column
type, nullability, default, constraint, index, FK action and enum label it relies on must be
exactly what Prisma generates. We compare the live catalogs of two scratch databases on the same
server: one loaded from the DDL Prisma generates for the original schema
(`tests/fixtures/prisma/original-ddl.sql`), one built by `alembic upgrade head`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.support.catalog import (
    PARTITIONED_LOGS,
    Snapshot,
    diff,
    differences_beyond,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]
PRISMA_DDL = REPO / "tests" / "fixtures" / "prisma" / "original-ddl.sql"
ScratchDatabase = Callable[[], str]

NULLABLE_COLUMN = {"nullable": True, "default": None, "identity": None, "generated": None}
TIMESTAMP3 = "timestamp(3) without time zone"

# Everything we may have beyond Prisma, with the properties that keep Prisma working: new columns
# are nullable without defaults (Prisma's INSERTs never mention them), the rest are indexes and a
# check. Values are matched field by field against the catalog entry.
DOCUMENTED_ADDITIONS: dict[str, dict[str, Any]] = {
    "column users.trialStartedAt": {"type": TIMESTAMP3, **NULLABLE_COLUMN},
    "column users.subscriptionEventAt": {"type": TIMESTAMP3, **NULLABLE_COLUMN},
    "column users.subscriptionCreatedAt": {"type": TIMESTAMP3, **NULLABLE_COLUMN},
    "column users.subscriptionCustomerId": {"type": "text", **NULLABLE_COLUMN},
    "column users.clerkUpdatedAt": {"type": TIMESTAMP3, **NULLABLE_COLUMN},
    "column saved_searches.description": {"type": "text", **NULLABLE_COLUMN},
    "column saved_searches.results": {"type": "jsonb", **NULLABLE_COLUMN},
    "column saved_searches.lastRunAt": {"type": TIMESTAMP3, **NULLABLE_COLUMN},
    "column saved_searches.resultCount": {"type": "integer", **NULLABLE_COLUMN},
    "index users_email_lower_key": {
        "table": "users",
        "definition": "CREATE UNIQUE INDEX users_email_lower_key ON users USING btree "
        '(lower(email), (\nCASE\n    WHEN ("right"(lower(email), 15) = '
        "'@keyflash.local'::text) THEN email\n    ELSE ''::text\nEND))",
    },
    "index users_tier_trialEndsAt_idx": {
        "table": "users",
        "definition": 'CREATE INDEX "users_tier_trialEndsAt_idx" ON users USING btree '
        '(tier, "trialEndsAt")',
    },
    "constraint feature_flags_rolloutPercent_check": {
        "table": "feature_flags",
        "type": "CHECK",
        "definition": 'CHECK ((("rolloutPercent" >= 0) AND ("rolloutPercent" <= 100)))',
    },
}
# Our own table (Prisma never reads or writes it): the dual-write outbox of the Redis →
# Postgres migration (shared.legacy.bridge). Its columns may be NOT NULL: no Prisma INSERT names it.
DOCUMENTED_ADDITIONS.update(
    {
        "table legacy_repairs": {"kind": "table"},
        **{
            f"column legacy_repairs.{name}": {"type": type_, "nullable": nullable}
            for name, type_, nullable in (
                ("key", "text", False),
                ("kind", "text", False),
                ("userId", "text", False),
                ("attempts", "integer", False),
                ("error", "text", True),
                ("createdAt", TIMESTAMP3, False),
                ("updatedAt", TIMESTAMP3, False),
            )
        },
        "constraint legacy_repairs_pkey": {"table": "legacy_repairs", "type": "PRIMARY KEY"},
        "constraint legacy_repairs_kind_check": {"table": "legacy_repairs", "type": "CHECK"},
        "index legacy_repairs_pkey": {"table": "legacy_repairs"},
        "index legacy_repairs_userId_idx": {"table": "legacy_repairs"},
    }
)
# Usage increments still owed to the original app's Redis counters (shared.legacy.bridge), our own.
DOCUMENTED_ADDITIONS.update(
    {
        "table legacy_counter_deltas": {"kind": "table"},
        **{
            f"column legacy_counter_deltas.{name}": {"type": type_, "nullable": nullable}
            for name, type_, nullable in (
                ("id", "text", False),
                ("key", "text", False),
                ("userId", "text", False),
                ("delta", "integer", False),
                ("expiresAt", TIMESTAMP3, False),
                ("attempts", "integer", False),
                ("error", "text", True),
                ("createdAt", TIMESTAMP3, False),
                ("updatedAt", TIMESTAMP3, False),
            )
        },
        "constraint legacy_counter_deltas_pkey": {
            "table": "legacy_counter_deltas",
            "type": "PRIMARY KEY",
        },
        "index legacy_counter_deltas_pkey": {"table": "legacy_counter_deltas"},
        "index legacy_counter_deltas_userId_idx": {"table": "legacy_counter_deltas"},
    }
)
# Billing's record of erased Stripe customers (a hash of the customer id; shared.billing).
DOCUMENTED_ADDITIONS.update(
    {
        "table erased_billing_customers": {"kind": "table"},
        "column erased_billing_customers.customerHash": {"type": "text", "nullable": False},
        "column erased_billing_customers.erasedAt": {"type": TIMESTAMP3, "nullable": False},
        "constraint erased_billing_customers_pkey": {
            "table": "erased_billing_customers",
            "type": "PRIMARY KEY",
        },
        "index erased_billing_customers_pkey": {"table": "erased_billing_customers"},
    }
)
# The crons' tables (shared.cron), also our own, and the time indexes retention deletes by.
DOCUMENTED_ADDITIONS.update(
    {
        "table cron_leases": {"kind": "table"},
        **{
            f"column cron_leases.{name}": {"type": type_, "nullable": nullable}
            for name, type_, nullable in (
                ("job", "text", False),
                ("holder", "text", True),
                ("acquiredAt", TIMESTAMP3, True),
                ("expiresAt", TIMESTAMP3, False),
                ("lastCompletedAt", TIMESTAMP3, True),
                ("state", "jsonb", True),
                ("updatedAt", TIMESTAMP3, False),
            )
        },
        "constraint cron_leases_pkey": {"table": "cron_leases", "type": "PRIMARY KEY"},
        "index cron_leases_pkey": {"table": "cron_leases"},
        "table search_daily_rollups": {"kind": "table"},
        **{
            f"column search_daily_rollups.{name}": {"type": type_, "nullable": False}
            for name, type_ in (
                ("day", "date"),
                ("provider", "text"),
                ("searches", "integer"),
                ("keywords", "bigint"),
                ("cacheHits", "integer"),
                ("responseTimeTotal", "bigint"),
                ("avgResponseTime", "double precision"),
                ("updatedAt", TIMESTAMP3),
            )
        },
        "constraint search_daily_rollups_pkey": {
            "table": "search_daily_rollups",
            "type": "PRIMARY KEY",
        },
        "index search_daily_rollups_pkey": {"table": "search_daily_rollups"},
        "index api_usage_timestamp_idx": {
            "table": "api_usage",
            "definition": "CREATE INDEX api_usage_timestamp_idx ON api_usage "
            'USING btree ("timestamp")',
        },
        "index system_metrics_timestamp_idx": {
            "table": "system_metrics",
            "definition": "CREATE INDEX system_metrics_timestamp_idx ON system_metrics "
            'USING btree ("timestamp")',
        },
        "table keyword_reservations": {"kind": "table"},
        **{
            f"column keyword_reservations.{name}": {"type": type_, "nullable": False}
            for name, type_ in (
                ("id", "text"),
                ("userId", "text"),
                ("keywords", "integer"),
                ("reservedAt", TIMESTAMP3),
                ("expiresAt", TIMESTAMP3),
            )
        },
        "constraint keyword_reservations_pkey": {
            "table": "keyword_reservations",
            "type": "PRIMARY KEY",
        },
        "constraint keyword_reservations_userId_fkey": {
            "table": "keyword_reservations",
            "definition": 'FOREIGN KEY ("userId") REFERENCES users(id) '
            "ON UPDATE CASCADE ON DELETE CASCADE",
        },
        "index keyword_reservations_pkey": {"table": "keyword_reservations"},
        "index keyword_reservations_expiresAt_idx": {"table": "keyword_reservations"},
        "index keyword_reservations_userId_idx": {"table": "keyword_reservations"},
    }
)
# The erasure's tombstones (shared.repositories.tombstones), our own table.
DOCUMENTED_ADDITIONS.update(
    {
        "table account_tombstones": {"kind": "table"},
        **{
            f"column account_tombstones.{name}": {"type": type_, "nullable": False}
            for name, type_ in (
                ("key", "text"),
                ("trialEndsAt", TIMESTAMP3),
                ("keywordsUsed", "integer"),
            )
        },
        "column account_tombstones.clerkDeleted": {
            "type": "boolean",
            "nullable": False,
            "default": "false",
        },
        "constraint account_tombstones_pkey": {
            "table": "account_tombstones",
            "type": "PRIMARY KEY",
        },
        "index account_tombstones_pkey": {"table": "account_tombstones"},
    }
)

# Data exports (shared.exports, the exports cron): our own table; rows go with their user.
DOCUMENTED_ADDITIONS.update(
    {
        "table data_exports": {"kind": "table"},
        **{
            f"column data_exports.{name}": {"type": type_, "nullable": nullable}
            for name, type_, nullable in (
                ("id", "text", False),
                ("userId", "text", False),
                ("status", "text", False),
                ("objectKey", "text", True),
                ("bytes", "bigint", True),
                ("gzipBytes", "bigint", True),
                ("attempts", "integer", False),
                ("error", "text", True),
                ("createdAt", TIMESTAMP3, False),
                ("startedAt", TIMESTAMP3, True),
                ("finishedAt", TIMESTAMP3, True),
                ("expiresAt", TIMESTAMP3, True),
                ("updatedAt", TIMESTAMP3, False),
            )
        },
        "constraint data_exports_pkey": {"table": "data_exports", "type": "PRIMARY KEY"},
        "constraint data_exports_status_check": {"table": "data_exports", "type": "CHECK"},
        "constraint data_exports_userId_fkey": {"table": "data_exports", "type": "FOREIGN KEY"},
        "index data_exports_pkey": {"table": "data_exports"},
        "index data_exports_one_open_per_user": {"table": "data_exports"},
        "index data_exports_status_createdAt_idx": {"table": "data_exports"},
    }
)

# The admin reports (migration 0011, docs/analytics.md): materialized views, each with the
# unique index REFRESH … CONCURRENTLY needs. Prisma never reads or writes them.
DOCUMENTED_ADDITIONS.update(
    {
        **{
            f"relation {view}": {"kind": "materialized view"}
            for view in (
                "report_usage_by_tier",
                "report_keyword_trends",
                "report_provider_performance",
            )
        },
        "index report_usage_by_tier_key": {"table": "report_usage_by_tier"},
        "index report_keyword_trends_key": {"table": "report_keyword_trends"},
        "index report_provider_performance_key": {"table": "report_provider_performance"},
    }
)


# Indexes chosen by evidence (migration 0012, benchmark section `indexes`): a covering index
# replaces Prisma's (userId, searchedAt), and indexes nothing reads by or duplicating a unique
# index are gone. Prisma's client never names an index: its queries are unchanged.
DOCUMENTED_ADDITIONS["index search_history_userId_searchedAt_stats_idx"] = {
    "table": "search_history",
    "definition": 'CREATE INDEX "search_history_userId_searchedAt_stats_idx" ON search_history '
    'USING btree ("userId", "searchedAt") INCLUDE (provider, "responseTime", "cacheHit")',
}
# A user's history page as a server function (migration 0015, docs/core.md#partitions): the
# server keeps its plan per connection, so a client that does not prepare statements stops
# planning the read over every partition kept. The table and its columns are unchanged.
DOCUMENTED_ADDITIONS[
    "function search_history_page(p_user_id text, p_limit bigint, p_before_at timestamp "
    "without time zone, p_before_id text)"
] = {"kind": "f", "returns": "SETOF search_history"}
# Organizations (migration 0013, docs/organizations.md): two tables of our own, a nullable
# `organizationId` on three tables, and one change: a team's saved search outlives its creator,
# so `saved_searches."userId"` is nullable (the check keeps every search owned by someone).
# Prisma's INSERTs of a personal search still name `userId`.
_ORGANIZATION_COLUMNS = {
    "organizations": (
        ("id", "text", False),
        ("name", "text", False),
        ("slug", "text", True),
        ("tier", '"UserTier"', False),
        ("keywordSearchesThisMonth", "integer", False),
        ("keywordSearchesTotal", "integer", False),
        ("monthlyResetAt", TIMESTAMP3, False),
        ("stripeCustomerId", "text", True),
        ("stripeSubscriptionId", "text", True),
        ("subscriptionStatus", "text", True),
        ("subscriptionPlan", "text", True),
        ("subscriptionEndsAt", TIMESTAMP3, True),
        ("subscriptionEventAt", TIMESTAMP3, True),
        ("subscriptionCreatedAt", TIMESTAMP3, True),
        ("subscriptionCustomerId", "text", True),
        ("clerkUpdatedAt", TIMESTAMP3, True),
        ("deletedAt", TIMESTAMP3, True),
        ("createdAt", TIMESTAMP3, False),
        ("updatedAt", TIMESTAMP3, False),
    ),
    "organization_members": (
        ("organizationId", "text", False),
        ("userId", "text", False),
        ("role", "text", False),
        ("permissions", "text[]", True),
        ("clerkUpdatedAt", TIMESTAMP3, True),
        ("deletedAt", TIMESTAMP3, True),
        ("createdAt", TIMESTAMP3, False),
        ("updatedAt", TIMESTAMP3, False),
    ),
}
_CASCADE_TO_ORGANIZATIONS = {
    "type": "FOREIGN KEY",
    "references": "organizations",
    "on_delete": "CASCADE",
}
DOCUMENTED_ADDITIONS.update(
    {
        "table organizations": {"kind": "table"},
        "table organization_members": {"kind": "table"},
        **{
            f"column {table}.{name}": {"type": type_, "nullable": nullable}
            for table, columns in _ORGANIZATION_COLUMNS.items()
            for name, type_, nullable in columns
        },
        "constraint organizations_pkey": {"table": "organizations", "type": "PRIMARY KEY"},
        "index organizations_pkey": {"table": "organizations"},
        "index organizations_stripeCustomerId_key": {"table": "organizations"},
        "index organizations_stripeSubscriptionId_key": {"table": "organizations"},
        "constraint organization_members_pkey": {
            "table": "organization_members",
            "type": "PRIMARY KEY",
            "columns": ["organizationId", "userId"],
        },
        "index organization_members_pkey": {"table": "organization_members"},
        "index organization_members_userId_idx": {"table": "organization_members"},
        "constraint organization_members_organizationId_fkey": {
            "table": "organization_members",
            **_CASCADE_TO_ORGANIZATIONS,
        },
        **{
            f"column {table}.organizationId": {"type": "text", **NULLABLE_COLUMN}
            for table in ("saved_searches", "search_history", "keyword_reservations")
        },
        "constraint saved_searches_organizationId_fkey": {
            "table": "saved_searches",
            **_CASCADE_TO_ORGANIZATIONS,
        },
        "constraint keyword_reservations_organizationId_fkey": {
            "table": "keyword_reservations",
            **_CASCADE_TO_ORGANIZATIONS,
        },
        "constraint saved_searches_owner_check": {
            "table": "saved_searches",
            "type": "CHECK",
            "definition": 'CHECK ((("userId" IS NOT NULL) OR ("organizationId" IS NOT NULL)))',
        },
        "index saved_searches_organizationId_updatedAt_idx": {"table": "saved_searches"},
        "index search_history_organizationId_searchedAt_idx": {"table": "search_history"},
    }
)
ORGANIZATION_CHANGES = {"column saved_searches.userId": {"nullable": True}}
DOCUMENTED_REMOVALS = frozenset(
    {
        "index search_history_userId_searchedAt_idx",
        "index search_history_provider_idx",
        "index api_usage_endpoint_timestamp_idx",
        "index api_usage_ipAddress_timestamp_idx",
        "index users_createdAt_idx",
        "index users_email_idx",
        "index users_stripeCustomerId_idx",
    }
)


def prisma_reference_sql() -> str:
    """The DDL Prisma's schema engine generates for the original schema (`devkit/prisma_ddl.py`)."""
    return PRISMA_DDL.read_text(encoding="utf-8")


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = url
    return config


@pytest.fixture
def prisma_db(scratch_database: ScratchDatabase) -> str:
    url = scratch_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(prisma_reference_sql().encode())
    return url


@pytest.fixture
def alembic_db(scratch_database: ScratchDatabase) -> str:
    url = scratch_database()
    command.upgrade(alembic_config(url), "head")
    return url


def unexpected_differences(prisma: Snapshot, ours: Snapshot) -> str:
    """Everything in the diff that is not a documented addition, plus additions gone wrong."""
    return differences_beyond(
        diff(prisma, ours),
        DOCUMENTED_ADDITIONS,
        reference="prisma",
        candidate="alembic",
        item="documented addition",
        missing="missing",
        removed=DOCUMENTED_REMOVALS,
        changes={**PARTITIONED_LOGS, **ORGANIZATION_CHANGES},
    )


def test_migrated_schema_is_prisma_schema_plus_documented_additions(
    prisma_db: str, alembic_db: str
) -> None:
    prisma, ours = snapshot(prisma_db), snapshot(alembic_db)
    assert prisma["tables"], "the Prisma reference loaded no tables"
    problems = unexpected_differences(prisma, ours)
    assert not problems, (
        "schema differs from Prisma's beyond the documented additions:\n" + problems
    )


def test_the_comparison_notices_an_undocumented_change(prisma_db: str, alembic_db: str) -> None:
    """Guards the guard: each kind of undocumented change must show up in the failure message."""
    with psycopg.connect(alembic_db, autocommit=True) as conn:
        conn.execute('ALTER TABLE search_history DROP CONSTRAINT "search_history_userId_fkey"')
        conn.execute(
            'ALTER TABLE search_history ADD CONSTRAINT "search_history_userId_fkey" '
            'FOREIGN KEY ("userId") REFERENCES users(id) ON DELETE CASCADE ON UPDATE CASCADE'
        )
        conn.execute('ALTER TABLE api_usage ALTER COLUMN "duration" TYPE bigint')
        conn.execute('ALTER TABLE webhook_events ALTER COLUMN "attempts" SET DEFAULT 0')
        conn.execute('CREATE INDEX "webhook_events_error_idx" ON webhook_events ("error")')
        conn.execute('DROP INDEX "search_history_searchedAt_idx"')
        conn.execute("""ALTER TYPE "UserTier" ADD VALUE 'TEAM' BEFORE 'ENTERPRISE'""")
    problems = unexpected_differences(snapshot(prisma_db), snapshot(alembic_db))
    assert "changed constraint search_history_userId_fkey" in problems
    assert "on_delete: prisma='SET NULL' alembic='CASCADE'" in problems
    assert "changed column api_usage.duration" in problems
    assert "type: prisma='integer' alembic='bigint'" in problems
    assert "default: prisma='1' alembic='0'" in problems
    assert "only in alembic: index webhook_events_error_idx" in problems
    assert "only in prisma: index search_history_searchedAt_idx" in problems
    assert "'FREE', 'PRO', 'TEAM', 'ENTERPRISE'" in problems


def test_the_comparison_notices_a_partitioned_log_gone_wrong(
    prisma_db: str, alembic_db: str
) -> None:
    """Guards the allowed changes of the partitioned logs: a key beyond (id, time), or an
    allowed change no longer there, fails like any other difference."""
    with psycopg.connect(alembic_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE api_usage DROP CONSTRAINT api_usage_pkey")
        conn.execute(
            'ALTER TABLE api_usage ADD CONSTRAINT api_usage_pkey PRIMARY KEY (id, "timestamp", '
            "endpoint)"
        )
        conn.execute("ALTER TABLE system_metrics DROP CONSTRAINT system_metrics_pkey")
    problems = unexpected_differences(snapshot(prisma_db), snapshot(alembic_db))
    assert "allowed change constraint api_usage_pkey: columns is ['id', 'timestamp', " in problems
    assert "only in prisma: constraint system_metrics_pkey" in problems
    assert "allowed change not in the alembic: constraint system_metrics_pkey" in problems


# --- data written the way the original app's Prisma client writes it -------------------------

T0 = datetime(2026, 11, 1, 9, 30, 15, 123000)  # Prisma sends UTC, millisecond precision
T1 = datetime(2026, 12, 1, 0, 0, 0)
USER_ID = "cluserfull00000000000000"


def prisma_insert(table: str, values: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """An INSERT as Prisma's query engine writes it: quoted schema-qualified names, the enum cast
    from text, and `id` (cuid) and `updatedAt` supplied by the client, never by the database."""
    columns = ",".join(f'"{column}"' for column in values)
    placeholders = ",".join(
        'CAST(%s::text AS "public"."UserTier")' if column == "tier" else "%s" for column in values
    )
    sql = f'INSERT INTO "public"."{table}" ({columns}) VALUES ({placeholders})'
    return sql, tuple(values.values())


FULL_USER = {
    "id": USER_ID,
    "email": "full@example.com",
    "tier": "PRO",
    "keywordSearchesThisMonth": 3,
    "keywordSearchesTotal": 10,
    "monthlyResetAt": T0,
    "stripeCustomerId": "cus_123",
    "stripeSubscriptionId": "sub_123",
    "subscriptionStatus": "active",
    "subscriptionPlan": "pro_monthly",
    "subscriptionEndsAt": T1,
    "trialEndsAt": T1,
    "createdAt": T0,
    "updatedAt": T0,
}

# For each table, the fewest fields Prisma sends (the database fills its defaults) and all of them.
PRISMA_WRITES: list[tuple[str, tuple[Any, ...]]] = [
    prisma_insert("users", {"id": "clusermin", "email": "min@example.com", "updatedAt": T0}),
    prisma_insert("users", FULL_USER),
    prisma_insert(
        "saved_searches", {"id": "clsavedmin", "userId": USER_ID, "name": "Min", "updatedAt": T0}
    ),
    prisma_insert(
        "saved_searches",
        {
            "id": "clsavedfull",
            "userId": USER_ID,
            "name": "Full",
            "keywords": ["seo", "keyword tool"],
            "location": "GB",
            "language": "de",
            "matchType": "exact",
            "keywordCount": 2,
            "createdAt": T0,
            "updatedAt": T0,
            "lastAccessedAt": T0,
        },
    ),
    prisma_insert(
        "search_history",
        {
            "id": "clhistanon",
            "keywords": ["seo"],
            "location": "US",
            "language": "en",
            "matchType": "broad",
            "provider": "mock",
            "responseTime": 42,
        },
    ),
    prisma_insert(
        "search_history",
        {
            "id": "clhistfull",
            "userId": USER_ID,
            "keywords": ["seo", "sem"],
            "location": "US",
            "language": "en",
            "matchType": "phrase",
            "provider": "google-ads",
            "cacheHit": True,
            "responseTime": 120,
            "keywordCount": 2,
            "avgVolume": 1500,
            "totalVolume": 3000,
            "searchedAt": T0,
            "userAgent": "Mozilla/5.0",
            "ipAddress": "203.0.113.7",
        },
    ),
    prisma_insert(
        "api_usage",
        {
            "id": "clapi",
            "userId": None,
            "endpoint": "/api/keywords",
            "method": "POST",
            "statusCode": 200,
            "duration": 87,
            "ipAddress": "203.0.113.7",
            "userAgent": "curl/8",
        },
    ),
    prisma_insert("webhook_events", {"id": "evt_min", "type": "customer.created"}),
    prisma_insert(
        "webhook_events",
        {
            "id": "evt_full",
            "type": "invoice.paid",
            "provider": "stripe",
            "processed": True,
            "processedAt": T0,
            "attempts": 2,
            "lastAttemptAt": T0,
            "error": None,
            "payload": Jsonb({"id": "evt_full", "data": {"object": {"amount_paid": 2900}}}),
            "createdAt": T0,
        },
    ),
    prisma_insert("feature_flags", {"id": "clflagmin", "key": "new-ui", "updatedAt": T0}),
    prisma_insert(
        "feature_flags",
        {
            "id": "clflagfull",
            "key": "bulk-export",
            "enabled": True,
            "rolloutPercent": 100,
            "allowedUsers": [USER_ID],
            "description": "Bulk CSV export",
            "createdAt": T0,
            "updatedAt": T0,
            "createdBy": "admin@example.com",
        },
    ),
    prisma_insert(
        "system_metrics",
        {"id": "clmetric", "metric": "cache.hit_rate", "value": 0.875, "tags": Jsonb({"r": "eu"})},
    ),
    # prisma.user.update({data: {keywordSearchesThisMonth: {increment: 1}}})
    (
        'UPDATE "public"."users" SET "keywordSearchesThisMonth" = '
        '("keywordSearchesThisMonth" + %s), "updatedAt" = %s '
        'WHERE ("public"."users"."id" = %s AND 1=1)',
        (1, T1, USER_ID),
    ),
]


@pytest.fixture(params=["prisma_db", "alembic_db"])
def either_db(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The same writes must succeed, and read back the same, on Prisma's schema and on ours."""
    url: str = request.getfixturevalue(request.param)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def test_prisma_shaped_writes_are_accepted_with_prisma_defaults(
    either_db: psycopg.Connection[dict[str, Any]],
) -> None:
    conn = either_db
    for sql, params in PRISMA_WRITES:
        conn.execute(sql, params)

    def row(table: str, id_: str) -> dict[str, Any]:
        found = conn.execute(f'SELECT * FROM "{table}" WHERE id = %s', (id_,)).fetchone()
        assert found is not None, f"{table} {id_} missing"
        return found

    minimal_user = row("users", "clusermin")
    assert minimal_user["tier"] == "FREE"
    assert minimal_user["keywordSearchesThisMonth"] == minimal_user["keywordSearchesTotal"] == 0
    assert minimal_user["monthlyResetAt"] is not None and minimal_user["createdAt"] is not None
    assert minimal_user["updatedAt"] == T0
    full_user = row("users", USER_ID)
    assert (full_user["tier"], full_user["keywordSearchesThisMonth"]) == ("PRO", 4)
    assert full_user["updatedAt"] == T1

    saved = row("saved_searches", "clsavedmin")
    assert (saved["location"], saved["language"], saved["matchType"]) == ("US", "en", "broad")
    assert saved["keywordCount"] == 0 and saved["keywords"] is None
    assert row("saved_searches", "clsavedfull")["keywords"] == ["seo", "keyword tool"]

    history = row("search_history", "clhistanon")
    assert history["userId"] is None and history["cacheHit"] is False
    assert (history["keywordCount"], history["avgVolume"], history["totalVolume"]) == (0, 0, 0)
    assert row("api_usage", "clapi")["timestamp"] is not None

    event = row("webhook_events", "evt_min")
    assert (event["provider"], event["processed"], event["attempts"]) == ("stripe", False, 1)
    assert event["payload"] is None
    assert row("webhook_events", "evt_full")["payload"]["data"]["object"]["amount_paid"] == 2900

    flag = row("feature_flags", "clflagmin")
    assert (flag["enabled"], flag["rolloutPercent"], flag["allowedUsers"]) == (False, 0, None)
    assert row("system_metrics", "clmetric")["value"] == 0.875

    # TIMESTAMP(3): Prisma's millisecond values round-trip exactly.
    assert row("search_history", "clhistfull")["searchedAt"] == T0


def test_prisma_relations_cascade_and_set_null(
    either_db: psycopg.Connection[dict[str, Any]],
) -> None:
    conn = either_db
    for sql, params in PRISMA_WRITES:
        conn.execute(sql, params)

    conn.execute("UPDATE users SET id = %s WHERE id = %s", ("clrenamed", USER_ID))
    owners = conn.execute('SELECT DISTINCT "userId" FROM saved_searches').fetchall()
    assert owners == [{"userId": "clrenamed"}]  # ON UPDATE CASCADE

    conn.execute("DELETE FROM users WHERE id = %s", ("clrenamed",))
    assert conn.execute("SELECT count(*) AS n FROM saved_searches").fetchone() == {"n": 0}
    orphan = conn.execute(
        'SELECT "userId" FROM search_history WHERE id = %s', ("clhistfull",)
    ).fetchone()
    assert orphan == {"userId": None}  # ON DELETE SET NULL keeps the history row

    orphan_search = {"id": "clorphan", "userId": "clnobody", "name": "Orphan", "updatedAt": T0}
    with pytest.raises(errors.ForeignKeyViolation):
        conn.execute(*prisma_insert("saved_searches", orphan_search))
    gold_user = FULL_USER | {"id": "clgold", "email": "gold@example.com", "tier": "GOLD"}
    with pytest.raises(errors.InvalidTextRepresentation):
        conn.execute(*prisma_insert("users", gold_user))  # the enum keeps its three labels


def test_documented_additions_behave_and_stay_out_of_prismas_way(alembic_db: str) -> None:
    """Prisma's writes leave the new columns NULL; the new index and check do their job."""
    with psycopg.connect(alembic_db, autocommit=True, row_factory=dict_row) as conn:
        for sql, params in PRISMA_WRITES:
            conn.execute(sql, params)
        users = conn.execute('SELECT "trialStartedAt", "subscriptionEventAt" FROM users').fetchall()
        assert users == [{"trialStartedAt": None, "subscriptionEventAt": None}] * 2
        saved = conn.execute(
            'SELECT description, results, "lastRunAt", "resultCount" FROM saved_searches'
        ).fetchall()
        assert saved == [dict.fromkeys(("description", "results", "lastRunAt", "resultCount"))] * 2

        shouting = {"id": "clshouty", "email": "MIN@Example.COM", "updatedAt": T0}
        with pytest.raises(errors.UniqueViolation, match="users_email_lower_key"):
            conn.execute(*prisma_insert("users", shouting))
        for user_id in ("user_2Ab", "user_2aB"):  # placeholders: as case-sensitive as the ids
            placeholder = {"id": user_id, "email": f"{user_id}@keyflash.local", "updatedAt": T0}
            conn.execute(*prisma_insert("users", placeholder))
        for percent in (-1, 101):
            flag = {"id": f"cl{percent}", "key": f"k{percent}", "rolloutPercent": percent}
            with pytest.raises(errors.CheckViolation, match="feature_flags_rolloutPercent_check"):
                conn.execute(*prisma_insert("feature_flags", flag | {"updatedAt": T0}))
