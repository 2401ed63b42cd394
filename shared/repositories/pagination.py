"""Keyset pagination on (timestamp DESC, id DESC): stable pages without OFFSET scans."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from shared.db import Conn

T = TypeVar("T")
Cursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: Cursor | None


def keyset_page(
    conn: Conn,
    statement: Select[Any],
    *,
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[str],
    cursor_of: Any,
    limit: int,
    cursor: Cursor | None,
) -> Page[Any]:
    """Newest first after `cursor`; fetches one extra row to know whether another page exists.

    `cursor_of(row)` returns the row's (timestamp, id). The cursor is a row comparison, which
    PostgreSQL reads as an index range on (owner, timestamp): the page starts at the cursor.
    Written as `t < $t OR (t = $t AND id < $id)` it was a filter, and a page N rows deep read
    the N newer rows first. The limit stays a bound parameter: written as a literal, a
    prepared statement's generic plan (estimating a user at ~1 row per partition) sorted all of
    an active account's rows (docs/performance.md#retention-by-partitions).
    """
    statement = statement.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)
    if cursor is not None:
        after_time, after_id = cursor
        statement = statement.where(tuple_(time_column, id_column) < tuple_(after_time, after_id))
    rows = list(conn.session.scalars(statement))
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    return Page(items=rows[:limit], next_cursor=cursor_of(rows[limit - 1]))
