"""Timestamps past what Python's `datetime` holds load clamped to its range, not as an error.

PostgreSQL stores `infinity`, `-infinity`, years after 9999 and years BC in a `timestamp`, and
the original app's Prisma client writes some of them (a JS Date reaches year 275760 and years
before 1); psycopg refuses to load such a value (`DataError`), which failed the whole statement
(a user's history page answered 500 for one such row). Loaded here, a value after 9999 is
`LATEST` (9999-12-31 23:59:59.999, the last a `TIMESTAMP(3)` in range holds) and one before
year 1 is `EARLIEST` (0001-01-01 00:00:00): the order is kept, only the distance is lost.
Only such values are clamped: any other value the stock loader refuses (text that is no
timestamp, a month 13) is still its error, never a bound that would pass for a real time.
`shared.db_dialect` registers the loaders on every connection the engines open.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import abc
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_000)
EARLIEST = datetime(1, 1, 1)
_TIMESTAMP, _TIMESTAMPTZ = 1114, 1184  # the types' OIDs


def _clamping(fmt: Format, stock: type[abc.Loader], *, aware: bool) -> type[Loader]:
    """A loader that loads as `stock` and answers a value out of range with its bound."""
    latest, earliest = (
        (LATEST.replace(tzinfo=UTC), EARLIEST.replace(tzinfo=UTC)) if aware else (LATEST, EARLIEST)
    )

    class Clamping(Loader):
        format = fmt

        def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
            super().__init__(oid, context)
            self._load = stock(oid, context).load

        def load(self, data: Buffer) -> Any:
            try:
                return self._load(data)
            except psycopg.DataError:  # "timestamp too small (before year 1)", "… too large"
                side = _out_of_range(bytes(data), fmt)
                if side is None:
                    raise
                return earliest if side < 0 else latest

    return Clamping


_FIVE_DIGIT_YEAR = re.compile(rb"(?<![\d.])\d{5,}(?!\d)")  # not a fraction of a second


def _out_of_range(data: bytes, fmt: Format) -> int | None:
    """-1 before year 1, 1 after 9999, None when `data` is not a timestamp out of range."""
    if fmt is Format.BINARY:
        # Microseconds since 2000-01-01, an int8 (its extremes are ±infinity): eight bytes the
        # stock loader refuses can only be past Python's range.
        if len(data) != 8:
            return None
        return -1 if int.from_bytes(data, "big", signed=True) < 0 else 1
    if data == b"-infinity" or data.endswith(b" BC"):  # 0044-03-15 00:00:00 BC
        return -1
    if data == b"infinity" or _FIVE_DIGIT_YEAR.search(data):  # 10000-01-01 00:00:00
        return 1
    return None


# Built once from psycopg's own loaders (the C ones where installed, which cannot be subclassed).
_LOADERS = [
    (oid, _clamping(fmt, stock, aware=aware))
    for oid, aware in ((_TIMESTAMP, False), (_TIMESTAMPTZ, True))
    for fmt in (Format.TEXT, Format.BINARY)
    if (stock := psycopg.adapters.get_loader(oid, fmt)) is not None
]


def register(connection: psycopg.Connection[Any]) -> None:
    """Load `timestamp` and `timestamptz` values clamped on `connection`, text and binary."""
    for oid, loader in _LOADERS:
        connection.adapters.register_loader(oid, loader)
