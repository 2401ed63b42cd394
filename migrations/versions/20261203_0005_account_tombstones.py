"""`account_tombstones`: what an erasure keeps so that erasing does not reset a trial.

One row per keyed identity of an erased account: `key` is an HMAC-SHA256 (keyed by
`ACCOUNT_HMAC_SECRET`) of the Clerk user id, or of the normalised email; the row holds the
trial's end and the keywords the account had used, nothing else. Provisioning a user whose id
or email matches continues that trial instead of starting a new one
(`shared.repositories.tombstones`).

Our own table: Prisma never reads or writes it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("account_tombstones",)


def upgrade() -> None:
    op.create_table(
        "account_tombstones",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("trialEndsAt", postgresql.TIMESTAMP(precision=3), nullable=False),
        sa.Column("keywordsUsed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="account_tombstones_pkey"),
    )


def downgrade() -> None:
    op.drop_table("account_tombstones")
