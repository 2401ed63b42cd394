"""legacy_repairs: the dual-write outbox of the Redis → Postgres migration (shared.storage).

With STORAGE_MODE=dual or fallback, Postgres is the commit point and the original Redis layout
is kept up to date after each write. The row naming the Redis key to update is written in the
same transaction as the data, and deleted once Redis matches; a row that stays means Redis
still has to be repaired (`python -m devkit.legacy repair`). Our own table: Prisma never
touches it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("legacy_repairs",)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    op.create_table(
        "legacy_repairs",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "createdAt", TIMESTAMP3, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.CheckConstraint(
            "kind IN ('user', 'saved_search', 'usage', 'erasure')", name="legacy_repairs_kind_check"
        ),
        sa.PrimaryKeyConstraint("key", name="legacy_repairs_pkey"),
    )
    op.create_index("legacy_repairs_userId_idx", "legacy_repairs", ["userId"], unique=False)


def downgrade() -> None:
    op.drop_index("legacy_repairs_userId_idx", table_name="legacy_repairs")
    op.drop_table("legacy_repairs")
