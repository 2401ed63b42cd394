"""Billing and Clerk ordering: which subscription is newest, when Clerk last changed a user,
and which Stripe customers were erased.

- `users."subscriptionCreatedAt"`: Stripe's `created` of the user's current subscription (from
  its own events, or the checkout session that made it). An event for another subscription takes
  the user over only when that subscription is newer, so a late event of a replaced subscription
  never does.
- `users."clerkUpdatedAt"`: the Clerk `updated_at` of the last user event applied; an older
  `user.updated` delivered late changes nothing.
- `erased_billing_customers`: the SHA-256 of each erased user's Stripe customer id (never the id
  itself), so the Stripe events of an erased customer are answered as processed instead of
  failing for days, without keeping anything that names the person.

Nullable columns without defaults (Prisma's writes never mention them) and a table of our own.

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-03 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = (
    "erased_billing_customers",
    "users.clerkUpdatedAt",
    "users.subscriptionCreatedAt",
)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)


def upgrade() -> None:
    op.add_column("users", sa.Column("subscriptionCreatedAt", TIMESTAMP3, nullable=True))
    op.add_column("users", sa.Column("clerkUpdatedAt", TIMESTAMP3, nullable=True))
    op.create_table(
        "erased_billing_customers",
        sa.Column("customerHash", sa.Text(), nullable=False),
        sa.Column("erasedAt", TIMESTAMP3, nullable=False),
        sa.PrimaryKeyConstraint("customerHash", name="erased_billing_customers_pkey"),
    )


def downgrade() -> None:
    op.drop_table("erased_billing_customers")
    op.drop_column("users", "clerkUpdatedAt")
    op.drop_column("users", "subscriptionCreatedAt")
