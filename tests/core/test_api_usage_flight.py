"""The api_usage row travels after the response and is confirmed by the next checkout
(`shared.http.usage`, docs/performance.md#the-api_usage-row-one-round-trip).

Round trips are read off the real connection: libpq's protocol trace of the container's one
pooled connection shows every message the client sent and every answer it read, so a warm
request's trace must show one awaited exchange, then the usage INSERT sent and never waited for.
Both lanes (direct, and PgBouncer in transaction mode).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

from devkit import events
from devkit._host import wait_for
from shared import db
from shared.http import usage
from shared.models.api_usage import ApiUsage
from shared.repositories import api_usage
from tests.support.http import Keys, make_token


def invoke(keys: Keys, path: str = "/api/searches", user: str = "user_flight") -> int:
    """One Lambda invocation of the searches function, without the test Caller's settle."""
    from functions import searches

    headers = {"authorization": f"Bearer {make_token(keys, user)}", "user-agent": "flight/1.0"}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        result = searches.lambda_handler(
            events.http_api_v2("GET", path, headers=headers), events.lambda_context("searches")
        )
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return int(result["statusCode"])


def usage_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM api_usage").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def trace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kf-trace-") as tmp:
        yield Path(tmp) / "trace"


def start_trace(path: Path) -> Any:
    """Trace the container's pooled connection (DB_POOL_SIZE=1) into `path`."""
    connection = db.get_engine().raw_connection()
    try:
        pgconn = connection.driver_connection.pgconn  # type: ignore[union-attr]
        handle = path.open("w")
        pgconn.trace(handle.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
    finally:
        connection.close()
    return handle


def shape(lines: list[str]) -> str:
    """The exchanges in traced protocol lines: `F` a flight the client sent (its Sync or simple
    Query), `B` an answer it read (ReadyForQuery). `FB` is one round trip; a trailing `F` was
    sent and not waited for; a leading `B` is an earlier flight's answer read now."""
    out = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 3 and (parts[0], parts[2].split(" ")[0]) in (
            ("F", "Sync"),
            ("F", "Query"),
            ("B", "ReadyForQuery"),
        ):
            out.append(parts[0])
    return "".join(out)


def traced(path: Path, keys: Keys) -> list[str]:
    """The trace lines of one warm invocation."""
    before = len(path.read_text().splitlines())
    assert invoke(keys) == 200
    return path.read_text().splitlines()[before:]


def test_the_wire_columns_are_the_tables() -> None:
    assert [name for _, name in api_usage.WIRE_COLUMNS] == [
        column.name for column in ApiUsage.__table__.columns
    ]


def test_a_warm_read_waits_for_one_round_trip_and_sends_its_usage_row_after(
    api_env: Keys, admin_conn: psycopg.Connection[Any], trace: Path
) -> None:
    assert invoke(api_env) == 200  # cold: provisions the user
    handle = start_trace(trace)  # (its checkout reads the first row's answer)
    try:
        first = traced(trace, api_env)
        second = traced(trace, api_env)
    finally:
        handle.close()
    # The list query (one round trip), then the usage INSERT sent and not waited for.
    assert shape(first) == "FBF", "\n".join(first)
    assert "INSERT INTO api_usage" in next(line for line in reversed(first) if "Parse" in line)
    # The next request first reads that INSERT's answer (already there), then does the same.
    assert shape(second) == "BFBF", "\n".join(second)
    assert any(
        '"INSERT 0 1"' in line
        for line in second[: second.index(next(line for line in second if line.startswith("F")))]
    )
    usage.settle()
    assert usage_rows(admin_conn) == 3


def test_the_row_is_stored_by_the_next_request_or_the_shutdown_flush(
    api_env: Keys, admin_conn: psycopg.Connection[Any]
) -> None:
    confirmed = usage.stats["confirmed"]
    assert invoke(api_env) == 200
    assert invoke(api_env) == 200  # its checkout confirmed the first row
    assert usage.stats["confirmed"] == confirmed + 1
    assert usage_rows(admin_conn) >= 1
    usage.flush()  # what SIGTERM and interpreter exit run: confirms, closes the connections
    assert usage.stats["confirmed"] == confirmed + 2
    assert usage_rows(admin_conn) == 2
    stamps = admin_conn.execute('SELECT "timestamp" FROM api_usage ORDER BY 1').fetchall()
    assert stamps[0][0] <= stamps[1][0]  # each row keeps the time it was recorded


def backend_waiting_on_lock(admin: psycopg.Connection[Any]) -> int | None:
    row = admin.execute(
        """SELECT pid FROM pg_stat_activity
           WHERE query LIKE 'INSERT INTO api_usage%' AND wait_event_type = 'Lock'"""
    ).fetchone()
    return None if row is None else int(row[0])


def test_a_row_lost_with_its_connection_is_held_and_resent_once(
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert invoke(api_env) == 200
    held = usage.stats["held"]
    with psycopg.connect(direct_database_url) as locker:  # a transaction holding the table
        locker.execute("LOCK TABLE api_usage IN ACCESS EXCLUSIVE MODE")
        assert invoke(api_env) == 200  # answered; its row waits on the lock, in the server
        assert wait_for(lambda: backend_waiting_on_lock(admin_conn) is not None, timeout=10)
        pid = backend_waiting_on_lock(admin_conn)
        admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        locker.rollback()
    assert invoke(api_env) == 200  # reads the failure, reconnects, sends its row and the held one
    assert usage.stats["held"] == held + 1
    assert "usage_record_deferred" in caplog.text
    usage.settle()
    assert usage_rows(admin_conn) == 3
    usage.flush()
    assert usage_rows(admin_conn) == 3  # the re-sent row is not stored twice


def test_a_resent_row_is_stored_once(api_env: Keys, admin_conn: psycopg.Connection[Any]) -> None:
    row = api_usage.wire_row(api_usage.Request("/api/searches", "GET", 200, 3, "u1"))
    other = api_usage.wire_row(api_usage.Request("/api/searches", "GET", 200, 3, "u1"))
    with psycopg.connect(admin_conn.info.dsn, autocommit=True) as conn:
        for rows in ([row], [row, other]):  # the second delivery carries it again
            sql, params = api_usage.wire_insert(rows)
            conn.pgconn.send_query_params(sql, params)
            statuses = []
            while (result := conn.pgconn.get_result()) is not None:
                statuses.append(result.status)
            assert statuses == [pq.ExecStatus.COMMAND_OK]
    assert usage_rows(admin_conn) == 2


def test_a_row_the_server_refuses_is_logged_not_retried(
    api_env: Keys, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    assert invoke(api_env) == 200
    usage.settle()
    admin_conn.execute(
        "ALTER TABLE api_usage ADD CONSTRAINT kf_refuse"
        " CHECK (\"userAgent\" <> 'flight/1.0') NOT VALID"
    )
    try:
        failed = usage.stats["failed"]
        assert invoke(api_env) == 200  # answered; its row is refused by the server
        usage.settle()
    finally:
        admin_conn.execute("ALTER TABLE api_usage DROP CONSTRAINT kf_refuse")
    assert usage.stats["failed"] == failed + 1
    assert '"event":"usage_record_failed"' in caplog.text and '"sqlstate":"23514"' in caplog.text
    assert invoke(api_env) == 200  # not re-sent: only this one more row
    usage.flush()
    assert usage_rows(admin_conn) == 2


def test_an_answer_slower_than_the_grace_replaces_the_connection_and_loses_nothing(
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert invoke(api_env) == 200
    usage.settle()
    with psycopg.connect(direct_database_url) as locker:
        locker.execute("LOCK TABLE api_usage IN ACCESS EXCLUSIVE MODE")
        assert invoke(api_env) == 200  # its row waits behind the lock
        assert invoke(api_env) == 200  # gives up on that answer, reconnects, re-sends the row
        locker.rollback()
    assert '"reason":"TimeoutError"' in caplog.text
    usage.flush()
    assert wait_for(lambda: usage_rows(admin_conn) == 3, timeout=10)
    duplicates = admin_conn.execute("SELECT count(*) - count(DISTINCT id) FROM api_usage")
    assert duplicates.fetchone() == (0,)


def test_rows_that_cannot_be_sent_are_held_bounded_and_reported(
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shared.config import get_settings

    monkeypatch.setattr(usage, "MAX_HELD_ROWS", 2)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "0.2")
    get_settings.cache_clear()
    db.dispose_engine()
    lost = usage.stats["lost"]
    for _ in range(3):
        usage.record(api_usage.Request("/api/searches", "GET", 200, 1, "held"))
    assert '"event":"usage_record_deferred"' in caplog.text
    assert usage.stats["lost"] == lost + 1  # the third did not fit
    usage.flush()  # the database is still unreachable: the held rows are reported lost
    assert usage.stats["lost"] == lost + 3
    assert caplog.text.count('"event":"usage_rows_lost"') == 2
    assert usage_rows(admin_conn) == 0
