"""Time partitions of the append-only logs: created ahead, dropped whole once expired.

`api_usage`, `search_history` and `system_metrics` are partitioned by range of their time column
(revision 0010); the partitions live in the schema `partitions`. Widths follow the volume and
the retention: `api_usage` by day (at 1,000 requests/s a day is ~86M rows, and its 90-day
retention then drops one day at a time), the others by month (a 400- or 90-day retention loses
little precision to a month, and there are 12 tables a year instead of 365).

Three kinds of partition: the ranges (one period each, named `<table>_pYYYYMMDD` or
`_pYYYYMM`), the legacy one (the table as it was before the migration, FROM MINVALUE to the
cutover) and the DEFAULT one, which takes any row no range holds (a legacy import, clock skew,
a cron that did not run), so an insert never fails for want of a partition. Retention drops a
partition once its upper bound is at or before the cutoff, so rows live up to one period longer
than the setting; the legacy and default partitions, which have no useful bound, have their
expired rows deleted in batches instead.

Every DDL statement runs in a short transaction with a `lock_timeout`: creating a range takes a
SHARE UPDATE EXCLUSIVE lock on the parent (ATTACH), dropping one an ACCESS EXCLUSIVE lock for the
catalog change, and a reader holding the table (an export, say) must make the cron give up and
retry next run rather than queue every insert behind it. `DETACH … CONCURRENTLY` would take a
weaker lock but PostgreSQL refuses it on a table with a DEFAULT partition, and it cannot run in a
transaction block, which a transaction-mode pooler needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.telemetry import database_operation

SCHEMA = "partitions"
LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Layout:
    """How one log table is partitioned: its time column, period and how many periods ahead."""

    table: str
    column: str
    unit: Literal["day", "month"]
    ahead: int  # periods created after the current one

    def start(self, moment: datetime) -> datetime:
        """The naive UTC start of the period holding `moment`."""
        moment = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self.unit == "day" else day.replace(day=1)

    def after(self, start: datetime) -> datetime:
        """The start of the period after the one starting at `start`."""
        if self.unit == "day":
            return start + timedelta(days=1)
        year, month = divmod(start.year * 12 + start.month, 12)
        return start.replace(year=year, month=month + 1)

    def name(self, start: datetime) -> str:
        return f"{self.table}_p{start:{'%Y%m%d' if self.unit == 'day' else '%Y%m'}}"


# A week (two months) ahead: a cron that stops for days still finds its ranges made, and the
# DEFAULT partition takes whatever comes later than that.
LAYOUTS: dict[str, Layout] = {
    "api_usage": Layout("api_usage", "timestamp", "day", 7),
    "search_history": Layout("search_history", "searchedAt", "month", 2),
    "system_metrics": Layout("system_metrics", "timestamp", "month", 2),
}


@dataclass(frozen=True)
class Partition:
    """One partition; `lower` None is MINVALUE, and the DEFAULT partition has no bounds at all."""

    name: str
    lower: datetime | None
    upper: datetime | None
    default: bool = False

    def overlaps(self, lower: datetime, upper: datetime) -> bool:
        if self.default or self.upper is None:
            return False
        return (self.lower is None or self.lower < upper) and lower < self.upper


_BOUND = re.compile(r"FOR VALUES FROM \((MINVALUE|'[^']*')\) TO \((MAXVALUE|'[^']*')\)")


def _bound(value: str) -> datetime | None:
    return None if value.endswith("VALUE") else datetime.fromisoformat(value.strip("'"))


@database_operation("listPartitions")
def partitions_of(session: Session, layout: Layout) -> list[Partition]:
    """The partitions of `layout.table`, oldest first (the default last)."""
    rows = session.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": f"public.{layout.table}"},
    ).all()
    found: list[Partition] = []
    for name, bound in rows:
        match = _BOUND.fullmatch(bound)
        if match is None:
            found.append(Partition(name, None, None, default=True))
        else:
            found.append(Partition(name, _bound(match.group(1)), _bound(match.group(2))))
    found.sort(key=lambda p: (p.default, p.upper or datetime.max))
    return found


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat(sep=' ')}'"


@database_operation("createPartitions")
def create_ahead(session: Session, layout: Layout, *, now: datetime) -> list[str]:
    """Create the ranges from the period of `now` to `layout.ahead` periods after it that no
    partition covers yet; returns their names. Run it in a transaction (`db.transaction`).

    Rows the DEFAULT partition already holds for a new range move into it in the same
    transaction (ATTACH would refuse otherwise), so a week without the cron loses nothing."""
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    existing = partitions_of(session, layout)
    default = next((p.name for p in existing if p.default), None)
    created: list[str] = []
    start = layout.start(now)
    for _ in range(layout.ahead + 1):
        end = layout.after(start)
        if not any(p.overlaps(start, end) for p in existing):
            created.append(_create(session, layout, start, end, default))
        start = end
    return created


def _create(
    session: Session, layout: Layout, start: datetime, end: datetime, default: str | None
) -> str:
    name, table, column = layout.name(start), layout.table, layout.column
    session.execute(text(f"CREATE TABLE {SCHEMA}.{name} (LIKE public.{table} INCLUDING DEFAULTS)"))
    if default is not None:
        session.execute(
            text(
                f"WITH moved AS (DELETE FROM {SCHEMA}.{default} WHERE "
                f'"{column}" >= :start AND "{column}" < :end RETURNING *) '
                f"INSERT INTO {SCHEMA}.{name} SELECT * FROM moved"
            ),
            {"start": start, "end": end},
        )
    session.execute(
        text(
            f"ALTER TABLE public.{table} ATTACH PARTITION {SCHEMA}.{name} "
            f"FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
        )
    )
    return name


def expired(partitions: list[Partition], cutoff: datetime) -> list[Partition]:
    """Partitions whose every row is older than `cutoff` (naive UTC): they go whole."""
    return [p for p in partitions if p.upper is not None and p.upper <= cutoff]


def unbounded(partitions: list[Partition], cutoff: datetime) -> list[Partition]:
    """Partitions that may hold rows older than `cutoff` but not only those: the default and
    a legacy partition still inside retention. Their expired rows go in batches."""
    return [
        p
        for p in partitions
        if p.default or (p.lower is None and p.upper is not None and p.upper > cutoff)
    ]


@database_operation("dropPartition")
def drop(session: Session, partition: Partition) -> str:
    """Drop one partition (metadata only: no row is visited); returns its name. Run it in a
    transaction."""
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    session.execute(text(f"DROP TABLE {SCHEMA}.{partition.name}"))
    return partition.name


@database_operation("pruneBatch")
def delete_batch(
    session: Session, layout: Layout, partition: Partition, *, cutoff: datetime, limit: int
) -> int:
    """Delete up to `limit` rows of one partition older than `cutoff` (naive UTC)."""
    table = f"{SCHEMA}.{partition.name}"
    result = session.execute(
        text(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
            f'WHERE "{layout.column}" < :cutoff LIMIT :limit))'
        ),
        {"cutoff": cutoff, "limit": limit},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
