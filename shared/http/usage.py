"""Each request's `api_usage` row, sent after the response and confirmed by the next checkout.

Why: writing the row as a statement of its own after the response made every endpoint pay a
second synchronous round trip (on Lambda the handler returns only once it is done, so the
client waited for it too). Now the row is *sent* on the container's pooled connection as soon as
the request is answered, and its answer is *read* the next time that connection is checked out.
Nobody waits for it: by the next request the server's answer is long in the socket's buffer.

How (see docs/performance.md#the-api_usage-row-one-round-trip):
- `record(row)` checks a connection out (the checkout reads whatever that connection still had
  in flight; it waits for no silent database past a short bound, `_checkout`, else the rows are
  held), marks the row for it and checks it back in; after SQLAlchemy's reset on return, the
  pool's `checkin` hook sends the INSERT with libpq (`send_query_params`: one extended-protocol
  flight ending in Sync, so it commits on the server on its own, like any autocommit statement)
  and does not read the result. The connection is then idle in the pool with one answer pending.
- the pool's `checkout` hook (first of the checkout hooks) reads that answer before anything
  else may use the connection; `close` (dispose, SnapStart's snapshot, shutdown) does the same.
- at most one INSERT is in flight per pooled connection (`DB_POOL_SIZE`, default 1), and it may
  carry rows whose outcome was unknown: a row whose send or answer was lost with its connection
  is kept (with its id and timestamp) and re-sent with the next row,
  `ON CONFLICT (id, "timestamp") DO NOTHING` making a second delivery harmless. At most
  `MAX_HELD_ROWS` are held; more are dropped and logged (`usage_rows_lost`, ERROR). A
  statement error (the row itself refused) is logged (`usage_record_failed`) and not retried.
- `flush()` reads every pooled connection's answer and writes any held rows synchronously;
  `shared.http.app` runs it at interpreter exit and, on Lambda, on SIGTERM.

Nothing here raises into a request: analytics never fail one.
"""

from __future__ import annotations

import logging
import re
import select
import threading
import time
import weakref
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy import Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from shared import db
from shared.config import get_settings
from shared.repositories import api_usage
from shared.telemetry import log_event

Row = tuple[bytes | None, ...]

MAX_HELD_ROWS = 100
# How long after its INSERT (or the idle ping) is sent an answer is waited for, `_grace`: one
# round trip with room, the connection's measured one (`db.SHORTEST_ROUND_TRIP`) times
# GRACE_ROUND_TRIPS when that is longer (a database across regions), at most psycopg's least
# connect timeout. Past it (a pooler queueing the INSERT, a lock, a silent network) the
# connection is replaced and its rows re-sent, rather than holding up the request and the pool.
ANSWER_GRACE_S = 0.25
GRACE_ROUND_TRIPS = 3
_OUTBOX = "kf_usage_outbox"  # rows to send when the connection is checked in
_IN_FLIGHT = "kf_usage_in_flight"  # rows sent on the connection, answer not read yet
_ANSWER_BY = "kf_usage_answer_by"  # when the in-flight answer is given up on (`time.monotonic()`)
# SQLSTATE classes meaning the session ended, not that the row was refused.
_SESSION_ENDED = ("08", "57")
# Set while `record` checks a connection out: the idle check's ping is `_ping_if_idle`'s.
_on_response_path: ContextVar[bool] = ContextVar("keyflash_usage_response_path", default=False)

_lock = threading.Lock()
_held: list[Row] = []
_hooked: weakref.WeakSet[Engine] = weakref.WeakSet()
stats = {"sent": 0, "confirmed": 0, "late": 0, "held": 0, "failed": 0, "lost": 0}


def record(request: api_usage.Request) -> None:
    """Send `request`'s row (and any held ones) on a pooled connection without waiting."""
    row = api_usage.wire_row(request)
    rows = [row, *_take_held()]
    try:
        engine = db.get_engine()
        _install(engine)
        connection = _checkout(engine)  # the checkout reads what it had in flight
    except Exception as error:  # analytics must not fail the request
        _hold(rows, reason=type(error).__name__)
        return
    connection.info[_OUTBOX] = rows
    connection.close()  # the reset runs first, then `_send_on_checkin`


def _checkout(engine: Engine) -> PoolProxiedConnection:
    """A connection for the row, on the response path (on Lambda the handler returns after it):
    reading the previous answer and pinging a connection idle past DB_IDLE_CHECK_S wait at most
    `_grace` each from when they were sent (one round trip's grace), a connect psycopg's least
    connect timeout (2 s, `db.round_trips_by`), not DB_CONNECT_TIMEOUT_S: a silent database
    costs a route that needs none a short, bounded wait. Past it the caller holds the rows."""
    flag = _on_response_path.set(True)
    try:
        with db.round_trips_by(time.monotonic() + db.CONNECT_TIMEOUT_LEAST_S):
            return engine.raw_connection()
    finally:
        _on_response_path.reset(flag)


