"""Organizations: Clerk Organizations mirrored, team-shared searches and a pooled quota.

- `organizations`: one row per Clerk organization (its id is the key), with a tier, Stripe
  customer and subscription and their ordering stamps like `users`, and the organization's
  monthly keyword counter and reset stamp. `clerkUpdatedAt` orders Clerk's events (an older one
  delivered late changes nothing); `deletedAt` keeps a deleted organization as a tombstone, so
  a late event never brings it back.
- `organization_members`: one row per (organization, user) with the role and the permissions
  Clerk sent, ordered and tombstoned the same way. No foreign key to `users`: Clerk may report a
  membership of someone who has not signed in to KeyFlash yet.
- `organizationId` (nullable) on `saved_searches` (a team's shared searches), `search_history`
  (the searches made for a team) and `keyword_reservations` (which quota a reservation holds).
  A personal row keeps it NULL, so personal data is exactly as before.
- `saved_searches."userId"` becomes nullable: a team's search outlives its creator's erasure,
  with the creator cleared. The check `saved_searches_owner_check` keeps every search owned by a
  user or an organization.

Prisma can express all of it but the partial indexes and the check (listed in
prisma/schema.prisma). The read-only analytics role may read the organizations' non-personal
columns and `search_history."organizationId"`, so admin analytics can be cut per organization.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 13:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
DOWNGRADE_DROPS = (
    "search_history.organizationId",
    "keyword_reservations.organizationId",
    "saved_searches.organizationId",
    "organization_members",
    "organizations",
)

TIMESTAMP3 = postgresql.TIMESTAMP(precision=3)
NOW = sa.text("CURRENT_TIMESTAMP")
ROLE = "keyflash_readonly"
# Tables created after revision 0011 are readable whole through its default privileges; these
# two hold personal or billing columns, so the role gets only these columns of them.
READABLE_COLUMNS = {
    "organizations": '"id", "tier", "keywordSearchesThisMonth", "createdAt", "deletedAt"',
    "organization_members": '"organizationId", "userId", "role", "createdAt", "deletedAt"',
}


def upgrade() -> None:
    tier = postgresql.ENUM(name="UserTier", create_type=False)
    op.create_table(
        "organizations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=True),
        sa.Column("tier", tier, server_default=sa.text("'FREE'"), nullable=False),
        sa.Column("keywordSearchesThisMonth", sa.Integer(), server_default="0", nullable=False),
        sa.Column("keywordSearchesTotal", sa.Integer(), server_default="0", nullable=False),
        sa.Column("monthlyResetAt", TIMESTAMP3, server_default=NOW, nullable=False),
        sa.Column("stripeCustomerId", sa.Text(), nullable=True),
        sa.Column("stripeSubscriptionId", sa.Text(), nullable=True),
        sa.Column("subscriptionStatus", sa.Text(), nullable=True),
        sa.Column("subscriptionPlan", sa.Text(), nullable=True),
        sa.Column("subscriptionEndsAt", TIMESTAMP3, nullable=True),
        sa.Column("subscriptionEventAt", TIMESTAMP3, nullable=True),
        sa.Column("subscriptionCreatedAt", TIMESTAMP3, nullable=True),
        sa.Column("clerkUpdatedAt", TIMESTAMP3, nullable=True),
        sa.Column("deletedAt", TIMESTAMP3, nullable=True),
        sa.Column("createdAt", TIMESTAMP3, server_default=NOW, nullable=False),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.PrimaryKeyConstraint("id", name="organizations_pkey"),
    )
    op.create_index(
        "organizations_stripeCustomerId_key", "organizations", ["stripeCustomerId"], unique=True
    )
    op.create_index(
        "organizations_stripeSubscriptionId_key",
        "organizations",
        ["stripeSubscriptionId"],
        unique=True,
    )
    op.create_table(
        "organization_members",
        sa.Column("organizationId", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column(
            "permissions",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("ARRAY[]::text[]"),
            nullable=True,  # Prisma's lists are nullable
        ),
        sa.Column("clerkUpdatedAt", TIMESTAMP3, nullable=True),
        sa.Column("deletedAt", TIMESTAMP3, nullable=True),
        sa.Column("createdAt", TIMESTAMP3, server_default=NOW, nullable=False),
        sa.Column("updatedAt", TIMESTAMP3, nullable=False),
        sa.ForeignKeyConstraint(
            ["organizationId"],
            ["organizations.id"],
            name="organization_members_organizationId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organizationId", "userId", name="organization_members_pkey"),
    )
    op.create_index("organization_members_userId_idx", "organization_members", ["userId"])

    op.add_column("saved_searches", sa.Column("organizationId", sa.Text(), nullable=True))
    op.alter_column("saved_searches", "userId", nullable=True)
    op.create_foreign_key(
        "saved_searches_organizationId_fkey",
        "saved_searches",
        "organizations",
        ["organizationId"],
        ["id"],
        ondelete="CASCADE",
        onupdate="CASCADE",
    )
    op.create_check_constraint(
        "saved_searches_owner_check",
        "saved_searches",
        '"userId" IS NOT NULL OR "organizationId" IS NOT NULL',
    )
    op.create_index(
        "saved_searches_organizationId_updatedAt_idx",
        "saved_searches",
        ["organizationId", "updatedAt"],
        postgresql_where=sa.text('"organizationId" IS NOT NULL'),
    )

    op.add_column("keyword_reservations", sa.Column("organizationId", sa.Text(), nullable=True))
    op.create_foreign_key(
        "keyword_reservations_organizationId_fkey",
        "keyword_reservations",
        "organizations",
        ["organizationId"],
        ["id"],
        ondelete="CASCADE",
        onupdate="CASCADE",
    )

    # Partitioned: the column reaches every partition; no foreign key (the organization's
    # deletion clears or removes its rows itself), and the index only holds team rows, so
    # personal inserts pay nothing for it.
    op.add_column("search_history", sa.Column("organizationId", sa.Text(), nullable=True))
    op.create_index(
        "search_history_organizationId_searchedAt_idx",
        "search_history",
        ["organizationId", "searchedAt"],
        postgresql_where=sa.text('"organizationId" IS NOT NULL'),
    )

    for table, columns in READABLE_COLUMNS.items():
        op.execute(f"REVOKE SELECT ON {table} FROM {ROLE}")
        op.execute(f"GRANT SELECT ({columns}) ON {table} TO {ROLE}")
    op.execute(f'GRANT SELECT ("organizationId") ON search_history TO {ROLE}')


def downgrade() -> None:
    op.drop_index("search_history_organizationId_searchedAt_idx", table_name="search_history")
    op.drop_column("search_history", "organizationId")
    op.drop_constraint("keyword_reservations_organizationId_fkey", "keyword_reservations")
    op.drop_column("keyword_reservations", "organizationId")
    op.drop_index("saved_searches_organizationId_updatedAt_idx", table_name="saved_searches")
    op.drop_constraint("saved_searches_owner_check", "saved_searches")
    op.drop_constraint("saved_searches_organizationId_fkey", "saved_searches")
    # A team's search without a creator has no personal owner to return to.
    op.execute('DELETE FROM saved_searches WHERE "userId" IS NULL')
    op.alter_column("saved_searches", "userId", nullable=False)
    op.drop_column("saved_searches", "organizationId")
    op.drop_table("organization_members")
    op.drop_table("organizations")
