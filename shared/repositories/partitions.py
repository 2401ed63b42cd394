"""Time partitions of the append-only logs: created ahead, dropped whole once expired.

`api_usage`, `search_history` and `system_metrics` are partitioned by range of their time column
(revision 0010); the partitions live in the schema `partitions`. Widths follow the volume, the
retention and the hot reads: `api_usage` by day (at 1,000 requests/s a day is ~86M rows, and its
90-day retention then drops one day at a time), `system_metrics` by month, `search_history` by
quarter. A user's history list names no time, so it probes every partition kept, ~0.015 ms
each: a quarter keeps 5 to 7 for a 400-day retention where a month kept ~18.

Three kinds of partition: the ranges (named `<table>_pYYYYMMDD`, `_pYYYYMM` or `_pYYYYqN` by
period), the legacy one (the table as it was before the migration, FROM MINVALUE to the
cutover) and the DEFAULT one, which takes any row no range holds (a legacy import, clock skew,
a cron that did not run), so an insert never fails for want of a partition. A new range never
overlaps an existing one: it is clipped to the part of its period nothing holds yet (after the
monthly ranges of revision 0010 and of the cron before quarters, the first quarter's remainder,
`search_history_p20270301` for March 2027), and such a piece is named by its first day, with
its start's time when that is not midnight (`api_usage_p20261205_180000` after a partition
made by hand up to 18:00).
Retention drops a partition once its upper bound is at or before the cutoff, so rows live up to
one period longer than the setting (up to a quarter, ~92 days, for `search_history`); the
legacy and default partitions, which have no useful bound, have their expired rows deleted in
batches instead.

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
from datetime import UTC, datetime, time, timedelta
from typing import Literal

from sqlalchemy import text

from shared.db import Conn
from shared.telemetry import database_operation

SCHEMA = "partitions"
LOCK_TIMEOUT = "2s"
_MONTHS = {"month": 1, "quarter": 3}


@dataclass(frozen=True)
class Layout:
    """How one log table is partitioned: its time column, period and how many periods ahead."""

    table: str
    column: str
    unit: Literal["day", "month", "quarter"]
    ahead: int  # periods created after the current one

    def start(self, moment: datetime) -> datetime:
        """The naive UTC start of the period holding `moment`."""
        moment = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.unit == "day":
            return day
        return day.replace(day=1, month=day.month - (day.month - 1) % _MONTHS[self.unit])

    def after(self, start: datetime) -> datetime:
        """The start of the period after the one starting at `start`."""
        if self.unit == "day":
            return start + timedelta(days=1)
        year, month = divmod(start.year * 12 + start.month - 1 + _MONTHS[self.unit], 12)
        return start.replace(year=year, month=month + 1)

    def name(self, start: datetime, end: datetime | None = None) -> str:
        """The period's name. A range from `start` to `end` that is not one whole period (one
        clipped by existing partitions) is named by its first day, and by its start's time too
        when that is not midnight: a partition made by hand may end and begin mid-day, leaving
        two pieces of one day. No two ranges start at the same moment, so names never clash,
        and they still sort in time order."""
        if end is not None and (start != self.start(start) or end != self.after(start)):
            if start.time() == time():
                return f"{self.table}_p{start:%Y%m%d}"
            return f"{self.table}_p{start:%Y%m%d_%H%M%S}" + (
                f"_{start:%f}" if start.microsecond else ""
            )
        if self.unit == "quarter":
            return f"{self.table}_p{start.year}q{(start.month + 2) // 3}"
        return f"{self.table}_p{start:{'%Y%m%d' if self.unit == 'day' else '%Y%m'}}"


# A week (two months, a quarter) ahead: a cron that stops for days still finds its ranges made,
# and the DEFAULT partition takes whatever comes later than that.
LAYOUTS: dict[str, Layout] = {
    "api_usage": Layout("api_usage", "timestamp", "day", 7),
    "search_history": Layout("search_history", "searchedAt", "quarter", 1),
    "system_metrics": Layout("system_metrics", "timestamp", "month", 2),
}


@dataclass(frozen=True)
class Partition:
    """One partition; `lower` None is MINVALUE, `upper` None MAXVALUE (one made by hand), and
    the DEFAULT partition has no bounds at all."""

    name: str
    lower: datetime | None
    upper: datetime | None
    default: bool = False
    schema: str = SCHEMA

    @property
    def table(self) -> str:
        """The quoted qualified name for SQL: one attached by hand may live in another schema
        (`public`, where a bare CREATE TABLE lands) under a name that needs quoting."""
        return ".".join('"' + part.replace('"', '""') + '"' for part in (self.schema, self.name))

    def overlaps(self, lower: datetime, upper: datetime) -> bool:
        if self.default:
            return False
        return (self.lower is None or self.lower < upper) and (
            self.upper is None or lower < self.upper
        )


_BOUND = re.compile(r"FOR VALUES FROM \((MINVALUE|'[^']*')\) TO \((MAXVALUE|'[^']*')\)")


def _bound(value: str) -> datetime | None:
    return None if value.endswith("VALUE") else datetime.fromisoformat(value.strip("'"))


@database_operation("listPartitions")
def partitions_of(conn: Conn, layout: Layout) -> list[Partition]:
    """The partitions of `layout.table`, oldest first (the default last)."""
    rows = conn.connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), n.nspname FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": f"public.{layout.table}"},
    ).all()
    found: list[Partition] = []
    for name, bound, schema in rows:
        match = _BOUND.fullmatch(bound)
        if match is None:
            found.append(Partition(name, None, None, default=True, schema=schema))
        else:
            lower, upper = _bound(match.group(1)), _bound(match.group(2))
            found.append(Partition(name, lower, upper, schema=schema))
    found.sort(key=lambda p: (p.default, p.upper or datetime.max))
    return found


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat(sep=' ')}'"


def gaps(
    existing: list[Partition], lower: datetime, upper: datetime
) -> list[tuple[datetime, datetime]]:
    """The parts of [lower, upper) that no range (nor the legacy partition) holds, oldest first."""
    found: list[tuple[datetime, datetime]] = []
    holding = sorted(
        (p for p in existing if p.overlaps(lower, upper)), key=lambda p: p.lower or datetime.min
    )
    for partition in holding:
        if partition.lower is not None and lower < partition.lower:
            found.append((lower, partition.lower))
        if partition.upper is None:  # TO MAXVALUE: it holds the rest
            return found
        lower = max(lower, partition.upper)
    if lower < upper:
        found.append((lower, upper))
    return found


@database_operation("createPartitions")
def create_ahead(conn: Conn, layout: Layout, *, now: datetime) -> list[str]:
    """Create ranges for what no partition holds from the period of `now` to `layout.ahead`
    periods after it; returns their names. Run it in a transaction (`db.transaction`).

    Rows the DEFAULT partition already holds for a new range move into it in the same
    transaction (ATTACH would refuse otherwise), so a week without the cron loses nothing."""
    conn.connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    existing = partitions_of(conn, layout)
    default = next((p.table for p in existing if p.default), None)
    created: list[str] = []
    start = layout.start(now)
    for _ in range(layout.ahead + 1):
        end = layout.after(start)
        for lower, upper in gaps(existing, start, end):
            created.append(_create(conn, layout, lower, upper, default))
        start = end
    return created


def _create(conn: Conn, layout: Layout, start: datetime, end: datetime, default: str | None) -> str:
    name, table, column = layout.name(start, end), layout.table, layout.column
    conn.connection.execute(
        text(f"CREATE TABLE {SCHEMA}.{name} (LIKE public.{table} INCLUDING DEFAULTS)")
    )
    if default is not None:
        conn.connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {default} WHERE "
                f'"{column}" >= :start AND "{column}" < :end RETURNING *) '
                f"INSERT INTO {SCHEMA}.{name} SELECT * FROM moved"
            ),
            {"start": start, "end": end},
        )
    conn.connection.execute(
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
    """Partitions that may hold rows older than `cutoff` but not only those: the default, one
    TO MAXVALUE and a legacy partition still inside retention. Their expired rows go in
    batches."""
    return [p for p in partitions if p.upper is None or (p.lower is None and p.upper > cutoff)]


@database_operation("dropPartition")
def drop(conn: Conn, partition: Partition) -> str:
    """Drop one partition (metadata only: no row is visited); returns its name. Run it in a
    transaction."""
    conn.connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.connection.execute(text(f"DROP TABLE {partition.table}"))
    return partition.name


@database_operation("pruneBatch")
def delete_batch(
    conn: Conn, layout: Layout, partition: Partition, *, cutoff: datetime, limit: int
) -> int:
    """Delete up to `limit` rows of one partition older than `cutoff` (naive UTC)."""
    table = partition.table
    result = conn.connection.execute(
        text(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
            f'WHERE "{layout.column}" < :cutoff LIMIT :limit))'
        ),
        {"cutoff": cutoff, "limit": limit},
    )
    return int(result.rowcount)
