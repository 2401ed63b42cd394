"""users."subscriptionEventAt": when the last applied Stripe subscription event was created.

Stripe delivers events out of order and retries them for days; the billing core applies a
subscription event only when it is not older than this stamp (compared inside the UPDATE, so
concurrent deliveries cannot interleave), so a late event never rolls a subscription back.
Nullable without a default: Prisma's writes never mention it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("users.subscriptionEventAt",)


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("subscriptionEventAt", postgresql.TIMESTAMP(precision=3), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("users", "subscriptionEventAt")
