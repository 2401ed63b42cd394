"""`shared.db_timestamps`: only values past Python's range load clamped; anything else the
stock loaders refuse (text that is no timestamp at all) is still an error, not year 9999."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.pq import Format

from shared import db_timestamps
from shared.db_timestamps import EARLIEST, LATEST

TIMESTAMP, TIMESTAMPTZ = 1114, 1184
INT8_MAX, INT8_MIN = 2**63 - 1, -(2**63)  # PostgreSQL's binary infinity and -infinity


@pytest.fixture
def conn(admin_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    db_timestamps.register(admin_conn)
    return admin_conn


def load(conn: psycopg.Connection[Any], oid: int, fmt: Format, data: bytes) -> Any:
    loader = conn.adapters.get_loader(oid, fmt)
    assert loader is not None
    return loader(oid, conn).load(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"infinity", LATEST),
        (b"10000-01-01 00:00:00", LATEST),
        (b"275760-09-13 00:00:00", LATEST),
        (b"-infinity", EARLIEST),
        (b"0044-03-15 00:00:00 BC", EARLIEST),
        (b"2026-12-06 10:00:00.123456", datetime(2026, 12, 6, 10, 0, 0, 123456)),
    ],
)
def test_text_past_the_range_loads_clamped(
    conn: psycopg.Connection[Any], text: bytes, expected: datetime
) -> None:
    assert load(conn, TIMESTAMP, Format.TEXT, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"infinity", LATEST.replace(tzinfo=UTC)),
        (b"10000-01-01 00:00:00+00", LATEST.replace(tzinfo=UTC)),
        (b"-infinity", EARLIEST.replace(tzinfo=UTC)),
        (b"0001-12-31 19:00:00+00 BC", EARLIEST.replace(tzinfo=UTC)),
    ],
)
def test_aware_text_past_the_range_loads_clamped(
    conn: psycopg.Connection[Any], text: bytes, expected: datetime
) -> None:
    assert load(conn, TIMESTAMPTZ, Format.TEXT, text) == expected


@pytest.mark.parametrize("oid", [TIMESTAMP, TIMESTAMPTZ])
@pytest.mark.parametrize("text", [b"garbage", b"2026-13-45 10:00:00", b""])
def test_text_that_is_no_timestamp_is_an_error_not_a_bound(
    conn: psycopg.Connection[Any], oid: int, text: bytes
) -> None:
    with pytest.raises(psycopg.DataError):
        load(conn, oid, Format.TEXT, text)


@pytest.mark.parametrize("oid", [TIMESTAMP, TIMESTAMPTZ])
def test_binary_infinities_load_clamped(conn: psycopg.Connection[Any], oid: int) -> None:
    latest, earliest = (
        (LATEST, EARLIEST)
        if oid == TIMESTAMP
        else (LATEST.replace(tzinfo=UTC), EARLIEST.replace(tzinfo=UTC))
    )
    assert load(conn, oid, Format.BINARY, INT8_MAX.to_bytes(8, "big", signed=True)) == latest
    assert load(conn, oid, Format.BINARY, INT8_MIN.to_bytes(8, "big", signed=True)) == earliest


@pytest.mark.parametrize("binary", [False, True])
def test_through_a_connection_only_the_range_is_clamped(
    conn: psycopg.Connection[Any], binary: bool
) -> None:
    row = (
        conn.cursor(binary=binary)
        .execute(
            """SELECT 'infinity'::timestamp, '10000-01-01'::timestamp,
                  '0044-03-15 BC'::timestamp, '-infinity'::timestamptz"""
        )
        .fetchone()
    )
    assert row == (LATEST, LATEST, EARLIEST, EARLIEST.replace(tzinfo=UTC))
    # A text the server sends for another type, read by the timestamp loader: not a bound.
    cursor = conn.cursor()
    cursor.adapters.register_loader("text", conn.adapters.get_loader(TIMESTAMP, Format.TEXT))
    for text in ("garbage", "2026-13-45 10:00:00"):
        with pytest.raises(psycopg.DataError):
            cursor.execute("SELECT %s::text", (text,)).fetchone()
