"""Timestamps past what Python's `datetime` holds load clamped to its range, not as an error.

PostgreSQL stores `infinity`, `-infinity`, years after 9999 and years BC in a `timestamp`, and
the original app's Prisma client writes some of them (a JS Date reaches year 275760 and years
before 1); psycopg refuses to load such a value (`DataError`), which failed the whole statement
(a user's history page answered 500 for one such row). Loaded here, a value after 9999 is
`LATEST` (9999-12-31 23:59:59.999, the last a `TIMESTAMP(3)` in range holds) and one before
year 1 is `EARLIEST` (0001-01-01 00:00:00): the order is kept, only the distance is lost.
`shared.db_dialect` registers the loaders on every connection the engines open.
"""

from __future__ import annotations

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
                return earliest if _too_small(data, fmt) else latest

    return Clamping


def _too_small(data: Buffer, fmt: Format) -> bool:
    if fmt is Format.BINARY:  # microseconds since 2000-01-01, an int8
        return int.from_bytes(bytes(data), "big", signed=True) < 0
    text = bytes(data)
    return text.startswith(b"-") or text.endswith(b"BC")  # -infinity, 0044-03-15 00:00:00 BC


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
