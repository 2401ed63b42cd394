"""Indexes from evidence: every endpoint's SQL explained on 1M users, 5M history, 10M usage rows.

Benchmark section `indexes` (docs/performance.md#indexes-from-evidence) showed which indexes the
request paths, reports and crons use. This revision acts on it:

- `search_history_userId_searchedAt_stats_idx` replaces `search_history_userId_searchedAt_idx`:
  the same keys, plus `provider`, `responseTime` and `cacheHit` as INCLUDE columns, so a user's
  history stats are an index-only scan instead of one heap page per search (150 ms for an account
  with 50,000 searches). The history list and the erasure use its keys as before.
- Dropped, because nothing reads by them (no query in the code filters or sorts on their leading
  column) while every insert pays for them: `api_usage_endpoint_timestamp_idx` and
  `api_usage_ipAddress_timestamp_idx` (18 bytes of index per usage row, about 180 MB per 10M rows,
  on the table that grows by one row per request), `search_history_provider_idx` and
  `users_createdAt_idx`.
- Dropped as exact duplicates of unique indexes on the same column, which serve every lookup they
  served: `users_email_idx` (of `users_email_key`), `users_stripeCustomerId_idx` (of
  `users_stripeCustomerId_key`).

Prisma's client never names an index, so none of this changes what it can do; its schema file
(`prisma/schema.prisma`) says the same. Built and dropped CONCURRENTLY where PostgreSQL allows it
(a plain table), so a large production table keeps taking writes; a partitioned table's index
is built on each partition concurrently and attached to an index created on the parent alone.

Outside a transaction, each step commits on its own: a run that fails part way leaves the steps
before it done, the version still at 0011, and is written to be run again. A build that fails
leaves its index INVALID, which `IF NOT EXISTS` would keep (and ATTACH accept): it is dropped
after the failure and, should that not go through, before the next build; and the old index on
the same keys is dropped only once the new one is valid.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 10:30:00.000000+00:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATS_INDEX = "search_history_userId_searchedAt_stats_idx"
STATS_KEYS = '("userId", "searchedAt") INCLUDE ("provider", "responseTime", "cacheHit")'
LIST_INDEX = "search_history_userId_searchedAt_idx"
LIST_KEYS = '("userId", "searchedAt")'
log = logging.getLogger("alembic.env")
# (index, table, key list): what the original schema had and this revision drops.
UNUSED = [
    ("api_usage_endpoint_timestamp_idx", "api_usage", '("endpoint", "timestamp")'),
    ("api_usage_ipAddress_timestamp_idx", "api_usage", '("ipAddress", "timestamp")'),
    ("search_history_provider_idx", "search_history", '("provider")'),
    ("users_createdAt_idx", "users", '("createdAt")'),
    ("users_email_idx", "users", '("email")'),
    ("users_stripeCustomerId_idx", "users", '("stripeCustomerId")'),
]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _create(STATS_INDEX, "search_history", STATS_KEYS)
        _require_valid(STATS_INDEX)
        _drop(LIST_INDEX, "search_history")
        for name, table, _ in UNUSED:
            _drop(name, table)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, keys in reversed(UNUSED):
            _create(name, table, keys)
        _create(LIST_INDEX, "search_history", LIST_KEYS)
        _require_valid(LIST_INDEX)
        _drop(STATS_INDEX, "search_history")


def _partitions(table: str) -> list[tuple[str, str]] | None:
    """The table's partitions as (schema, name), or None when it is a plain table."""
    bind = op.get_bind()
    kind = bind.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = CAST(:t AS regclass)"), {"t": table}
    ).scalar_one()
    if kind != "p":
        return None
    rows = bind.execute(
        sa.text(
            "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.inhparent = CAST(:t AS regclass) ORDER BY c.relname"
        ),
        {"t": table},
    )
    return [(schema, name) for schema, name in rows]


def _create(name: str, table: str, keys: str) -> None:
    partitions = _partitions(table)
    if partitions is None:
        _build_concurrently("public", name, table, keys)
        return
    # CONCURRENTLY is refused on a partitioned table: the parent's index is created alone
    # (invalid until every partition has one), then each partition's concurrently, attached.
    op.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON ONLY "{table}" {keys}')
    for schema, partition in partitions:
        child = f"{partition}_{name.removeprefix(table + '_')}"[:63]
        _build_concurrently(schema, child, partition, keys)
        op.execute(f'ALTER INDEX "{name}" ATTACH PARTITION "{schema}"."{child}"')


def _build_concurrently(schema: str, name: str, table: str, keys: str) -> None:
    """CREATE INDEX CONCURRENTLY IF NOT EXISTS, leaving no INVALID index of that name behind."""
    _drop_invalid(schema, name)  # a failed build's leftover, which IF NOT EXISTS would keep
    try:
        op.execute(
            f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{schema}"."{table}" {keys}'
        )
    except Exception:
        try:
            _drop_invalid(schema, name)
        except Exception:  # the build's own error is the one to report; a re-run drops it
            log.warning("could not drop the invalid index %s after its build failed", name)
        raise


def _is_valid(schema: str, name: str) -> bool | None:
    """pg_index.indisvalid of the index, None when there is none of that name."""
    return (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN pg_namespace n ON n.oid = i.relnamespace "
                "WHERE i.relname = :name AND n.nspname = :schema"
            ),
            {"name": name, "schema": schema},
        )
        .scalar()
    )


def _drop_invalid(schema: str, name: str) -> None:
    if _is_valid(schema, name) is False:
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{schema}"."{name}"')


def _require_valid(name: str) -> None:
    """The old index on these keys goes only once the new one serves them."""
    if not _is_valid("public", name):
        raise CommandError(f"index {name} is missing or INVALID after its build; run it again")


def _drop(name: str, table: str) -> None:
    concurrently = "" if _partitions(table) is not None else "CONCURRENTLY "
    op.execute(f'DROP INDEX {concurrently}IF EXISTS "{name}"')
