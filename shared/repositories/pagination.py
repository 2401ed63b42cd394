"""Keyset pages on (timestamp DESC, id DESC): stable pages without OFFSET scans.

A repository fetches one row more than the page to know whether another follows, and pages
past the cursor with a row comparison (`(t, id) < ($t, $id)`), which PostgreSQL reads as an
index range on (owner, timestamp): written as `t < $t OR (t = $t AND id < $id)` it was a filter,
and a page N rows deep read the N newer rows first. The limit stays a bound parameter: written
as a literal, a generic plan estimating an owner at ~1 row per partition sorted all of an
active account's rows (docs/performance.md#retention-by-partitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

T = TypeVar("T")
Cursor = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: Cursor | None
