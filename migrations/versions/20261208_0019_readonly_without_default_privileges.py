"""`keyflash_readonly` reads only what is granted to it by name: no default privileges.

Revision 0011 gave the role SELECT on every table and view the migrating role would create in
`public` (`ALTER DEFAULT PRIVILEGES`). Those grants are whole tables, so a partition of
`search_history` attached by hand there (a bare `CREATE TABLE … PARTITION OF` lands in `public`)
or a scratch copy of `users` let the role read IP addresses, user agents and emails. Neither
use needs them: a reader of a partitioned table is checked on the parent only, and a migration
that adds a report grants it in the same revision. So the default privileges go, and so does
SELECT on every relation of `public` they reached since, every one but those the role is meant
to read (the reports and the tables granted whole or by column, whose grants stay as they are).

The default privileges are revoked for every role that gave them (0011 may have run as another
role than this one), and nothing is done when the role was dropped by hand. This also takes
SELECT back from any other relation in `public` an operator granted the role by hand.

Down: the default privileges come back (the migrating role's); the grants on tables made
since do not (nobody chose them).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08 09:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "keyflash_readonly"
# Granted by name (0011, 0013): whole, or some columns. A table-level REVOKE would take the
# column grants too, so these are left alone.
GRANTED = (
    "report_usage_by_tier",
    "report_keyword_trends",
    "report_provider_performance",
    "search_daily_rollups",
    "system_metrics",
    "users",
    "search_history",
    "api_usage",
    "cron_leases",
    "organizations",
    "organization_members",
)

REVOKE = f"""
DO $$
DECLARE
    owner regrole;
    relation regclass;
BEGIN
    IF to_regrole('{ROLE}') IS NULL THEN
        RETURN;  -- dropped by hand: nothing is granted to it
    END IF;
    FOR owner IN
        SELECT DISTINCT d.defaclrole::regrole
          FROM pg_default_acl d
         CROSS JOIN LATERAL aclexplode(d.defaclacl) a
         WHERE d.defaclnamespace = 'public'::regnamespace
           AND d.defaclobjtype = 'r'
           AND a.grantee = '{ROLE}'::regrole
    LOOP
        BEGIN
            EXECUTE format(
                'ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA public '
                'REVOKE SELECT ON TABLES FROM {ROLE}', owner);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role % gives {ROLE} SELECT on its future tables in public, and '
                'this migration may not take that back', owner
                USING HINT = format('run it as %s or a member of it (or a superuser), or run '
                    '"ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA public REVOKE SELECT ON '
                    'TABLES FROM {ROLE}" as such a role first', owner, owner);
        END;
    END LOOP;
    FOR relation IN
        SELECT DISTINCT c.oid::regclass
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE n.nspname = 'public'
           AND a.grantee = '{ROLE}'::regrole
           AND c.relname <> ALL (ARRAY[{", ".join(f"'{name}'" for name in GRANTED)}])
    LOOP
        EXECUTE format('REVOKE SELECT ON %s FROM {ROLE}', relation);
    END LOOP;
END $$
"""


def upgrade() -> None:
    op.execute(REVOKE)


def downgrade() -> None:
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {ROLE}")
