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

Our own tables: Prisma never reads or writes them; the indexes do not change what Prisma sends.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


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
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "api_usage_timestamp_idx",
            "api_usage",
            ["timestamp"],
            unique=False,
            postgresql_concurrently=True,
        )
        op.create_index(
            "system_metrics_timestamp_idx",
            "system_metrics",
            ["timestamp"],
            unique=False,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "system_metrics_timestamp_idx",
            table_name="system_metrics",
            postgresql_concurrently=True,
        )
        op.drop_index(
            "api_usage_timestamp_idx",
            table_name="api_usage",
            postgresql_concurrently=True,
        )
    op.drop_table("search_daily_rollups")
    op.drop_table("cron_leases")
