"""Initial schema: the seven tables of the original Prisma schema, plus documented additions.

Everything Prisma generates (tests/fixtures/prisma/original-ddl.sql) is reproduced as is.
Additions, all nullable or constraint-only so the original TypeScript app keeps working on the
same database:
- users."trialStartedAt"; saved_searches.description, results, "lastRunAt", "resultCount"
  (fields the legacy Redis records carry);
- users_email_lower_key: a case-insensitive unique email;
- users_tier_trialEndsAt_idx: serves the expired-trial lookup;
- feature_flags_rolloutPercent_check: rolloutPercent between 0 and 100.

A database that already holds the original's tables (made by `prisma db push`: the original had
no migrations, and no `alembic_version`) is adopted: its seven tables are compared with the
ones this revision builds (in a scratch schema, then dropped), and when they are Prisma's
exactly, only the additions are made, rows untouched (users_email_lower_key with the key it
has at head, 0017's, so that the placeholders a database at head accepts are accepted). Tables
that differ are refused, named, before anything changes.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:49:05.047116+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Prisma's DateTime: millisecond precision, no time zone (the app stores UTC).
TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


PRISMA_TABLES = (
    "users",
    "saved_searches",
    "search_history",
    "api_usage",
    "webhook_events",
    "feature_flags",
    "system_metrics",
)
DOWNGRADE_DROPS = PRISMA_TABLES  # with every row (`keyflash db downgrade` asks first)
BASELINE = "keyflash_baseline"  # the scratch schema the comparison builds this revision in
# What this revision adds to Prisma's tables, as (kind, table, name); made by `_add_additions`.
ADDITIONS = {
    ("column", "users", "trialStartedAt"),
    ("column", "saved_searches", "description"),
    ("column", "saved_searches", "results"),
    ("column", "saved_searches", "lastRunAt"),
    ("column", "saved_searches", "resultCount"),
    ("index", "users", "users_email_lower_key"),
    ("index", "users", "users_tier_trialEndsAt_idx"),
    ("constraint", "feature_flags", "feature_flags_rolloutPercent_check"),
}


def upgrade() -> None:
    if _holds_prisma_tables():
        _adopt()
    else:
        _create()


def _create() -> None:
    op.create_table(
        "api_usage",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("statusCode", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("ipAddress", sa.Text(), nullable=True),
        sa.Column("userAgent", sa.Text(), nullable=True),
        sa.Column(
            "timestamp", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "api_usage_endpoint_timestamp_idx", "api_usage", ["endpoint", "timestamp"], unique=False
    )
    op.create_index(
        "api_usage_ipAddress_timestamp_idx", "api_usage", ["ipAddress", "timestamp"], unique=False
    )
    op.create_index(
        "api_usage_userId_timestamp_idx", "api_usage", ["userId", "timestamp"], unique=False
    )
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("rolloutPercent", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("allowedUsers", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.Column("createdBy", sa.Text(), nullable=True),
        # Addition: the 0-100 range the Prisma comment promised.
        sa.CheckConstraint(
            '"rolloutPercent" >= 0 AND "rolloutPercent" <= 100',
            name="feature_flags_rolloutPercent_check",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("feature_flags_key_key", "feature_flags", ["key"], unique=True)
    op.create_table(
        "system_metrics",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("tags", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "timestamp", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "system_metrics_metric_timestamp_idx",
        "system_metrics",
        ["metric", "timestamp"],
        unique=False,
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column(
            "tier",
            sa.Enum("FREE", "PRO", "ENTERPRISE", name="UserTier"),
            server_default=sa.text("'FREE'"),
            nullable=False,
        ),
        sa.Column(
            "keywordSearchesThisMonth", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "keywordSearchesTotal", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column(
            "monthlyResetAt",
            TIMESTAMP3,
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("stripeCustomerId", sa.Text(), nullable=True),
        sa.Column("stripeSubscriptionId", sa.Text(), nullable=True),
        sa.Column("subscriptionStatus", sa.Text(), nullable=True),
        sa.Column("subscriptionPlan", sa.Text(), nullable=True),
        sa.Column("subscriptionEndsAt", TIMESTAMP3, nullable=True),
        sa.Column("trialEndsAt", TIMESTAMP3, nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.Column("trialStartedAt", TIMESTAMP3, nullable=True),  # addition
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("users_createdAt_idx", "users", ["createdAt"], unique=False)
    op.create_index("users_email_idx", "users", ["email"], unique=False)
    op.create_index("users_email_key", "users", ["email"], unique=True)
    # Additions: case-insensitive email uniqueness; the expired-trial lookup.
    op.create_index(
        "users_email_lower_key", "users", [sa.literal_column('lower("email")')], unique=True
    )
    op.create_index("users_stripeCustomerId_idx", "users", ["stripeCustomerId"], unique=False)
    op.create_index("users_stripeCustomerId_key", "users", ["stripeCustomerId"], unique=True)
    op.create_index(
        "users_stripeSubscriptionId_key", "users", ["stripeSubscriptionId"], unique=True
    )
    op.create_index("users_tier_trialEndsAt_idx", "users", ["tier", "trialEndsAt"], unique=False)
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), server_default=sa.text("'stripe'"), nullable=False),
        sa.Column("processed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("processedAt", TIMESTAMP3, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "lastAttemptAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "webhook_events_processed_createdAt_idx",
        "webhook_events",
        ["processed", "createdAt"],
        unique=False,
    )
    op.create_index(
        "webhook_events_type_createdAt_idx", "webhook_events", ["type", "createdAt"], unique=False
    )
    op.create_table(
        "saved_searches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("keywords", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("location", sa.Text(), server_default=sa.text("'US'"), nullable=False),
        sa.Column("language", sa.Text(), server_default=sa.text("'en'"), nullable=False),
        sa.Column("matchType", sa.Text(), server_default=sa.text("'broad'"), nullable=False),
        sa.Column("keywordCount", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.Column(
            "lastAccessedAt",
            TIMESTAMP3,
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        # Additions: the legacy Redis saved-search record's fields.
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("lastRunAt", TIMESTAMP3, nullable=True),
        sa.Column("resultCount", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["userId"],
            ["users.id"],
            name="saved_searches_userId_fkey",
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "saved_searches_userId_createdAt_idx",
        "saved_searches",
        ["userId", "createdAt"],
        unique=False,
    )
    op.create_index(
        "saved_searches_userId_lastAccessedAt_idx",
        "saved_searches",
        ["userId", "lastAccessedAt"],
        unique=False,
    )
    op.create_table(
        "search_history",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=True),
        sa.Column("keywords", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("language", sa.Text(), nullable=False),
        sa.Column("matchType", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("cacheHit", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("responseTime", sa.Integer(), nullable=False),
        sa.Column("keywordCount", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("avgVolume", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("totalVolume", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "searchedAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("userAgent", sa.Text(), nullable=True),
        sa.Column("ipAddress", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["userId"],
            ["users.id"],
            name="search_history_userId_fkey",
            onupdate="CASCADE",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("search_history_provider_idx", "search_history", ["provider"], unique=False)
    op.create_index("search_history_searchedAt_idx", "search_history", ["searchedAt"], unique=False)
    op.create_index(
        "search_history_userId_searchedAt_idx",
        "search_history",
        ["userId", "searchedAt"],
        unique=False,
    )


def _holds_prisma_tables() -> bool:
    found = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname = ANY(:tables)"
            ),
            {"tables": list(PRISMA_TABLES)},
        )
        .scalar_one()
    )
    return bool(found)


def _adopt() -> None:
    """The original app's tables, made by Prisma: when they are its schema exactly, add what
    this revision adds; otherwise refuse, naming the differences, before anything changes."""
    bind = op.get_bind()
    path = bind.execute(sa.text("SELECT current_setting('search_path')")).scalar_one()
    op.execute(f"CREATE SCHEMA {BASELINE}")
    bind.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": BASELINE})
    _create()
    expected = {k: v for k, v in _describe(BASELINE).items() if k[:3] not in ADDITIONS}
    op.execute(f"DROP SCHEMA {BASELINE} CASCADE")
    bind.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": path})
    found = _describe("public")
    gone = {table for kind, table, _ in expected if kind == "table"} - {
        table for kind, table, _ in found if kind == "table"
    }
    differences = [
        f"{kind} {table}{'' if kind == 'table' else '.' + name}: "
        + ("missing" if key not in found else "not in Prisma's schema" if key not in expected
           else f"{found[key]} where Prisma's is {expected[key]}")
        for key in sorted(expected.keys() | found.keys(), key=lambda k: (k[0] != "table", k))
        for kind, table, name in [key]
        if expected.get(key) != found.get(key) and (kind == "table" or table not in gone)
    ]  # fmt: skip
    if differences:
        shown = "; ".join(differences[:8]) + ("; …" if len(differences) > 8 else "")
        raise CommandError(
            f"the database holds tables of the original app's Prisma schema, but not as Prisma "
            f"made them ({len(differences)} difference{'s' if len(differences) > 1 else ''}: "
            f"{shown}). Nothing was changed: bring them to the original schema "
            "(tests/fixtures/prisma/original-ddl.sql) and migrate again, or migrate an empty "
            "database and copy the rows into it"
        )
    _refuse_case_variant_emails()
    _refuse_rollout_percents_out_of_range()
    _add_additions()
    op.get_context().config.attributes["adopted_prisma_tables"] = True  # type: ignore[union-attr]


def _describe(schema: str) -> dict[tuple[str, str, str], str]:
    """The seven tables in `schema`: (kind, table, name) → definition, for tables, columns (in
    order), constraints, indexes and the enum, printed as if `schema` were the only one."""
    bind = op.get_bind()
    path = bind.execute(sa.text("SELECT current_setting('search_path')")).scalar_one()
    bind.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": schema})
    params = {"schema": schema, "tables": list(PRISMA_TABLES)}
    tables = """FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = :schema AND c.relname = ANY(:tables)"""
    queries = {
        "table": f"SELECT c.relname, c.relname, c.relkind::text {tables}",
        "column": f"""SELECT c.relname, a.attname, concat_ws(' ', row_number() OVER (PARTITION BY
            c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
            CASE WHEN a.attnotnull THEN 'NOT NULL' END, 'DEFAULT ' || pg_get_expr(d.adbin,
            d.adrelid)) {tables.replace("FROM pg_class c", "FROM pg_class c JOIN pg_attribute a "
            "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped LEFT JOIN "
            "pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum")}""",
        "constraint": f"""SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
            {tables.replace("FROM pg_class c", "FROM pg_class c JOIN pg_constraint k ON "
            "k.conrelid = c.oid")}""",
        "index": f"""SELECT c.relname, i.relname, replace(pg_get_indexdef(x.indexrelid),
            ' ON ' || :schema || '.', ' ON ') || CASE WHEN x.indisvalid THEN '' ELSE ' INVALID'
            END {tables.replace("FROM pg_class c", "FROM pg_class c JOIN pg_index x ON "
            "x.indrelid = c.oid JOIN pg_class i ON i.oid = x.indexrelid")}""",
        "type": """SELECT 'UserTier', t.typname, string_agg(e.enumlabel, ',' ORDER BY
            e.enumsortorder) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            JOIN pg_enum e ON e.enumtypid = t.oid WHERE n.nspname = :schema
            AND t.typname = 'UserTier' GROUP BY t.typname""",
    }  # fmt: skip
    found: dict[tuple[str, str, str], str] = {
        (kind, table, name): definition
        for kind, query in queries.items()
        for table, name, definition in bind.execute(sa.text(query), params)
    }
    bind.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": path})
    return found


def _email_keys() -> str:
    """The key `users_email_lower_key` has at head (0017's): real addresses compared
    case-insensitively, the `{id}@keyflash.local` placeholder exactly. Adoption checks and
    builds that one, so it accepts what a database at head accepts."""
    script = op.get_context().script
    assert script is not None
    keys: str = script.get_revision("0017").module.PLACEHOLDERS_EXACT
    return keys


def _refuse_case_variant_emails() -> None:
    """Prisma's emails are unique as written; ours per `_email_keys`."""
    clashing = (
        "SELECT email FROM (SELECT email, count(*) OVER (PARTITION BY "
        f"{_email_keys()}) AS n FROM users) AS u WHERE n > 1"
    )
    count = op.get_bind().execute(sa.text(f"SELECT count(*) FROM ({clashing}) AS c")).scalar_one()
    if count:
        raise CommandError(
            f"users holds {count} email addresses that differ from another only in case (the "
            f"original's key is case-sensitive, ours is not: {clashing} ORDER BY lower(email) "
            "lists them). Nothing was changed: settle those accounts and migrate again"
        )


def _refuse_rollout_percents_out_of_range() -> None:
    """Prisma's rolloutPercent is any integer; ours is 0 to 100 (the CHECK in ADDITIONS)."""
    outside = (
        op.get_bind()
        .execute(
            sa.text(
                'SELECT count(*) FROM feature_flags WHERE "rolloutPercent" NOT BETWEEN 0 AND 100'
            )
        )
        .scalar_one()
    )
    if outside:
        raise CommandError(
            f"feature_flags holds {outside} flag{'s' if outside > 1 else ''} whose "
            '"rolloutPercent" is not between 0 and 100 (SELECT key, "rolloutPercent" FROM '
            'feature_flags WHERE "rolloutPercent" NOT BETWEEN 0 AND 100 lists them). Nothing '
            "was changed: set them within 0 and 100 and migrate again"
        )


def _add_additions() -> None:
    """ADDITIONS, made as `_create` makes them (columns last, as there), but for
    users_email_lower_key: head's key, which the rows were checked against (0017 rebuilds it
    the same)."""
    op.add_column("users", sa.Column("trialStartedAt", TIMESTAMP3, nullable=True))
    op.add_column("saved_searches", sa.Column("description", sa.Text(), nullable=True))
    op.add_column(
        "saved_searches",
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("saved_searches", sa.Column("lastRunAt", TIMESTAMP3, nullable=True))
    op.add_column("saved_searches", sa.Column("resultCount", sa.Integer(), nullable=True))
    op.execute(f'CREATE UNIQUE INDEX "users_email_lower_key" ON "users" {_email_keys()}')
    op.create_index("users_tier_trialEndsAt_idx", "users", ["tier", "trialEndsAt"], unique=False)
    op.create_check_constraint(
        "feature_flags_rolloutPercent_check",
        "feature_flags",
        '"rolloutPercent" >= 0 AND "rolloutPercent" <= 100',
    )


def downgrade() -> None:
    op.drop_index("search_history_userId_searchedAt_idx", table_name="search_history")
    op.drop_index("search_history_searchedAt_idx", table_name="search_history")
    op.drop_index("search_history_provider_idx", table_name="search_history")
    op.drop_table("search_history")
    op.drop_index("saved_searches_userId_lastAccessedAt_idx", table_name="saved_searches")
    op.drop_index("saved_searches_userId_createdAt_idx", table_name="saved_searches")
    op.drop_table("saved_searches")
    op.drop_index("webhook_events_type_createdAt_idx", table_name="webhook_events")
    op.drop_index("webhook_events_processed_createdAt_idx", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.drop_index("users_tier_trialEndsAt_idx", table_name="users")
    op.drop_index("users_stripeSubscriptionId_key", table_name="users")
    op.drop_index("users_stripeCustomerId_key", table_name="users")
    op.drop_index("users_stripeCustomerId_idx", table_name="users")
    op.drop_index("users_email_lower_key", table_name="users")
    op.drop_index("users_email_key", table_name="users")
    op.drop_index("users_email_idx", table_name="users")
    op.drop_index("users_createdAt_idx", table_name="users")
    op.drop_table("users")
    op.drop_index("system_metrics_metric_timestamp_idx", table_name="system_metrics")
    op.drop_table("system_metrics")
    op.drop_index("feature_flags_key_key", table_name="feature_flags")
    op.drop_table("feature_flags")
    op.drop_index("api_usage_userId_timestamp_idx", table_name="api_usage")
    op.drop_index("api_usage_ipAddress_timestamp_idx", table_name="api_usage")
    op.drop_index("api_usage_endpoint_timestamp_idx", table_name="api_usage")
    op.drop_table("api_usage")
    op.execute('DROP TYPE "UserTier"')
