"""Data exports: `data_exports`, one row per asynchronous export of a user's personal data.

A user asks for an export (`POST /api/me/export`); the exports cron builds the document in one
snapshot, stores it gzip-compressed in object storage (`objectKey`) and marks the row `ready`
until `expiresAt`. The partial unique index allows one open (`pending` or `running`) export per
user, so asking again is one `INSERT … ON CONFLICT` that returns the open one. Rows go with the
user (ON DELETE CASCADE): an erasure leaves no export behind.

Our own table: Prisma never reads or writes it.

Revision ID: 0009
Revises: 0004
Create Date: 2026-12-03 18:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("data_exports",)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    op.create_table(
        "data_exports",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("objectKey", sa.Text(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=True),
        sa.Column("gzipBytes", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("createdAt", TIMESTAMP3, nullable=False),
        sa.Column("startedAt", TIMESTAMP3, nullable=True),
        sa.Column("finishedAt", TIMESTAMP3, nullable=True),
        sa.Column("expiresAt", TIMESTAMP3, nullable=True),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'ready', 'failed')", name="data_exports_status_check"
        ),
        sa.ForeignKeyConstraint(
            ["userId"], ["users.id"], name="data_exports_userId_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="data_exports_pkey"),
    )
    op.create_index(
        "data_exports_one_open_per_user",
        "data_exports",
        ["userId"],
        unique=True,
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_index("data_exports_status_createdAt_idx", "data_exports", ["status", "createdAt"])


def downgrade() -> None:
    op.drop_table("data_exports")
