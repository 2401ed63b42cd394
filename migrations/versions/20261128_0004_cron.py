"""Crons: `cron_leases`, `search_daily_rollups`, and time indexes for retention deletes.

- `cron_leases`: one row per job. A run takes the lease with one `INSERT … ON CONFLICT … WHERE
  "expiresAt" < now` statement and gives it back by holder token; it carries the job's resume
  state (e.g. the rollup watermark). A lease row, not an advisory lock: Neon's pooler is
  PgBouncer in transaction mode, so a session lock would not outlive one batch.
- `search_daily_rollups`: searches, keywords, response time and cache hits per provider per UTC
  day, upserted by the rollup cron from `search_history`.
- `api_usage_timestamp_idx`, `system_metrics_timestamp_idx`: the prune cron deletes by age in
  small batches; without an index led by the time column every batch would scan the table.
  Built CONCURRENTLY, so a large production table keeps taking writes meanwhile.

The index builds commit what ran before them (CONCURRENTLY runs outside a transaction), so a
run that fails at one (a lock it gave up waiting for) leaves the tables and any index already
built while the version still says 0003. Each step is written to be run again: tables and
indexes are created when missing, a build's INVALID leftover is dropped before the build and
after it fails, and the way down drops only what is there. Running the revision again, once the
cause is gone, finishes it either way.

Our own tables: Prisma never reads or writes them; the indexes do not change what Prisma sends.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00.000000+00:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("search_daily_rollups", "cron_leases")

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)
INDEXES = [
    ("api_usage_timestamp_idx", "api_usage"),
    ("system_metrics_timestamp_idx", "system_metrics"),
]
log = logging.getLogger("alembic.env")


def upgrade() -> None:
    op.create_table(
        "cron_leases",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("acquiredAt", TIMESTAMP3, nullable=True),
        sa.Column("expiresAt", TIMESTAMP3, nullable=False),
        sa.Column("lastCompletedAt", TIMESTAMP3, nullable=True),
        sa.Column("state", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.PrimaryKeyConstraint("job", name="cron_leases_pkey"),
        if_not_exists=True,
    )
    op.create_table(
        "search_daily_rollups",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("searches", sa.Integer(), nullable=False),
        sa.Column("keywords", sa.BigInteger(), nullable=False),
        sa.Column("cacheHits", sa.Integer(), nullable=False),
        sa.Column("responseTimeTotal", sa.BigInteger(), nullable=False),
        sa.Column("avgResponseTime", sa.Double(), nullable=False),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.PrimaryKeyConstraint("day", "provider", name="search_daily_rollups_pkey"),
        if_not_exists=True,
    )
    with op.get_context().autocommit_block():
        for name, table in INDEXES:
            _build(name, table)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _ in reversed(INDEXES):
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    op.drop_table("search_daily_rollups", if_exists=True)
    op.drop_table("cron_leases", if_exists=True)


def _build(name: str, table: str) -> None:
    """CREATE INDEX CONCURRENTLY on `table`'s "timestamp", leaving no INVALID index behind."""
    _drop_invalid(name)  # a failed build's leftover, which IF NOT EXISTS would keep
    try:
        op.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ("timestamp")')
    except Exception:
        try:
            _drop_invalid(name)
        except Exception:  # the build's own error is the one to report; a re-run drops it
            log.warning("could not drop the invalid index %s after its build failed", name)
        raise


def _drop_invalid(name: str) -> None:
    invalid = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE i.relname = :name AND i.relnamespace = 'public'::regnamespace "
                "AND NOT x.indisvalid"
            ),
            {"name": name},
        )
        .first()
    )
    if invalid:
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
