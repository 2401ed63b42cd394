"""`users_email_lower_key` compares the `{id}@keyflash.local` placeholder exactly, as its id is.

Emails are unique case-insensitively (`lower(email)`), but the placeholder a user without an
email claim gets is built from the Clerk id, which is case-sensitive: `user_2Ab` and `user_2aB`
are two people, and the second one's placeholder collided with the first's, so that person got
409 on every route and their Clerk `user.created` was refused for good. The index keeps
`lower(email)` as its leading key (every case-insensitive lookup still uses it) and adds a
second one: the email as stored for a placeholder, `''` for a real address. Real addresses stay
unique case-insensitively; placeholders only exactly (as `users_email_key` already has them).

Swapped without a moment of no uniqueness and without blocking writes: the new index is built
CONCURRENTLY under a temporary name, the old one dropped CONCURRENTLY, the new one renamed.
Prisma's client never names an index; it still sees `P2002` for a case-variant real address.
The downgrade fails (unique violation) while two placeholders differ only in case: settle those
accounts first.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 06:00:00.000000+00:00
"""

import logging
from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.env")
NAME = "users_email_lower_key"
BUILDING = "users_email_lower_key_new"
CASE_INSENSITIVE = '(lower("email"))'
PLACEHOLDERS_EXACT = (
    '(lower("email"), (CASE WHEN right(lower("email"), 15) = \'@keyflash.local\' THEN "email" '
    "ELSE '' END))"
)


def upgrade() -> None:
    _swap(PLACEHOLDERS_EXACT)


def downgrade() -> None:
    _swap(CASE_INSENSITIVE)


def _swap(keys: str) -> None:
    with op.get_context().autocommit_block():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{BUILDING}"')  # a killed build's leftover
        try:
            op.execute(f'CREATE UNIQUE INDEX CONCURRENTLY "{BUILDING}" ON "users" {keys}')
        except Exception:
            # A failed concurrent build leaves its index behind, invalid: the schema must stay
            # the one the version names (the revision before). Should the drop fail too (the
            # same lock), the build's error is the one reported; the next run drops it first.
            try:
                op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{BUILDING}"')
            except Exception:
                log.warning("could not drop %s after its build failed", BUILDING)
            raise
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{NAME}"')
        op.execute(f'ALTER INDEX "{BUILDING}" RENAME TO "{NAME}"')
