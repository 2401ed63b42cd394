"""Keyset pagination on (timestamp DESC, id DESC): stable pages without OFFSET scans."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")
Cursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: Cursor | None


def keyset_page(
    session: Session,
    statement: Select[Any],
    *,
    time_column: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[str],
    cursor_of: Any,
    limit: int,
    cursor: Cursor | None,
) -> Page[Any]:
    """Newest first after `cursor`; fetches one extra row to know whether another page exists.

    `cursor_of(row)` returns the row's (timestamp, id).
    """
    statement = statement.order_by(time_column.desc(), id_column.desc()).limit(limit + 1)
    if cursor is not None:
        after_time, after_id = cursor
        statement = statement.where(
            or_(time_column < after_time, and_(time_column == after_time, id_column < after_id))
        )
    rows = list(session.scalars(statement))
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    return Page(items=rows[:limit], next_cursor=cursor_of(rows[limit - 1]))
