"""`prisma/schema.prisma`, the schema we ship for TypeScript, describes the Alembic head exactly.

A TypeScript app generates its client from that file, so a table, column, default, index,
relation or enum it gets wrong (or lacks) is a query that fails, or data it cannot see. Prisma's
own schema engine turned the file into DDL (`tests/fixtures/prisma/shared-ddl.sql`, kept in step
by `python -m devkit.prisma_ddl --check` in CI); here that DDL is loaded into one scratch
database, `alembic upgrade head` builds another, and their catalogs must be equal, both ways.
The only allowed differences are the ones Prisma's schema language cannot express, listed by
name in INEXPRESSIBLE (and as comments in the schema). So a migration that adds a column,
table or index fails this test until the schema (and its DDL) say the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from tests.support.catalog import (
    PARTITIONED_LOGS,
    Snapshot,
    diff,
    differences_beyond,
    snapshot,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "prisma" / "schema.prisma"
SHARED_DDL = REPO / "tests" / "fixtures" / "prisma" / "shared-ddl.sql"
ScratchDatabase = Callable[[], str]

# In the migrated database, not in Prisma's DDL: what a Prisma schema cannot say (expression and
# partial indexes, CHECK constraints). Each is matched field by field, and each must still be
# there: an entry the database lost is stale and fails the test too.
INEXPRESSIBLE: dict[str, dict[str, Any]] = {
    "constraint saved_searches_owner_check": {
        "table": "saved_searches",
        "type": "CHECK",
        "definition": 'CHECK ((("userId" IS NOT NULL) OR ("organizationId" IS NOT NULL)))',
    },
    "index saved_searches_organizationId_updatedAt_idx": {
        "table": "saved_searches",
        "definition": 'CREATE INDEX "saved_searches_organizationId_updatedAt_idx" ON '
        'saved_searches USING btree ("organizationId", "updatedAt") '
        'WHERE ("organizationId" IS NOT NULL)',
    },
    "index search_history_organizationId_searchedAt_idx": {
        "table": "search_history",
        "definition": 'CREATE INDEX "search_history_organizationId_searchedAt_idx" ON '
        'search_history USING btree ("organizationId", "searchedAt") '
        'WHERE ("organizationId" IS NOT NULL)',
    },
    "index search_history_userId_searchedAt_stats_idx": {
        "table": "search_history",
        "definition": 'CREATE INDEX "search_history_userId_searchedAt_stats_idx" ON '
        'search_history USING btree ("userId", "searchedAt") INCLUDE (provider, '
        '"responseTime", "cacheHit")',
    },
    "index users_email_lower_key": {
        "table": "users",
        "definition": "CREATE UNIQUE INDEX users_email_lower_key ON users USING btree "
        '(lower(email), (\nCASE\n    WHEN ("right"(lower(email), 15) = '
        "'@keyflash.local'::text) THEN email\n    ELSE ''::text\nEND))",
    },
    "constraint feature_flags_rolloutPercent_check": {
        "table": "feature_flags",
        "type": "CHECK",
        "definition": 'CHECK ((("rolloutPercent" >= 0) AND ("rolloutPercent" <= 100)))',
    },
    "constraint legacy_repairs_kind_check": {
        "table": "legacy_repairs",
        "type": "CHECK",
        "definition": "CHECK ((kind = ANY (ARRAY['user'::text, 'saved_search'::text, "
        "'usage'::text, 'erasure'::text])))",
    },
    "constraint data_exports_status_check": {
        "table": "data_exports",
        "type": "CHECK",
        "definition": "CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, "
        "'ready'::text, 'failed'::text])))",
    },
    "index data_exports_one_open_per_user": {
        "table": "data_exports",
        "definition": "CREATE UNIQUE INDEX data_exports_one_open_per_user ON data_exports "
        "USING btree (\"userId\") WHERE (status = ANY (ARRAY['pending'::text, "
        "'running'::text]))",
    },
    # Materialized reports (migration 0011): Prisma has no materialized views.
    "relation report_usage_by_tier": {"kind": "materialized view"},
    "index report_usage_by_tier_key": {
        "table": "report_usage_by_tier",
        "definition": "CREATE UNIQUE INDEX report_usage_by_tier_key ON report_usage_by_tier "
        "USING btree (month, tier)",
    },
    "relation report_keyword_trends": {"kind": "materialized view"},
    "index report_keyword_trends_key": {
        "table": "report_keyword_trends",
        "definition": "CREATE UNIQUE INDEX report_keyword_trends_key ON report_keyword_trends "
        "USING btree (week, keyword)",
    },
    "relation report_provider_performance": {"kind": "materialized view"},
    "index report_provider_performance_key": {
        "table": "report_provider_performance",
        "definition": "CREATE UNIQUE INDEX report_provider_performance_key "
        "ON report_provider_performance USING btree (week, provider)",
    },
    # A user's history page (migration 0015): Prisma has no functions.
    "function search_history_page(p_user_id text, p_limit bigint, p_before_at timestamp "
    "without time zone, p_before_id text)": {"kind": "f", "returns": "SETOF search_history"},
}


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["url"] = url
    return config


def load(scratch_database: ScratchDatabase, ddl: str) -> str:
    url = scratch_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ddl.encode())
    return url


@pytest.fixture
def prisma_db(scratch_database: ScratchDatabase) -> str:
    return load(scratch_database, SHARED_DDL.read_text(encoding="utf-8"))


@pytest.fixture
def alembic_db(scratch_database: ScratchDatabase) -> str:
    url = scratch_database()
    command.upgrade(alembic_config(url), "head")
    return url


def schema_differences(prisma: Snapshot, ours: Snapshot) -> str:
    """Every difference except the inexpressible items, plus inexpressible items gone wrong."""
    return differences_beyond(
        diff(prisma, ours),
        INEXPRESSIBLE,
        reference="prisma schema",
        candidate="alembic head",
        item="inexpressible item",
        missing="not (only) in the alembic head",
        changes=PARTITIONED_LOGS,
    )


def test_the_prisma_schema_is_the_alembic_head(prisma_db: str, alembic_db: str) -> None:
    prisma, ours = snapshot(prisma_db), snapshot(alembic_db)
    assert len(prisma["tables"]) >= 15, "the shared DDL loaded too few tables"
    problems = schema_differences(prisma, ours)
    assert not problems, (
        "prisma/schema.prisma (tests/fixtures/prisma/shared-ddl.sql) and the Alembic head "
        "differ; update the schema, run `python -m devkit.prisma_ddl`, commit both:\n" + problems
    )


def test_a_migration_the_schema_does_not_follow_fails(prisma_db: str, alembic_db: str) -> None:
    """Guards the guard, one way: the database gains what the schema lacks."""
    with psycopg.connect(alembic_db, autocommit=True) as conn:
        conn.execute('ALTER TABLE users ADD COLUMN "referralCode" text')
        conn.execute("CREATE TABLE promo_codes (code text PRIMARY KEY)")
        conn.execute('CREATE INDEX "cron_leases_expiresAt_idx" ON cron_leases ("expiresAt")')
        conn.execute('ALTER TABLE data_exports ALTER COLUMN "attempts" SET DEFAULT 1')
        conn.execute("ALTER TABLE legacy_repairs DROP CONSTRAINT legacy_repairs_kind_check")
    problems = schema_differences(snapshot(prisma_db), snapshot(alembic_db))
    assert "only in alembic head: column users.referralCode" in problems
    assert "only in alembic head: table promo_codes" in problems
    assert "only in alembic head: column promo_codes.code" in problems
    assert "only in alembic head: index cron_leases_expiresAt_idx" in problems
    assert "changed column data_exports.attempts" in problems
    assert "default: prisma schema='0' alembic head='1'" in problems
    assert "inexpressible item not (only) in the alembic head: constraint " in problems
    assert "legacy_repairs_kind_check" in problems


def test_a_schema_the_database_does_not_follow_fails(
    scratch_database: ScratchDatabase, alembic_db: str
) -> None:
    """Guards the guard, the other way: the DDL (the schema) has what the database lacks."""
    ddl = SHARED_DDL.read_text(encoding="utf-8")
    doctored = ddl.replace(
        '    "clerkUpdatedAt" TIMESTAMP(3),\n',
        '    "clerkUpdatedAt" TIMESTAMP(3),\n    "nickname" TEXT,\n',
        1,  # the users table comes first
    ).replace('"keywords" BIGINT NOT NULL,', '"keywords" INTEGER NOT NULL,') + (
        'CREATE INDEX "webhook_events_error_idx" ON "webhook_events"("error");\n'
        """ALTER TYPE "UserTier" ADD VALUE 'TEAM';\n"""
    )
    assert doctored.count("nickname") == 1 and '"keywords" INTEGER NOT NULL' in doctored
    problems = schema_differences(snapshot(load(scratch_database, doctored)), snapshot(alembic_db))
    assert "only in prisma schema: column users.nickname" in problems
    assert "changed column search_daily_rollups.keywords" in problems
    assert "type: prisma schema='integer' alembic head='bigint'" in problems
    assert "only in prisma schema: index webhook_events_error_idx" in problems
    assert "changed enum UserTier" in problems


# --- the schema file itself -------------------------------------------------------------------

_MODEL = re.compile(r"^model (\w+) \{\n(.*?)^\}", re.MULTILINE | re.DOTALL)
_TABLE_MAP = re.compile(r'@@map\("([^"]+)"\)')
_FIELD = re.compile(r"^\s+(\w+)\s+(\w+)(\[\]|\?)?(.*)$")
_FIELD_MAP = re.compile(r'@map\("([^"]+)"\)')
_CREATE_TABLE = re.compile(r'^CREATE TABLE "(\w+)" \((.*?)^\);', re.MULTILINE | re.DOTALL)
_DDL_COLUMN = re.compile(r'^\s+"(\w+)" ', re.MULTILINE)


def schema_columns(schema: str) -> dict[str, list[str]]:
    """Table → columns, read from the schema text: scalar and enum fields, not relation fields."""
    models = {match.group(1): match.group(2) for match in _MODEL.finditer(schema)}
    tables: dict[str, list[str]] = {}
    for name, body in models.items():
        table = _TABLE_MAP.search(body)
        columns: list[str] = []
        for line in body.splitlines():
            field = _FIELD.match(line)
            if field is None or field.group(2) in models:
                continue  # a block attribute, a comment, or a relation field (no column)
            mapped = _FIELD_MAP.search(field.group(4))
            columns.append(mapped.group(1) if mapped else field.group(1))
        tables[table.group(1) if table else name] = columns
    return tables


def ddl_columns(ddl: str) -> dict[str, list[str]]:
    return {
        match.group(1): _DDL_COLUMN.findall(match.group(2)) for match in _CREATE_TABLE.finditer(ddl)
    }


def test_the_committed_ddl_is_of_the_current_schema() -> None:
    """Offline stand-in for `devkit.prisma_ddl --check`: an edit to the schema without
    regenerating the DDL shows up here as a table or column the two disagree on."""
    assert schema_columns(SCHEMA.read_text(encoding="utf-8")) == ddl_columns(
        SHARED_DDL.read_text(encoding="utf-8")
    )


def test_the_schema_reader_sees_a_column_added_to_the_schema_only() -> None:
    schema = SCHEMA.read_text(encoding="utf-8").replace(
        "  subscriptionCustomerId   String?\n",
        '  subscriptionCustomerId   String?\n  nickname String? @map("nick_name")\n',
    )
    columns = schema_columns(schema)
    assert columns["users"][-1] == "nick_name"
    assert "savedSearches" not in columns["users"]  # relation fields are not columns
    assert columns != ddl_columns(SHARED_DDL.read_text(encoding="utf-8"))


def test_every_inexpressible_item_is_a_comment_in_the_schema() -> None:
    comments = "\n".join(
        line for line in SCHEMA.read_text(encoding="utf-8").splitlines() if "//" in line
    )
    for key in INEXPRESSIBLE:
        name = key.split(" ", 1)[1].split("(", 1)[0]  # a function by its name, not arguments
        assert name in comments, f"{name} is not explained in a comment of prisma/schema.prisma"