def settle() -> None:
    """Read the answers pending on the idle pooled connections, keeping them open: what the next
    request's checkout would do, for a caller about to read `api_usage` from elsewhere."""
    engine = db._engine
    if engine is None:
        return
    idle = engine.pool.checkedin() if isinstance(engine.pool, QueuePool) else 0
    connections = []
    try:
        for _ in range(idle):  # all at once: each checkout takes another idle connection
            connections.append(engine.raw_connection())
    except Exception:  # a connection that cannot be had is not waiting to be confirmed
        pass
    finally:
        for connection in connections:
            connection.close()


def flush() -> None:
    """Read every pooled connection's pending answer, then write held rows synchronously.

    Closes the pooled connections (the next query reconnects): for shutdown, SnapStart's
    snapshot, and tests that read `api_usage` from a connection of their own.
    """
    if db._engine is not None:  # never build an engine to flush
        db.close_connections()  # each close reads its connection's answer (`_confirm_on_close`)
    rows = _take_held()
    if not rows:
        return
    sql, params = api_usage.wire_insert(rows)
    statement = re.sub(r"\$(\d+)", r"%(p\1)s", sql.decode())  # the driver's parameter style
    values = {f"p{i + 1}": None if v is None else v.decode() for i, v in enumerate(params)}
    try:
        db.run(
            lambda conn: conn.connection.exec_driver_sql(statement, values),
            idempotent=True,
        )
    except Exception as error:  # the last chance: report, never raise
        with _lock:
            stats["lost"] += len(rows)
        log_event(
            "usage_rows_lost", level=logging.ERROR, rows=len(rows), error=type(error).__name__
        )


# --- the pool hooks ------------------------------------------------------------------------------


def _install(engine: Engine) -> None:
    if engine in _hooked:
        return
    with _lock:
        if engine in _hooked:
            return
        # insert=True: before db's idle check, which may send a ping on the connection.
        event.listen(engine, "checkout", _confirm_on_checkout, insert=True)
        event.listen(engine, "checkin", _send_on_checkin)
        event.listen(engine, "close", _confirm_on_close)
        _hooked.add(engine)


