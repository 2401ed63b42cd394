"""legacy_counter_deltas: usage increments still owed to the original app's Redis counters.

During STORAGE_MODE=dual/fallback the TypeScript app keeps incrementing `usage:{id}:{YYYY-MM}`
and `trial-usage:{id}:{date}`. Copying Postgres's count over such a counter would erase what
the original added, so each reservation (or release) of ours records its delta here, in the
same transaction as the Postgres counter change; the delta is then applied with INCRBY under a
once-only marker in Redis and the row deleted. A row that stays is a delta Redis still owes.
Our own table: Prisma never touches it.

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-03 18:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("legacy_counter_deltas",)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    op.create_table(
        "legacy_counter_deltas",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("expiresAt", TIMESTAMP3, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.PrimaryKeyConstraint("id", name="legacy_counter_deltas_pkey"),
    )
    op.create_index(
        "legacy_counter_deltas_userId_idx", "legacy_counter_deltas", ["userId"], unique=False
    )


def downgrade() -> None:
    op.drop_index("legacy_counter_deltas_userId_idx", table_name="legacy_counter_deltas")
    op.drop_table("legacy_counter_deltas")
