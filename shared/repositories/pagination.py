"""Keyset pages on (timestamp DESC, id DESC): stable pages without OFFSET scans.

A repository fetches one row more than the page to know whether another follows, and pages
past the cursor with a row comparison (`(t, id) < ($t, $id)`), which PostgreSQL reads as an
index range on (owner, timestamp): written as `t < $t OR (t = $t AND id < $id)` it was a filter,
and a page N rows deep read the N newer rows first. The limit stays a bound parameter: written
as a literal, a generic plan estimating an owner at ~1 row per partition sorted all of an
active account's rows (docs/performance.md#retention-by-partitions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Cursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: Cursor | None


def page_of(
    rows: Sequence[Any], limit: int, item_of: Callable[[Any], T], cursor_of: Callable[[T], Cursor]
) -> Page[T]:
    """The page in `rows`, fetched with one row more than `limit`: that extra row only says
    another page exists (counted, never mapped), and the cursor is the page's last item's."""
    items = [item_of(row) for row in rows[:limit]]
    return Page(items=items, next_cursor=cursor_of(items[-1]) if len(rows) > limit else None)
