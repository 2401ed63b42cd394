"""The Stripe customer the current subscription is on: `users."subscriptionCustomerId"` and
`organizations."subscriptionCustomerId"`.

An account's `stripeCustomerId` is not always its subscription's customer: a subscription paid
through a customer another account holds leaves the account's own (older) customer in place. So
`customer.deleted` of that older customer must not end the subscription, which Stripe keeps on
the other customer. Rows written before this column have it NULL: the old rule applies to them.

Nullable, no default (Prisma's writes never mention it).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 05:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = ("users.subscriptionCustomerId", "organizations.subscriptionCustomerId")


def upgrade() -> None:
    for table in ("users", "organizations"):
        op.add_column(table, sa.Column("subscriptionCustomerId", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in ("organizations", "users"):
        op.drop_column(table, "subscriptionCustomerId")
