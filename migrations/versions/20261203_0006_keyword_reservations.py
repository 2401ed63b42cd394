"""`keyword_reservations`: a keyword search's quota reservation until the search is recorded.

`POST /api/keywords` counts the keywords before calling the provider (so parallel requests
never overshoot the quota) and writes one row here in the same statement; recording the search
deletes it (the reservation is confirmed), a provider failure deletes it and gives the keywords
back. A function killed in between (its time limit, an out-of-memory kill) leaves the row, and
the `reconcile_reservations` cron gives back every reservation past its `expiresAt`.

Our own table: Prisma never reads or writes it. A deleted user's rows go with the user.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-03 18:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("keyword_reservations",)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    op.create_table(
        "keyword_reservations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("keywords", sa.Integer(), nullable=False),
        sa.Column("reservedAt", TIMESTAMP3, nullable=False),
        sa.Column("expiresAt", TIMESTAMP3, nullable=False),
        sa.ForeignKeyConstraint(
            ["userId"],
            ["users.id"],
            name="keyword_reservations_userId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="keyword_reservations_pkey"),
    )
    op.create_index(
        "keyword_reservations_expiresAt_idx", "keyword_reservations", ["expiresAt"], unique=False
    )
    op.create_index(
        "keyword_reservations_userId_idx", "keyword_reservations", ["userId"], unique=False
    )


def downgrade() -> None:
    op.drop_index("keyword_reservations_userId_idx", table_name="keyword_reservations")
    op.drop_index("keyword_reservations_expiresAt_idx", table_name="keyword_reservations")
    op.drop_table("keyword_reservations")