def _send_on_checkin(dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
    rows: list[Row] | None = record.info.pop(_OUTBOX, None)
    if not rows:
        return
    if dbapi_conn is None:  # invalidated on the way back
        _hold(rows, reason="connection invalidated")
        return
    conn: psycopg.Connection[Any] = dbapi_conn  # type: ignore[assignment]
    pgconn = conn.pgconn
    sql, params = api_usage.wire_insert(rows)
    try:
        pgconn.send_query_params(sql, params)
        _flush_output(pgconn, _budget())
    except (psycopg.Error, OSError, TimeoutError) as error:
        # Maybe sent, maybe not: keep the rows (a re-send is idempotent) and let the next
        # checkout find the connection unusable and replace it.
        _hold(rows, reason=type(error).__name__)
        record.info[_IN_FLIGHT] = []
        return
    record.info[_IN_FLIGHT] = rows
    record.info[_ANSWER_BY] = time.monotonic() + _grace(record)
    with _lock:
        stats["sent"] += len(rows)


def _confirm_on_checkout(
    dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
) -> None:
    # None sent (a failed send): nothing to wait for, only what has arrived to read. Sent: until
    # its grace from the send, but never less than ANSWER_GRACE_S from now (an INSERT the server
    # was slow with, e.g. on a lock, still gets the wait it had before the grace counted from the
    # send).
    answer_by = record.info.pop(_ANSWER_BY, None)
    wait = 0.0 if answer_by is None else max(answer_by - time.monotonic(), ANSWER_GRACE_S)
    if _IN_FLIGHT in record.info and not _confirm(dbapi_conn, record, wait):
        raise DisconnectionError("connection lost with an api_usage row in flight")
    if _on_response_path.get():
        _ping_if_idle(dbapi_conn, record)


def _ping_if_idle(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    """`db`'s idle check, done first and bounded: its `SELECT 1` waits as long as the server
    stays silent. Answered within `_grace`, the connection counts as just used (`db`'s
    check, next, lets it be); else it is replaced, as `db`'s check would."""
    idle_since = record.info.get(db.IDLE_SINCE)
    if idle_since is None or time.monotonic() - idle_since <= _idle_check_s():
        return
    conn: psycopg.Connection[Any] = dbapi_conn  # type: ignore[assignment]
    pgconn = conn.pgconn
    try:
        grace = _grace(record)
        deadline = time.monotonic() + grace
        pgconn.send_query(b"SELECT 1")
        _flush_output(pgconn, grace)
        results = _read_results(pgconn, deadline - time.monotonic())
    except (psycopg.Error, OSError, TimeoutError) as error:
        log_event("db_idle_connection_replaced", level=logging.INFO, reason=type(error).__name__)
        raise DisconnectionError("idle connection is dead or silent") from error
    if any(r.status != pq.ExecStatus.TUPLES_OK for r in results):
        raise DisconnectionError("idle connection refused its ping")
    record.info[db.IDLE_SINCE] = time.monotonic()


def _confirm_on_close(dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
    if dbapi_conn is not None and _IN_FLIGHT in record.info:
        _confirm(dbapi_conn, record, _budget())  # shutdown, snapshot: worth waiting for


def _confirm(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, timeout_s: float) -> bool:
    """Read the in-flight INSERT's answer; False when the connection is unusable."""
    rows: list[Row] = record.info.pop(_IN_FLIGHT)
    conn: psycopg.Connection[Any] = dbapi_conn  # type: ignore[assignment]
    pgconn = conn.pgconn
    try:
        if _pending(pgconn):
            with _lock:
                stats["late"] += 1  # the answer was not back yet: the rest of its round trip
        results = _read_results(pgconn, timeout_s)
    except (psycopg.Error, OSError, TimeoutError) as error:
        _hold(rows, reason=type(error).__name__)
        return False
    refused = [r for r in results if r.status != pq.ExecStatus.COMMAND_OK]
    if not refused:
        with _lock:
            stats["confirmed"] += len(rows)
        return pgconn.transaction_status == pq.TransactionStatus.IDLE
    sqlstate = (refused[0].error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    if not sqlstate or sqlstate.startswith(_SESSION_ENDED):
        _hold(rows, reason=f"session ended ({sqlstate or 'no sqlstate'})")
        return False
    refusal = db.refused_write(sqlstate)
    if refusal is not None:  # for now (read-only, out of space): the next request sends it again
        _hold(rows, reason=refusal)
    else:
        with _lock:
            stats["failed"] += len(rows)
        log_event("usage_record_failed", level=logging.WARNING, rows=len(rows), sqlstate=sqlstate)
    return pgconn.transaction_status == pq.TransactionStatus.IDLE


# --- libpq without psycopg's cursor ---------------------------------------------------------------


def _grace(record: ConnectionPoolEntry) -> float:
    """How long an answer on `record`'s connection is waited for once its message is sent."""
    round_trip = float(record.info.get(db.SHORTEST_ROUND_TRIP, 0.0))
    scaled = min(GRACE_ROUND_TRIPS * round_trip, db.CONNECT_TIMEOUT_LEAST_S)
    return max(ANSWER_GRACE_S, scaled)


def _budget() -> float:
    try:
        return float(get_settings().db_retry_budget_s)
    except Exception:  # settings broken: the request reports it
        return 5.0


def _idle_check_s() -> float:
    return float(get_settings().db_idle_check_s)  # the engine was built from these settings


def _flush_output(pgconn: PGconn, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while pgconn.flush() == 1:
        _wait(pgconn, write=True, deadline=deadline)


def _pending(pgconn: PGconn) -> bool:
    """Read what has arrived; True when the answer is not all back yet."""
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("connection closed")
    pgconn.consume_input()
    return bool(pgconn.is_busy())


def _read_results(pgconn: PGconn, timeout_s: float) -> list[PGresult]:
    deadline = time.monotonic() + timeout_s
    while _pending(pgconn):
        _wait(pgconn, write=False, deadline=deadline)
    results = []
    while (result := pgconn.get_result()) is not None:
        results.append(result)
    return results


def _wait(pgconn: PGconn, *, write: bool, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer within the time given")
    fds = [pgconn.socket]
    readable, writable, _ = select.select([] if write else fds, fds if write else [], [], remaining)
    if not readable and not writable:
        raise TimeoutError("no answer within the time given")


# --- rows whose outcome is unknown ---------------------------------------------------------------


def _take_held() -> list[Row]:
    with _lock:
        rows, _held[:] = list(_held), []
        return rows


def _hold(rows: list[Row], *, reason: str) -> None:
    with _lock:
        room = MAX_HELD_ROWS - len(_held)
        kept, dropped = rows[:room], rows[room:]
        _held.extend(kept)
        stats["held"] += len(kept)
        stats["lost"] += len(dropped)
    log_event("usage_record_deferred", level=logging.WARNING, rows=len(kept), reason=reason)
    if dropped:
        log_event("usage_rows_lost", level=logging.ERROR, rows=len(dropped), reason=reason)
