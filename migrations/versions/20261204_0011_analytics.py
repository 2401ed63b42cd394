"""Analytics: the read-only group role `keyflash_readonly` and three materialized reports.

- `keyflash_readonly` (NOLOGIN): USAGE on the schema, SELECT on what the admin analytics,
  metrics and trends read, `default_transaction_read_only = on`, and SELECT on tables and views
  this role (the migrator) creates later. Personal columns stay out: `users` without email or
  Stripe ids, `search_history` and `api_usage` without IP address and user agent. Roles are
  cluster-wide, so the role may exist already (another database on the server, an earlier
  upgrade): creating it tolerates that. On Neon the migrating role is a member of
  `neon_superuser`, which has CREATEROLE, enough for all of this.
- `report_usage_by_tier` (month by current tier), `report_keyword_trends` (ISO week by
  normalised keyword), `report_provider_performance` (ISO week by provider, from the daily
  rollups): materialized views, each with the unique index REFRESH … CONCURRENTLY needs.
  Created WITH DATA: a view never populated cannot be refreshed concurrently.

Our own objects: Prisma never reads or writes them (listed in tests/core/test_prisma_schema.py
as what a Prisma schema cannot express).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 10:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "keyflash_readonly"

# Concurrent upgrades of other databases on the same server may create the role (or its
# setting) between our check and our statement: their insert wins, ours is a no-op.
CREATE_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        BEGIN
            CREATE ROLE {ROLE} NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
         WHERE r.rolname = '{ROLE}' AND s.setdatabase = 0
           AND 'default_transaction_read_only=on' = ANY (s.setconfig)
    ) THEN
        BEGIN
            ALTER ROLE {ROLE} SET default_transaction_read_only = on;
        EXCEPTION WHEN unique_violation THEN NULL;
        END;
    END IF;
END $$
"""

# The role goes only when nothing else holds it: no privilege in any other database
# (pg_shdepend) and no member that may use it (an operator's login role). PostgreSQL 16+ makes
# a CREATEROLE role that is not superuser (Neon's `<db>_owner`) an ADMIN member of each role it
# creates, with neither INHERIT nor SET: it may manage the role, not use it, so that membership
# does not count (the columns are 16+'s; a branch runs only on the server it fits). A role
# that may not drop it (no ADMIN on it) leaves it, as when it is in use.
DROP_ROLE_IF_UNUSED = f"""
DO $$
DECLARE
    used boolean;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
        RETURN;
    END IF;
    IF current_setting('server_version_num')::int >= 160000 THEN
        used := EXISTS (
            SELECT FROM pg_auth_members m
             WHERE m.roleid = '{ROLE}'::regrole AND (m.inherit_option OR m.set_option));
    ELSE
        used := EXISTS (SELECT FROM pg_auth_members m WHERE m.roleid = '{ROLE}'::regrole);
    END IF;
    IF NOT used AND NOT EXISTS (
           SELECT FROM pg_shdepend d
            WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = '{ROLE}'::regrole)
    THEN
        DROP ROLE {ROLE};
    END IF;
EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN NULL;
END $$
"""

# Whole tables: no personal data in them.
READABLE_TABLES = ("search_daily_rollups", "system_metrics")
# Tables with personal columns: only these columns.
READABLE_COLUMNS = {
    "users": (
        "id",
        "tier",
        "keywordSearchesThisMonth",
        "keywordSearchesTotal",
        "monthlyResetAt",
        "subscriptionStatus",
        "subscriptionPlan",
        "subscriptionEndsAt",
        "trialEndsAt",
        "trialStartedAt",
        "createdAt",
        "updatedAt",
    ),
    "search_history": (
        "id",
        "userId",
        "keywords",
        "location",
        "language",
        "matchType",
        "provider",
        "cacheHit",
        "responseTime",
        "keywordCount",
        "avgVolume",
        "totalVolume",
        "searchedAt",
    ),
    "api_usage": ("id", "userId", "endpoint", "method", "statusCode", "duration", "timestamp"),
    # The rollup cron's lease row carries each report's last refresh (`state.reports`).
    "cron_leases": ("job", "lastCompletedAt", "state"),
}

REPORTS = {
    "report_usage_by_tier": (
        """
        SELECT date_trunc('month', h."searchedAt") AS month,
               coalesce(u.tier::text, 'ANONYMOUS') AS tier,
               count(*)::bigint AS searches,
               coalesce(sum(h."keywordCount"), 0)::bigint AS keywords,
               count(DISTINCT h."userId")::bigint AS users,
               (count(*) FILTER (WHERE h."cacheHit"))::bigint AS "cacheHits"
          FROM search_history h
          LEFT JOIN users u ON u.id = h."userId"
         GROUP BY 1, 2
        """,
        ("month", "tier"),
    ),
    "report_keyword_trends": (
        """
        SELECT date_trunc('week', h."searchedAt") AS week,
               lower(btrim(k.keyword)) AS keyword,
               count(*)::bigint AS searches,
               count(DISTINCT h."userId")::bigint AS users
          FROM search_history h
         CROSS JOIN LATERAL unnest(h.keywords) AS k(keyword)
         WHERE btrim(k.keyword) <> ''
         GROUP BY 1, 2
        """,
        ("week", "keyword"),
    ),
    "report_provider_performance": (
        """
        SELECT date_trunc('week', r.day::timestamp) AS week,
               r.provider,
               sum(r.searches)::bigint AS searches,
               sum(r."cacheHits")::bigint AS "cacheHits",
               sum(r."responseTimeTotal")::bigint AS "responseTimeTotal"
          FROM search_daily_rollups r
         GROUP BY 1, 2
        """,
        ("week", "provider"),
    ),
}


def _columns(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def upgrade() -> None:
    for name, (query, key) in REPORTS.items():
        op.execute(f"CREATE MATERIALIZED VIEW {name} AS {query} WITH DATA")
        op.execute(f"CREATE UNIQUE INDEX {name}_key ON {name} ({_columns(key)})")
    op.execute(CREATE_ROLE)
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    readable = (*READABLE_TABLES, *REPORTS)
    op.execute(f"GRANT SELECT ON {', '.join(readable)} TO {ROLE}")
    for table, columns in READABLE_COLUMNS.items():
        op.execute(f"GRANT SELECT ({_columns(columns)}) ON {table} TO {ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {ROLE}")


def downgrade() -> None:
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
    for name in reversed(REPORTS):
        op.execute(f"DROP MATERIALIZED VIEW {name}")
    op.execute(DROP_ROLE_IF_UNUSED)
