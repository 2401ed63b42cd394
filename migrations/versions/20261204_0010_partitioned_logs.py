"""Partitioned logs: `api_usage`, `search_history` and `system_metrics` by time range.

Retention then drops whole partitions (`shared.repositories.partitions`) instead of deleting
rows in batches. Each table becomes a parent `PARTITION BY RANGE` on its time column; its
partitions live in the schema `partitions`, out of the public schema the original app's Prisma
reads. PostgreSQL wants the partition key in every unique constraint, so the primary key
becomes (id, time); ids stay collision-free by construction (cuid, UUID).

The existing table is renamed into `partitions` as the "legacy" partition, FROM (MINVALUE) TO
the cutover (the start of the period after now), and attached: PostgreSQL checks the bound with
one sequential scan, and the (id, time) primary key needs one index build; both run under this
migration's ACCESS EXCLUSIVE lock. To shorten that window on a large table, build the index
beforehand, outside the migration: `CREATE UNIQUE INDEX CONCURRENTLY "api_usage_legacy_pkey" ON
api_usage (id, "timestamp")` (the migration then finds it). The other indexes are reused as
they are. A DEFAULT partition takes any row no range holds (far past or future, or a cron that
has not run): an insert never fails for want of a partition. The first ranges from the cutover
are created here; the prune cron keeps creating them ahead.

The cutover does not follow the newest row: one a bad writer dated 9999-12-31 would make the
legacy partition take every new row for centuries, out of reach of partition drops. The few
rows dated at or after the cutover (found by the time index) move out of the old table instead,
through the parent into the range or DEFAULT partition their time says: the legacy partition
cannot be bounded below its own rows, and a partition of their own would be one more per table
for rows that may never expire. No other row is copied on the way up.

The way down copies every row into one plain table again. It refuses, before changing anything,
while an id appears twice (the plain table's key is the id alone); a history row whose user is
gone gets `userId` NULL, as the FK's ON DELETE SET NULL would have given it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 10:00:00.000000+00:00
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "partitions"


@dataclass(frozen=True)
class Log:
    table: str
    column: str
    unit: str  # "day" or "month": PostgreSQL's date_trunc field
    ahead: int  # periods created after the current one
    indexes: tuple[tuple[str, str], ...]
    foreign_key: str | None = None


LOGS = (
    Log(
        "api_usage",
        "timestamp",
        "day",
        7,
        (
            ("api_usage_userId_timestamp_idx", '"userId", "timestamp"'),
            ("api_usage_endpoint_timestamp_idx", 'endpoint, "timestamp"'),
            ("api_usage_ipAddress_timestamp_idx", '"ipAddress", "timestamp"'),
            ("api_usage_timestamp_idx", '"timestamp"'),
        ),
    ),
    Log(
        "search_history",
        "searchedAt",
        "month",
        2,
        (
            ("search_history_userId_searchedAt_idx", '"userId", "searchedAt"'),
            ("search_history_searchedAt_idx", '"searchedAt"'),
            ("search_history_provider_idx", "provider"),
        ),
        'CONSTRAINT "search_history_userId_fkey" FOREIGN KEY ("userId") REFERENCES users(id) '
        "ON DELETE SET NULL ON UPDATE CASCADE",
    ),
    Log(
        "system_metrics",
        "timestamp",
        "month",
        2,
        (
            ("system_metrics_metric_timestamp_idx", 'metric, "timestamp"'),
            ("system_metrics_timestamp_idx", '"timestamp"'),
        ),
    ),
)


def _scalar(sql: str) -> datetime:
    value = op.get_bind().execute(sa.text(sql)).scalar_one()
    assert isinstance(value, datetime)
    return value


def _suffix(log: Log, start: datetime) -> str:
    return start.strftime("%Y%m%d" if log.unit == "day" else "%Y%m")


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for log in LOGS:
        t, c, legacy = log.table, log.column, f"{log.table}_legacy"
        cutover = _scalar(
            f"SELECT date_trunc('{log.unit}', now() AT TIME ZONE 'UTC') + interval '1 {log.unit}'"
        )
        op.execute(f"ALTER TABLE {t} SET SCHEMA {SCHEMA}")
        op.execute(f"ALTER TABLE {SCHEMA}.{t} RENAME TO {legacy}")
        op.execute(
            f'CREATE UNIQUE INDEX IF NOT EXISTS "{legacy}_pkey" ON {SCHEMA}.{legacy} (id, "{c}")'
        )
        op.execute(
            f'ALTER TABLE {SCHEMA}.{legacy} DROP CONSTRAINT "{t}_pkey", '
            f'ADD CONSTRAINT "{legacy}_pkey" PRIMARY KEY USING INDEX "{legacy}_pkey"'
        )
        op.execute(
            f"CREATE TABLE {t} (LIKE {SCHEMA}.{legacy} INCLUDING DEFAULTS) "
            f'PARTITION BY RANGE ("{c}")'
        )
        _add_keys(log, partitioned=True)
        op.execute(f"CREATE TABLE {SCHEMA}.{t}_default PARTITION OF {t} DEFAULT")
        last = _scalar(
            f"SELECT date_trunc('{log.unit}', now() AT TIME ZONE 'UTC')"
            f" + interval '{log.ahead + 1} {log.unit}'"
        )
        start = cutover
        while start < last:
            end = _scalar(f"SELECT TIMESTAMP '{start}' + interval '1 {log.unit}'")
            op.execute(
                f"CREATE TABLE {SCHEMA}.{t}_p{_suffix(log, start)} PARTITION OF {t} "
                f"FOR VALUES FROM ('{start.isoformat(sep=' ')}') TO ('{end.isoformat(sep=' ')}')"
            )
            start = end
        # The rows past the cutover go through the parent before the legacy partition is
        # attached (ATTACH would refuse them); the DEFAULT one holds none of its range then.
        op.execute(
            f"WITH moved AS (DELETE FROM {SCHEMA}.{legacy} "
            f"WHERE \"{c}\" >= '{cutover.isoformat(sep=' ')}' RETURNING *) "
            f"INSERT INTO {t} SELECT * FROM moved"
        )
        op.execute(
            f"ALTER TABLE {t} ATTACH PARTITION {SCHEMA}.{legacy} "
            f"FOR VALUES FROM (MINVALUE) TO ('{cutover.isoformat(sep=' ')}')"
        )


def _add_keys(log: Log, *, partitioned: bool) -> None:
    """Primary key ((id, time) on a partitioned table), indexes and FK, by their Prisma names."""
    t = log.table
    key = f'id, "{log.column}"' if partitioned else "id"
    op.execute(f'ALTER TABLE {t} ADD CONSTRAINT "{t}_pkey" PRIMARY KEY ({key})')
    for name, columns in log.indexes:
        op.execute(f'CREATE INDEX "{name}" ON {t} ({columns})')
    if log.foreign_key is not None:
        op.execute(f"ALTER TABLE {t} ADD {log.foreign_key}")


def downgrade() -> None:
    for log in LOGS:  # before anything changes
        _refuse_ids_twice(log.table)
    for log in LOGS:
        t = log.table
        op.execute(f"CREATE TABLE {t}_flat (LIKE {t} INCLUDING DEFAULTS)")
        op.execute(f"INSERT INTO {t}_flat SELECT * FROM {t}")
        if log.foreign_key is not None:
            # A row whose user is gone (restored with triggers off, or fixed by hand: the FK
            # never saw it, and attaching kept the FK as validated) gets what the FK's ON
            # DELETE SET NULL gives it, instead of failing the FK's validation below.
            op.execute(
                f'UPDATE {t}_flat SET "userId" = NULL WHERE "userId" IS NOT NULL '
                f'AND NOT EXISTS (SELECT FROM users WHERE users.id = {t}_flat."userId")'
            )
        op.execute(f"DROP TABLE {t}")  # and every partition with it
        op.execute(f"ALTER TABLE {t}_flat RENAME TO {t}")
        _add_keys(log, partitioned=False)
    op.execute(f"DROP SCHEMA {SCHEMA}")


def _refuse_ids_twice(table: str) -> None:
    """The partitioned table keys a row by (id, time), the plain one by id alone: ids that
    appear twice are refused here, with what to do, rather than by the primary key halfway."""
    rows, ids = (
        op.get_bind()
        .execute(
            sa.text(
                f"SELECT coalesce(sum(n), 0), count(*) FROM "
                f"(SELECT count(*) AS n FROM {table} GROUP BY id HAVING count(*) > 1) AS twice"
            )
        )
        .one()
    )
    if ids:
        raise CommandError(
            f"{table} holds {rows} rows sharing {ids} id{'s' if ids > 1 else ''} (the "
            "partitioned table keys a row by id and time, the table of 0009 by id alone): keep "
            f"one row of each (SELECT id FROM {table} GROUP BY id HAVING count(*) > 1 lists "
            "them) and run the downgrade again. Nothing was changed by this revision"
        )
