"""`account_tombstones."clerkDeleted"`: the Clerk id was deleted in Clerk, not only erased here.

Clerk never reuses an id, and its session tokens stay valid for up to a minute after it deletes
the user: a request with one provisioned the erased account again, and no later Clerk event
would ever erase it. `user.deleted` now sets the flag on the id's tombstone row (never on an
email's), and provisioning creates no row for a flagged id. An erasure through DELETE /api/me
leaves it false: that person keeps their Clerk account and may come back.

Adding a NOT NULL column with a constant default rewrites nothing (PostgreSQL 11+); existing
tombstones read false, as their erasures cannot be told apart any more.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 06:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("account_tombstones.clerkDeleted",)


def upgrade() -> None:
    op.add_column(
        "account_tombstones",
        sa.Column("clerkDeleted", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("account_tombstones", "clerkDeleted")
