"""The database engine: one cached connection per warm container, Neon-aware, retrying safely.

Shape of a call: `run(work)` for single statements (autocommit: one round trip each),
`transaction(work)` for multi-step writes (`BEGIN` … `COMMIT`, all or nothing) and `read(work)`
for work declared read-only, which a replica may serve (`shared.replicas`, only when
DATABASE_READ_URL or ANALYTICS_DATABASE_URL is set). `work` receives a `Conn` (the checked-out
connection, and an ORM session built only if asked for) and holds the SQL (see
`shared.repositories`).

Why it looks like this:
- The engine is built on first use and kept at module level; never in a FastAPI lifespan, which
  Mangum runs on every invocation. `DB_POOL_SIZE` (default 1, no overflow) bounds what a container
  holds; the pooler multiplexes containers onto few server connections.
- Autocommit at the driver: psycopg would otherwise send `BEGIN` as its own round trip before
  every statement. Transactions send `BEGIN` (and `SET LOCAL statement_timeout`) as one message.
- No ping on a hot connection. One idle for longer than `DB_IDLE_CHECK_S` (a frozen container, a
  Neon compute that may have suspended) is pinged on checkout and replaced if dead.
- Hot paths skip SQLAlchemy's per-statement machinery: `HotStatement` is a Core statement
  built and compiled once (on its first run, not at import) and run by `execute_hot` straight
  on the checked-out psycopg connection, with SQLAlchemy's error wrapping, connection
  invalidation and cursor events kept (so the retry rules, the slow-query log and statement
  counting see it like any other).
  `BEGIN` and `COMMIT` go the same way. Work that runs only hot statements never builds an ORM
  `Session` (`Conn.session` is built on first use). The pooler rule is the connection's own
  (`prepare_threshold`), so nothing changes there.
- A server or libpq that refuses the connection (a wrong password, a database or role that does
  not exist) is configuration no retry mends, yet nothing can be served: it is
  `DatabaseUnavailableError` at once, told without the names the refusal quotes.
- No connect attempt outlasts the retry budget: each waits DB_CONNECT_TIMEOUT_S or what is left
  of the budget, whichever is less (at least psycopg's least, 2 s), and the addresses of one
  host name share it, so a host that accepts TCP and never answers costs a caller its budget,
  not a connect timeout (per address) past it.
- No connection waits for an answer forever (`BoundedConnection`): a server that stopped
  answering on an open connection (a hung host, a black-holed network: the kernel may still
  acknowledge what is sent) is given up on the connection's longest round trip, or sooner at
  its caller's give-up time, and the connection is closed, never pooled again. On the primary
  that is the statement timeout in force (a transaction's own, when it sets one) plus
  `STATEMENT_GRACE_S`, so a statement the server would let run is never cut. A request's
  give-up time is its invocation's end less a margin (`shared.http.invocation`): work that
  would start past it is not started, and no retry goes past it.
- Connection-level failures are retried with backoff within `DB_RETRY_BUDGET_S`, but only where a
  retry cannot apply a write twice: failures while connecting; anything before `COMMIT` in a
  transaction (the server rolls back a transaction whose connection dies); statements declared
  idempotent; and errors where the server says it ended the session before running the statement
  (in `run` work, only while none of its statements has committed).
  A transaction the server aborted to break a deadlock (or a serialization failure) is retried
  the same way: it was rolled back whole, and PostgreSQL's advice for both is to run it again.
- The primary refusing writes for now (read-only, 25006; insufficient resources, class 53, such
  as Neon's project size limit) is an outage of the data store, not a bug: it is
  `DatabaseUnavailableError` at once, never retried (the next attempt would be refused alike).
  On a replica a write is our bug, and is raised as it is (`shared.replicas`).
- A statement the server cancelled (its statement or lock timeout) is not a connection failure:
  raised as it is, never retried; a request answers it 503 (`cancelled_statement`).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_attempts, conninfo_to_dict
from psycopg.pq import TransactionStatus
from sqlalchemy import ClauseElement, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.base import PGTypeCompiler
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from shared import db_dialect
from shared.config import PreparedStatements, Settings, get_settings
from shared.db_url import DatabaseTarget, DatabaseUrlError, parse_database_url, redact_url
from shared.telemetry import log_event

T = TypeVar("T")
RV = TypeVar("RV")

# The engines below connect through the dialect that initialises in one round trip.
registry.register(f"postgresql.{db_dialect.NAME}", "shared.db_dialect", "KeyFlashDialect")

# SQLSTATEs meaning the server ended or refused the session before running our statement.
_SERVER_ENDED_SESSION = frozenset({"57P01", "57P02", "57P03", "53300"})
# SQLSTATE (and class) of a database refusing writes for now: a read-only database (a replica, a
# compute in a read-only state, `default_transaction_read_only`) and insufficient resources
# (Neon's project size limit is 53100 disk_full). An outage, not a bug; nothing was written.
_READ_ONLY = "25006"
_INSUFFICIENT_RESOURCES = "53"
# SQLSTATEs of a transaction the server rolled back so that another could go on: run it again.
_ABORTED_TO_RETRY = {"40P01": "deadlock detected", "40001": "serialization failure"}
# SQLSTATEs of a statement the server cancelled: its statement timeout (or an operator's cancel)
# and its lock timeout, e.g. waiting on a row another writer of the shared database holds.
_CANCELLED = {"57014": "statement cancelled", "55P03": "lock not available"}
# libpq reports every failed connect without a SQLSTATE; these ones are configuration, which no
# retry mends (a failed login, a missing database or role, a refused host, a TLS mismatch, a
# connection option's invalid value, a certificate that fails verification). PgBouncer words its
# own refusals unquoted: "no such database: <name>", "no such user", "password (or SASL, "trust",
# certificate, PAM) authentication failed", and a failing server login as the server's words.
_MISCONFIGURED = (
    "authentication failed",
    "does not exist",
    "no such database",
    "no such user",
    "no pg_hba.conf entry",
    "server does not support ssl",
    "sslmode value",
    "invalid connection option",
    ' value: "',  # invalid channel_binding value: "requre" (any option with fixed choices)
    "invalid integer value",
    "invalid port number",
    "does not match host name",
    "certificate verify failed",
)


# Why a connection failed: the server's words after its "FATAL:" or "ERROR:", else libpq's
# after its prefix ("connection to server at … failed:", "connection is bad:"); the names
# either quotes (a user, a database, a host), and those PgBouncer writes unquoted at the end.
_REFUSAL_PREFIX = re.compile(r"^(?:.*\b(?:FATAL|ERROR):\s+|.*\bfailed:\s+|connection is bad:\s+)")
# A quoted name ends at a quote followed by a separator or the end: PostgreSQL does not escape
# the quotes inside a name. An apostrophe in a word opens no quote.
_QUOTED = re.compile(
    r"\"[^\"]*(?:\"(?![\s,.;:)]|$)[^\"]*)*\"|(?<!\w)'[^']*(?:'(?![\s,.;:)]|$)[^']*)*'"
)
_UNQUOTED_NAME = re.compile(r"((?:no such (?:database|user)|does not allow connections):\s*)\S.*$")
# A quoted role, database or user name runs from its quote to the first closing quote that a
# separator follows (`,`, ` does not exist`, ` is not …`, the end): PostgreSQL does not escape
# the quotes inside a name, so `role "a" b" does not exist` is one name. Proxies word some
# refusals unquoted: `role alice does not exist`.
_NAME_AFTER = re.compile(r"""\b(role|database|user) (["']).*?\2(?=,| does not exist| is not|$)""")
_UNQUOTED_MISSING = re.compile(r"""\b(role|database|user) (?!["'])\S.*? does not exist""")
# psycopg's least connect timeout: it raises any shorter one (but 0, "none") to this.
CONNECT_TIMEOUT_LEAST_S = 2
# `psycopg.Connection.connect`'s own options: the rest of its keywords are libpq's.
_DRIVER_OPTIONS = frozenset(
    {"autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory"}
)
# When the running work gives up (`time.monotonic()`): no connection `_execute` opens waits past
# it, nor any round trip on a `BoundedConnection` while it is set (checkout, `round_trips_by`).
_give_up_at: ContextVar[float | None] = ContextVar("keyflash_db_give_up_at", default=None)
# How long a statement on the primary waits for an answer past its statement timeout: the
# server's answer to its own cancel is one round trip after the timeout fires. With the default
# timeout (15 s) that is 17 s, inside the functions' 20 s (serverless.yml).
STATEMENT_GRACE_S = 2.0
# A pooled connection's `info`: when it was last checked in (the idle check's clock).
IDLE_SINCE = "idle_since"
# A pooled connection's `info`: the shortest round trip seen on it (its connect, each statement),
# in seconds; an upper bound on the network's, close to it once a short statement has run.
SHORTEST_ROUND_TRIP = "shortest_round_trip_s"
# A pooled connection's `info` while `run` work is on it: that work's `Answers`.
WORK_ANSWERS = "work_answers"


class Answers:
    """How many statements of one `run` work the server answered. Each one answered has
    committed (autocommit), so after the first a failed statement cannot be retried: the work
    would run again over what it already applied. Held by `_execute`, not only by the
    connection's `info`, which SQLAlchemy clears when the connection is invalidated."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection on which no round trip waits forever: every engine's.

    libpq waits for a server's answer as long as the socket stays open, and a frozen server's
    kernel keeps it open (TCP keepalives and `tcp_user_timeout` see nothing amiss), while
    `statement_timeout` is the server's own and cannot fire on a server that does not run.
    Each round trip (a statement, a fetch, a commit) waits at most `longest_round_trip_s`, and
    not past the give-up time in force (`_give_up_at`), though at least `least_wait_s`; then
    the connection is closed (the pool discards it) and the round trip fails as a lost
    connection does, so the retry rules and the read's fallback (or the primary's 503) apply
    unchanged."""

    longest_round_trip_s: float = math.inf
    # The primary's: a round trip under a give-up time (the dialect's first statement, the idle
    # ping) gets what a connect attempt gets, at least psycopg's least. A read URL's: none.
    least_wait_s: float = 0.0

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        limit = self.longest_round_trip_s
        give_up_at = _give_up_at.get()
        if give_up_at is not None:
            limit = min(limit, max(give_up_at - time.monotonic(), self.least_wait_s))
        if timeout is not None or limit == math.inf:
            return super().wait(gen, interval, timeout)  # psycopg's own bound (a cancel)
        limit = max(limit, 0.0)
        started = time.monotonic()
        try:
            return super().wait(gen, interval, limit)
        except psycopg.OperationalError:
            if time.monotonic() - started < limit:
                raise  # the connection failed on its own
            self.close()
            raise psycopg.OperationalError(
                f"the server did not answer within {limit:.1f} s"
            ) from None


@contextmanager
def round_trips_by(give_up_at: float) -> Iterator[None]:
    """Within the block, no round trip on a `BoundedConnection` waits past `give_up_at`
    (`time.monotonic()`), nor does a connect (but psycopg's least connect timeout, 2 s), nor
    does `_execute` retry. A give-up time already in force that is sooner stays in force."""
    outer = _give_up_at.get()
    bound = _give_up_at.set(give_up_at if outer is None else min(outer, give_up_at))
    try:
        yield
    finally:
        _give_up_at.reset(bound)


# What an invocation keeps after its database gives up (`within_invocation`): a round trip may
# still wait psycopg's least (2 s) past that time, and the answer (a 503, a cron's summary) needs
# a second more.
INVOCATION_MARGIN_S = CONNECT_TIMEOUT_LEAST_S + 1.0


def invocation_give_up_time(end: float) -> float:
    """When the database work of an invocation ending at `end` (`time.monotonic()`) gives up:
    `end` less INVOCATION_MARGIN_S."""
    return end - INVOCATION_MARGIN_S


def within_invocation(end: float) -> AbstractContextManager[None]:
    """`round_trips_by` the invocation's give-up time (`invocation_give_up_time`): what an
    HTTP request (`shared.http.invocation`) and a cron run's work (`shared.cron.runner`) run
    under, so the platform never ends one mid round trip."""
    return round_trips_by(invocation_give_up_time(end))


class DatabaseUnavailableError(RuntimeError):
    """The database could not be reached (or a write's outcome is unknown) within the budget,
    it refused the connection (`refused`: what it said, the names it quoted masked), or it
    refuses writes for now (read-only, out of space). `outcome_unknown`: a write may have
    applied (its answer was lost), so what it did may need undoing.

    HTTP functions answer 503 with `Retry-After`; the message is safe to log (no secrets).
    """

    def __init__(
        self, message: str, *, refused: str | None = None, outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.refused = refused
        self.outcome_unknown = outcome_unknown


def failure_reason(error: BaseException) -> str:
    """Why a connection failed or was refused, in the error's own words but with every name
    masked (`…`): the role's name is personal data, the database and host are no one's business
    in a log either, and nothing else in such a message is a value of ours. Every log line and
    `DatabaseUnavailableError` about a connection says it this way."""
    lines = redact_url(str(error)).strip().splitlines()
    reason = _REFUSAL_PREFIX.sub("", lines[0], count=1) if lines else ""
    reason = _UNQUOTED_NAME.sub(r"\1…", reason)
    reason = _NAME_AFTER.sub(r'\1 "…"', reason)
    reason = _UNQUOTED_MISSING.sub(r"\1 … does not exist", reason)
    return _QUOTED.sub('"…"', reason).strip()


_engine: Engine | None = None
_engine_lock = threading.Lock()
# Engines of the read-only URLs (DATABASE_READ_URL, ANALYTICS_DATABASE_URL), by variable name:
# created on the first read routed to them (`shared.replicas`), never when they are unset.
_read_engines: dict[str, Engine] = {}


def get_engine() -> Engine:
    """The container's engine, created on first use and reused by every later invocation."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                settings = get_settings()
                _engine = build_engine(
                    settings,
                    longest_round_trip_s=settings.db_statement_timeout_ms / 1000
                    + STATEMENT_GRACE_S,
                )
    return _engine


def get_read_engine(
    variable: str,
    url: str,
    *,
    longest_round_trip_s: float,
    verify: Callable[[psycopg.Connection[Any]], None],
) -> Engine:
    """The cached engine of the read-only URL in `variable`, created on first use; its
    connections are `BoundedConnection`s waiting at most `longest_round_trip_s` for an answer,
    and each is given to `verify` when it opens (whatever that raises, it is closed)."""
    engine = _read_engines.get(variable)
    if engine is None:
        with _engine_lock:
            engine = _read_engines.get(variable)
            if engine is None:
                engine = build_engine(
                    get_settings(),
                    url=url,
                    variable=variable,
                    longest_round_trip_s=longest_round_trip_s,
                )
                _install_verify(engine, verify)
                _read_engines[variable] = engine
    return engine


def dispose_engine() -> None:
    """Close the cached engines' connections and forget them (tests, settings changes)."""
    global _engine
    with _engine_lock:
        _dispose_all()
        _engine = None
        _read_engines.clear()


def close_connections() -> None:
    """Close the pooled connections but keep the engines; the next query connects anew
    (SnapStart: no socket may be frozen into the snapshot and shared by every restored
    container)."""
    with _engine_lock:
        _dispose_all()


def connect_ahead() -> bool:
    """Connect once now and put the connection back in the pool: the engine's dialect learns
    the server (its one statement) before any request does.

    SnapStart's INIT calls it. The connection is closed before the snapshot, but what the
    dialect learned is kept in it, so a restored container's first request only connects.
    One attempt: a database that is unreachable or refuses us is logged and left to the first
    request, as on an ordinary cold start (False)."""
    try:
        _execute(lambda conn: None, atomic=False, idempotent=True, budget_s=0.0)
    except (DatabaseUnavailableError, DBAPIError) as error:
        # A driver's failure is masked; our own error's message is already safe to log.
        if isinstance(error, DBAPIError):
            reason = failure_reason(error.orig or error)
        else:
            reason = str(error)
        log_event("db_connect_ahead_failed", level=logging.WARNING, reason=reason)
        return False
    return True


def _dispose_all() -> None:
    for engine in (_engine, *_read_engines.values()):
        if engine is not None:
            engine.dispose()


def prepared_statements_enabled(target: DatabaseTarget, mode: PreparedStatements) -> bool:
    """Auto: on everywhere but a non-Neon transaction pooler (Debian's PgBouncer 1.18 cannot)."""
    if mode is PreparedStatements.AUTO:
        return not (target.is_pooler and not target.is_neon)
    return mode is PreparedStatements.ON


def build_engine(
    settings: Settings,
    *,
    url: str | None = None,
    variable: str = "DATABASE_URL",
    longest_round_trip_s: float,
) -> Engine:
    """Create an engine for `url` (default DATABASE_URL) following the pooled-endpoint rules;
    `variable` names the setting in errors. Its connections are `BoundedConnection`s waiting at
    most `longest_round_trip_s` for an answer."""
    target = parse_database_url(url or settings.database_url, variable=variable)
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout_s,
        "application_name": settings.db_application_name,
    }
    if not prepared_statements_enabled(target, settings.prepared_statements):
        connect_args["prepare_threshold"] = None
    if not target.is_pooler:
        # A direct connection takes session settings as startup options; a pooler would refuse.
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    primary = url is None
    engine = create_engine(
        make_url(target.sqlalchemy_url).set(drivername=f"postgresql+{db_dialect.NAME}"),
        connect_args=connect_args,
        isolation_level="AUTOCOMMIT",
        # The primary's callers count the wait for a pooled connection in their budget; a read
        # URL's freshness check has a budget of its own from when its connection is ready
        # (`shared.replicas`), so its wait is the pool's own timeout.
        poolclass=BoundedQueuePool if primary else QueuePool,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_retry_budget_s,
        pool_pre_ping=False,
        pool_use_lifo=True,
    )
    _install_connect_bound(
        engine, longest_round_trip_s, least_wait_s=CONNECT_TIMEOUT_LEAST_S if primary else 0.0
    )
    # The primary replaces a connection whose ping was not answered in time; a read URL's
    # caller reads from the primary instead.
    _install_idle_check(engine, settings.db_idle_check_s, replace_when_late=primary)
    _install_statement_timer(engine, settings.slow_query_ms)
    return engine


def _install_connect_bound(
    engine: Engine, longest_round_trip_s: float, *, least_wait_s: float
) -> None:
    bounded = partial(_connect_bounded, longest_round_trip_s, least_wait_s)

    @event.listens_for(engine, "do_connect")
    def _bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        started = time.perf_counter()
        give_up_at = _give_up_at.get()
        if give_up_at is None:  # not `_execute`'s: DB_CONNECT_TIMEOUT_S as configured
            connection = bounded(*cargs, **cparams)
        else:
            connection = _connect_by(give_up_at, bounded, cargs, cparams)
        _saw_round_trip(record.info, time.perf_counter() - started)  # a few, in fact
        return connection


def _connect_bounded(
    longest_round_trip_s: float, least_wait_s: float, *cargs: Any, **cparams: Any
) -> Any:
    connection = BoundedConnection.connect(*cargs, **cparams)
    connection.longest_round_trip_s = longest_round_trip_s
    connection.least_wait_s = least_wait_s
    return connection


def _connect_by(
    give_up_at: float, connect: Callable[..., Any], cargs: Any, cparams: dict[str, Any]
) -> Any:
    """Connect as psycopg does (one attempt per host and per address it resolves to, in its
    order), but all attempts against `give_up_at`: psycopg gives each attempt the whole connect
    timeout, so a host name with three addresses that never answer would wait three of them.

    Each attempt waits what is left (at most DB_CONNECT_TIMEOUT_S, at least psycopg's least) and
    none starts after `give_up_at`. Resolved here, each attempt carries its `hostaddr` beside
    its `host` (TLS still checks the name), so psycopg resolves nothing again and raises that
    attempt's own error; the last one is raised, as psycopg raises a single attempt's."""
    driver = {key: value for key, value in cparams.items() if key in _DRIVER_OPTIONS}
    conninfo = {key: value for key, value in cparams.items() if key not in _DRIVER_OPTIONS}
    attempts = conninfo_attempts(conninfo_to_dict(*cargs, **conninfo))
    failure: psycopg.Error | None = None
    for attempt in attempts:
        if failure is not None and time.monotonic() >= give_up_at:
            break
        left = math.ceil(give_up_at - time.monotonic())
        timeout = min(cparams["connect_timeout"], max(left, CONNECT_TIMEOUT_LEAST_S))
        try:
            return connect(**{**attempt, **driver, "connect_timeout": timeout})
        except psycopg.Error as error:
            failure = error
    assert failure is not None  # conninfo_attempts raises rather than return no attempt
    raise failure


class BoundedQueuePool(QueuePool):
    """A QueuePool whose checkout waits for a free connection no longer than the give-up time
    in force (`_give_up_at`), nor its own timeout: a caller's budget (health's check, a retry's
    rest) counts the wait for a connection other threads hold, not only the connect."""

    @property
    def _timeout(self) -> float:
        give_up_at = _give_up_at.get()
        if give_up_at is None:
            return self._longest_wait_s
        return max(min(self._longest_wait_s, give_up_at - time.monotonic()), 0.0)

    @_timeout.setter
    def _timeout(self, seconds: float) -> None:
        self._longest_wait_s = seconds


def _connect(engine: Engine, give_up_at: float) -> Connection:
    """`engine.connect()`, where neither the wait for a pooled connection nor a connection
    opened for it waits past `give_up_at` (`time.monotonic()`), but for psycopg's least connect
    timeout when that is sooner."""
    bound = _give_up_at.set(give_up_at)
    try:
        return engine.connect()
    finally:
        _give_up_at.reset(bound)


def _install_verify(engine: Engine, verify: Callable[[psycopg.Connection[Any]], None]) -> None:
    @event.listens_for(engine, "connect")
    def _verify(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        conn: psycopg.Connection[Any] = dbapi_conn  # type: ignore[assignment]
        try:
            verify(conn)
        except BaseException:
            conn.close()  # the pool never held it: nobody else would
            raise


def _install_idle_check(engine: Engine, idle_seconds: float, *, replace_when_late: bool) -> None:
    @event.listens_for(engine, "checkin")
    def _mark_idle(dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info[IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_if_idle(
        dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        conn: psycopg.Connection[Any] = dbapi_conn  # type: ignore[assignment]
        if conn.closed or conn.broken:
            raise DisconnectionError("connection closed while idle")
        idle_since = record.info.get(IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since <= idle_seconds:
            return
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as error:
            give_up_at = _give_up_at.get()
            late = give_up_at is not None and time.monotonic() >= give_up_at
            if late and not replace_when_late:
                raise  # a replica that did not answer: no time left to replace it
            log_event(
                "db_idle_connection_replaced", level=logging.INFO, reason=type(error).__name__
            )
            raise DisconnectionError("idle connection is dead") from error


def _install_statement_timer(engine: Engine, slow_query_ms: int) -> None:
    """Times each statement: the shortest so far is the connection's round trip
    (SHORTEST_ROUND_TRIP); one past `slow_query_ms` is logged (0: none is)."""

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        conn.info["query_started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _finish(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        info = conn.info
        elapsed_s = time.perf_counter() - info.pop("query_started")
        _saw_round_trip(info, elapsed_s)
        answers = info.get(WORK_ANSWERS)
        if answers is not None:
            answers.count += 1
        if 0 < slow_query_ms < elapsed_s * 1000:
            # Neon's pg_stat_statements resets whenever the compute suspends: log it here.
            log_event(
                "slow_query",
                level=logging.WARNING,
                durationMs=round(elapsed_s * 1000, 1),
                thresholdMs=slow_query_ms,
                sql=" ".join(statement.split())[:200],
            )


def _saw_round_trip(info: dict[Any, Any], seconds: float) -> None:
    if seconds < info.get(SHORTEST_ROUND_TRIP, math.inf):
        info[SHORTEST_ROUND_TRIP] = seconds


def is_connection_failure(error: DBAPIError) -> bool:
    """True when `error` is about the connection, not about the statement or the data."""
    if error.connection_invalidated:
        return True
    original = error.orig
    if not isinstance(original, psycopg.OperationalError):
        return False
    sqlstate = original.sqlstate
    if sqlstate is None:
        # libpq's own failure (connect, send, receive), with the server's text at most; a
        # statement's error always comes with the server's SQLSTATE.
        message = str(original).lower()
        return not any(fragment in message for fragment in _MISCONFIGURED)
    return sqlstate in _SERVER_ENDED_SESSION or sqlstate.startswith("08")


def refused_write(sqlstate: str | None) -> str | None:
    """Why the database refuses writes for now (our words, with the SQLSTATE), when `sqlstate`
    says it does: read-only, or short of a resource (disk, memory); else None."""
    if sqlstate == _READ_ONLY:
        return f"database is read-only ({sqlstate})"
    if sqlstate is not None and sqlstate.startswith(_INSUFFICIENT_RESOURCES):
        return f"insufficient resources ({sqlstate})"
    return None


def cancelled_statement(error: BaseException) -> str | None:
    """Why the server cancelled the statement of `error` (our words, with the SQLSTATE) when it
    gave up on it (statement or lock timeout, an operator's cancel); else None.

    Not a connection failure, so never retried here (run again now, it would wait again), and
    raised as it is: a cron handles it as its job documents. A request answers it as the
    database refusing the work for now: 503 with `Retry-After` (`shared.http.app`)."""
    original = error.orig if isinstance(error, DBAPIError) else None
    sqlstate = getattr(original, "sqlstate", None)
    reason = _CANCELLED.get(sqlstate or "")
    return None if reason is None else f"{reason} ({sqlstate})"


def _refused(error: DBAPIError) -> str | None:
    """What refused the connection, when `error` is libpq's failure to connect (no SQLSTATE)
    that no retry mends; else None."""
    original = error.orig
    if (
        isinstance(original, psycopg.OperationalError)
        and original.sqlstate is None
        and not is_connection_failure(error)
    ):
        return failure_reason(original)
    return None


def violated_constraint(error: DBAPIError) -> str | None:
    """The constraint the server names in `error` (a unique or foreign key violation), if any."""
    return getattr(getattr(error.orig, "diag", None), "constraint_name", None)


def _server_ended_session(error: DBAPIError) -> bool:
    original = error.orig
    return isinstance(original, psycopg.Error) and original.sqlstate in _SERVER_ENDED_SESSION


@dataclass(slots=True)
class Consistency:
    """One request's read-your-writes positions (WAL LSNs as integers), kept only while
    DATABASE_READ_URL is set: `seen`, what the caller's consistency token says it wrote up to;
    `written`, the primary's position after this request's last write. A replica serves the
    request's reads only once it has replayed both (`shared.replicas`)."""

    seen: int | None = None
    written: int | None = None

    @property
    def required(self) -> int | None:
        """The position a replica must have replayed to serve this request, if any."""
        positions = [p for p in (self.seen, self.written) if p is not None]
        return max(positions) if positions else None


# Set per request by the HTTP layer (a mutable holder: sync routes run in a copied context).
consistency: ContextVar[Consistency | None] = ContextVar("keyflash_consistency", default=None)


def required_position() -> int | None:
    """The position this request's reads must see (its token, its own writes), if any."""
    tracked = consistency.get()
    return None if tracked is None else tracked.required


# A write whose position could not be read: the request's reads then need the primary.
UNKNOWN_POSITION = 2**64 - 1
# One simple-protocol message: the commit and the position after it, in the same round trip.
_COMMIT_AND_POSITION = "COMMIT; SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
_POSITION = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
_READ_POSITION = """
    SELECT pg_is_in_recovery(),
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn
"""
# In a statement's own snapshot: no transaction was in flight when it was taken (`read_position`).
SNAPSHOT_QUIET = "NOT EXISTS (SELECT FROM pg_snapshot_xip(pg_current_snapshot()))"


class ReadPosition(NamedTuple):
    """A server's WAL position read before a load (`read_position`)."""

    position: int
    replica: bool

    def covered(self, quiet: bool) -> int:
        """What a load read by a later statement is complete up to. A replica: its replayed
        position (replay makes a commit visible as it applies it). The primary inserts a commit's
        record before its transaction becomes visible, so its insert position proves only what
        a later snapshot with no transaction in flight (`SNAPSHOT_QUIET`, in that statement)
        sees: every commit ending at or before it began before that snapshot; with one in
        flight it proves nothing (0)."""
        return self.position if self.replica or quiet else 0


def read(
    work: Callable[[Conn], T],
    *,
    analytics: bool = False,
    snapshot: bool = False,
    at_least: int | None = None,
) -> T:
    """Run read-only `work` where reads are served: the replica (DATABASE_READ_URL) when it is
    fresh enough for this caller, else the primary; `analytics=True` prefers
    ANALYTICS_DATABASE_URL. `snapshot=True` runs every statement in one transaction.
    `at_least`: a position the replica must have replayed too (a write of another request that
    this read must see, e.g. the one that asked for a data export).

    Declaring work read-only is the only way onto a replica: `run` and `transaction` always use
    the primary. With neither URL set this is `run(work, idempotent=True)` (or a transaction).
    """
    settings = get_settings()
    if settings.database_read_url is None and not (analytics and settings.analytics_database_url):
        return _execute(work, atomic=snapshot, idempotent=True)
    from shared import replicas  # only with a read URL set: nothing more to import otherwise

    return replicas.read(work, analytics=analytics, snapshot=snapshot, at_least=at_least)


def read_position(conn: Conn) -> ReadPosition:
    """This connection's server and its position, read BEFORE the statement whose data it is
    to cover (`ReadPosition.covered`): a write whose token is at or below what that returns is
    visible to the statement."""
    row = conn.connection.exec_driver_sql(_READ_POSITION).one()
    return ReadPosition(int(row[1]), replica=bool(row[0]))


def run(work: Callable[[Conn], T], *, idempotent: bool = False) -> T:
    """Run `work` with each statement committing on its own (one round trip per statement).

    Set `idempotent=True` for reads and for writes that are safe to repeat (e.g. `ON CONFLICT DO
    NOTHING`): they are retried even when the connection dies mid-statement.
    """
    return _execute(work, atomic=False, idempotent=idempotent)


def transaction(work: Callable[[Conn], T], *, statement_timeout_ms: int | None = None) -> T:
    """Run `work` inside BEGIN … COMMIT: every statement applies, or none does.

    A connection failure before COMMIT rolls the transaction back on the server, so the whole
    unit is retried; a failure during COMMIT leaves the outcome unknown and is reported instead.
    `statement_timeout_ms` replaces DB_STATEMENT_TIMEOUT_MS for this transaction (a cron's
    longer work): set here and nowhere else, so the client waits as long as the server may run.
    """
    if statement_timeout_ms is not None and statement_timeout_ms < 1:
        raise ValueError("statement_timeout_ms must be at least 1 (0 is PostgreSQL's no limit)")
    return _execute(work, atomic=True, idempotent=False, statement_timeout_ms=statement_timeout_ms)


class Conn:
    """What `work` receives: `connection`, the checked-out SQLAlchemy connection (hot statements
    run on its psycopg connection), and `session`, an ORM session bound to it, built the first
    time it is asked for: hot-only work then pays for no Session. `_execute` closes it."""

    __slots__ = ("_session", "connection")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        """The ORM session on this connection: ORM statements join whatever it is running."""
        if self._session is None:
            self._session = Session(bind=self.connection, expire_on_commit=False, autoflush=False)
        return self._session

    def rollback(self) -> None:
        """End a failed transaction: the session's (if built), then the server's. psycopg sends
        ROLLBACK only when the server reports an open transaction."""
        if self._session is not None:
            self._session.rollback()
        driver = _driver_of(self.connection)
        if driver.info.transaction_status != TransactionStatus.IDLE:
            driver.rollback()

    def close(self) -> None:
        """Close the session if one was built; the connection itself is `_execute`'s."""
        if self._session is not None:
            self._session.close()


class HotStatement:
    """A statement run as SQL with `%(name)s` placeholders: `source` is that SQL, or a function
    building the Core statement, which is built and compiled once, on its first run.

    Not at import: a cold start then builds and compiles only the statements its request runs.
    Parameters are passed as the driver takes them (naive UTC datetimes for `UTCDateTime`
    columns, enum values as their strings): no bind processors run on the hot path."""

    __slots__ = ("_compiled", "_source")

    def __init__(self, source: str | Callable[[], ClauseElement]) -> None:
        self._source = source
        self._compiled: tuple[str, Mapping[str, Any] | None] | None = None
        _hot_statements.append(self)

    def compiled(self) -> tuple[str, Mapping[str, Any] | None]:
        """`(sql, constants)`: the statement's own literals (`param_1` …) are the constants."""
        if self._compiled is None:
            source = self._source
            self._compiled = (source, None) if isinstance(source, str) else _compile(source())
        return self._compiled


# Every HotStatement made so far (those of the repositories imported), for `compile_hot_statements`.
_hot_statements: list[HotStatement] = []


def compile_hot_statements() -> int:
    """Build and compile every HotStatement made so far; returns how many were not yet. SnapStart's
    INIT calls it, so that restored containers compile none of them."""
    pending = [statement for statement in _hot_statements if statement._compiled is None]
    for statement in pending:
        statement.compiled()
    return len(pending)


def _compile(statement: ClauseElement) -> tuple[str, Mapping[str, Any] | None]:
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    processors = compiled._bind_processors  # type: ignore[attr-defined]
    constants = {
        name: processors[name](bind.value) if name in processors else bind.value
        for bind, name in compiled.bind_names.items()  # type: ignore[attr-defined]
        if not bind.required
    }
    return str(compiled), constants or None


class _ShortTypeNames(PGTypeCompiler):
    """`timestamp` for `TIMESTAMP WITHOUT TIME ZONE` (the same type): hot statements cast their
    datetime parameters often, and psycopg caches the parsing of a statement only up to 4,096
    characters (the keyword reservation is near it)."""

    def visit_TIMESTAMP(self, type_: Any, **kw: Any) -> str:
        name = "timestamptz" if type_.timezone else "timestamp"
        precision = getattr(type_, "precision", None)
        return name if precision is None else f"{name}({precision})"


class _HotDialect(PGDialect_psycopg):
    type_compiler_cls = _ShortTypeNames


_DIALECT = _HotDialect()  # type: ignore[no-untyped-call]


def execute_hot(
    conn: Conn, statement: HotStatement, params: Mapping[str, Any] | None = None
) -> psycopg.Cursor[Any]:
    """Run `statement` on the psycopg connection under `conn`; returns its cursor.

    A driver error is raised as SQLAlchemy raises it (`DBAPIError` subclasses, e.g.
    `IntegrityError`), with the connection invalidated when psycopg says it broke, so
    `_execute`'s retry rules and the repositories' error handling apply unchanged."""
    sql, constants = statement.compiled()
    if constants is not None:
        params = {**constants, **params} if params else constants
    return _execute_on(conn.connection, sql, params)


def driver_connection(conn: Conn) -> psycopg.Connection[Any]:
    """The psycopg connection under `conn` (e.g. to check its transaction status)."""
    return _driver_of(conn.connection)


def _driver_of(connection: Connection) -> psycopg.Connection[Any]:
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    return driver


def _execute_on(
    connection: Connection, sql: str, params: Mapping[str, Any] | None
) -> psycopg.Cursor[Any]:
    driver = _driver_of(connection)
    cursor = driver.cursor()
    # The engine's listeners (slow-query log, counters) straight from the engine when the
    # connection has none of its own: its joined dispatcher, new with every checkout, builds
    # its listener lists on first use, i.e. on every call (~7 us).
    if connection._has_events:
        dispatch = connection.dispatch
    elif connection.engine._has_events:
        dispatch = connection.engine.dispatch
    else:
        dispatch = None
    if dispatch is not None:
        dispatch.before_cursor_execute(connection, cursor, sql, params, None, False)
    try:
        cursor.execute(sql, params)
    except psycopg.Error as error:
        broken = driver.broken or driver.closed
        if broken:
            connection.invalidate(error)
        raise DBAPIError.instance(
            sql, params, error, psycopg.Error, connection_invalidated=broken
        ) from error
    if dispatch is not None:
        dispatch.after_cursor_execute(connection, cursor, sql, params, None, False)
    return cursor


def _begin_sql(timeout_ms: int) -> str:
    # One simple-protocol message: BEGIN and the per-transaction timeout in a single round trip.
    return f"BEGIN; SET LOCAL statement_timeout = {int(timeout_ms)}"


@contextmanager
def _waiting_for(connection: Connection, timeout_ms: int | None) -> Iterator[None]:
    """Within the block, round trips on `connection` wait for the statement timeout `timeout_ms`
    (a transaction's own) plus STATEMENT_GRACE_S, then the engine's bound again; None: the
    engine's bound throughout (its statement timeout is DB_STATEMENT_TIMEOUT_MS)."""
    if timeout_ms is None:
        yield
        return
    driver = _driver_of(connection)
    assert isinstance(driver, BoundedConnection)  # every engine's connections are
    engine_bound = driver.longest_round_trip_s
    driver.longest_round_trip_s = timeout_ms / 1000 + STATEMENT_GRACE_S
    try:
        yield
    finally:
        driver.longest_round_trip_s = engine_bound


def _execute(
    work: Callable[[Conn], T],
    *,
    atomic: bool,
    idempotent: bool,
    engine: Engine | None = None,
    budget_s: float | None = None,
    database: str | None = None,
    statement_timeout_ms: int | None = None,
) -> T:
    """`work` on `engine` (default: the primary's), retried within `budget_s` (default
    DB_RETRY_BUDGET_S) where safe; on the primary, a write's position is kept for the request
    when it tracks consistency (`Consistency`). `database` names a read URL's variable when
    `engine` is its: giving up on it is its caller's to log (`shared.replicas` reads from the
    primary instead), so nothing is logged at ERROR, and the retries are INFO lines naming it.
    `statement_timeout_ms`: an atomic unit's own statement timeout (`transaction`)."""
    settings = get_settings()
    tracked = consistency.get() if engine is None else None
    engine = engine or get_engine()
    budget_s = settings.db_retry_budget_s if budget_s is None else budget_s
    deadline = time.monotonic() + budget_s
    give_up_at = _give_up_at.get()  # the caller's (`round_trips_by`): no retry past it either
    if give_up_at is not None:
        deadline = min(deadline, give_up_at)
        if time.monotonic() >= give_up_at:
            # Not started: even an unanswered connect would wait psycopg's least (2 s) more.
            if database is None:
                log_event("db_unavailable", level=logging.ERROR, stage="start", attempts=0)
            raise DatabaseUnavailableError("no time left before the caller's give-up time")
    delay = 0.05
    attempt = 0
    while True:
        attempt += 1
        stage = "connect"
        answers = Answers()
        try:
            # Checkout (and connect) before anything is sent. Hot statements run on this
            # connection directly (`execute_hot`); an ORM session, if `work` asks for one, is
            # bound to it and joins whatever it is running.
            with _connect(engine, deadline) as connection:
                conn = Conn(connection)
                try:
                    stage = "work"
                    if not atomic:
                        info = connection.info  # kept: an invalidated connection has none
                        info[WORK_ANSWERS] = answers
                        try:
                            result = work(conn)
                        finally:
                            info.pop(WORK_ANSWERS, None)
                        if tracked is not None and not idempotent:
                            stage = "position"
                            tracked.written = _position(connection, _POSITION)
                        return result
                    timeout_ms = statement_timeout_ms or settings.db_statement_timeout_ms
                    with _waiting_for(connection, statement_timeout_ms):
                        _execute_on(connection, _begin_sql(timeout_ms), None)
                        try:
                            result = work(conn)
                        except BaseException:
                            _rollback_quietly(conn)
                            raise
                        stage = "commit"
                        if tracked is None:
                            _execute_on(connection, "COMMIT", None)
                        else:
                            tracked.written = _position(connection, _COMMIT_AND_POSITION)
                    return result
                finally:
                    conn.close()
        except PoolTimeoutError:
            # Every pooled connection stayed checked out for the whole budget (more threads than
            # DB_POOL_SIZE, e.g. a threaded dev server): unavailable to us, so a 503, not a 500.
            if database is None:
                log_event("db_unavailable", level=logging.ERROR, stage="checkout", attempts=attempt)
            raise DatabaseUnavailableError(
                f"no pooled connection free within {budget_s} s"
            ) from None
        except DBAPIError as error:
            if stage == "position" and tracked is not None:
                # The write is done; only its position is unknown: this request's reads and
                # its caller's next ones go to the primary.
                tracked.written = UNKNOWN_POSITION
                return result
            aborted = _ABORTED_TO_RETRY.get(getattr(error.orig, "sqlstate", None) or "")
            # On the primary only: a replica's read cancelled by a recovery conflict (40001)
            # goes to the primary at once (`shared.replicas`).
            if aborted is not None and atomic and stage == "work" and engine is _engine:
                if time.monotonic() + delay > deadline:
                    raise
                log_event("db_retry", level=logging.WARNING, stage=stage, attempt=attempt,
                          reason=aborted)  # fmt: skip
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            refused = _refused(error) if stage == "connect" else None
            if refused is not None:
                if database is None:
                    log_event("db_unavailable", level=logging.ERROR, stage=stage,
                              attempts=attempt, retried=False, reason=refused)  # fmt: skip
                raise DatabaseUnavailableError(
                    f"database refused the connection: {refused}", refused=refused
                ) from None
            if not is_connection_failure(error):
                sqlstate = getattr(error.orig, "sqlstate", None)
                refusal = refused_write(sqlstate) if engine is _engine else None
                if refusal is None:
                    raise
                # Deterministic for the moment: a retry would be refused the same way.
                log_event("db_unavailable", level=logging.ERROR, stage=stage, attempts=attempt,
                          retried=False, sqlstate=sqlstate, reason=refusal)  # fmt: skip
                raise DatabaseUnavailableError(f"database refused the write: {refusal}") from None
            safe = (
                stage == "connect"
                or (atomic and stage == "work")
                or (idempotent and stage == "work")
                # Not after a statement of `run` work committed: running it again repeats that.
                or (stage == "work" and _server_ended_session(error) and answers.count == 0)
            )
            message = failure_reason(error.orig) if error.orig else ""
            now = time.monotonic()
            if not safe or now + delay > deadline:
                if database is None:
                    log_event(
                        "db_unavailable",
                        level=logging.ERROR,
                        stage=stage,
                        attempts=attempt,
                        retried=safe and attempt > 1,  # one attempt: out of budget at once
                        reason=message,
                    )
                unknown = stage == "commit" or not safe
                outcome = "outcome unknown" if unknown else "unreachable"
                raise DatabaseUnavailableError(
                    f"database {outcome} after {attempt} attempt(s) at {stage}: {message}",
                    outcome_unknown=unknown,
                ) from None
            log_event(
                "db_retry",
                level=logging.WARNING if database is None else logging.INFO,
                stage=stage,
                attempt=attempt,
                reason=message,
                **({} if database is None else {"database": database}),
            )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def _position(connection: Connection, sql: str) -> int:
    """Run `sql` (ending with the primary's WAL insert position) and return that position."""
    cursor = _execute_on(connection, sql, None)
    while cursor.nextset():
        pass  # the position is the last result
    row = cursor.fetchone()
    return int(row[0]) if row else UNKNOWN_POSITION


def _rollback_quietly(conn: Conn) -> None:
    """End a failed transaction so the pooled connection goes back clean; one that died is
    already invalidated and goes nowhere near the pool again."""
    connection = conn.connection
    if connection.invalidated:
        return
    try:
        conn.rollback()
    except (DBAPIError, psycopg.Error):
        connection.invalidate()


# What health says (it answers anyone): our own words; the log has the details.
UNREACHABLE = "Database unreachable"
REFUSED = "Database refused the connection - check DATABASE_URL (see the log)"
URL_REFUSED = "Database not properly configured - DATABASE_URL breaks a rule (see the log)"
READ_ONLY = "Database is read-only - writes are refused"


def get_database_health(*, budget_s: float | None = None) -> dict[str, Any]:
    """`{connected, responseTime}` (+ `error`), the original app's health shape; `budget_s`
    bounds the check (default DB_RETRY_BUDGET_S). A DATABASE_URL the core refuses is a failed
    check, logged (`db_url_refused`) with what it breaks, never its password. The one statement
    also asks whether a write would be refused as read-only (connected, with an `error`). On a
    server that stops answering, its statement waits no longer than the budget either, not the
    statement timeout (health's function timeout is shorter)."""
    started = time.perf_counter()
    budget = get_settings().db_retry_budget_s if budget_s is None else budget_s
    try:
        with round_trips_by(time.monotonic() + budget):
            read_only = _execute(
                lambda conn: conn.session.execute(text("SHOW transaction_read_only")).scalar_one(),
                atomic=False,
                idempotent=True,
                budget_s=budget,
            )
    except DatabaseUrlError as error:
        log_event("db_url_refused", level=logging.ERROR, reason=str(error))
        problem = URL_REFUSED
    except DatabaseUnavailableError as error:
        problem = REFUSED if error.refused is not None else UNREACHABLE
    except DBAPIError:
        problem = "Database query failed"
    else:
        elapsed = round((time.perf_counter() - started) * 1000)
        if read_only == "on":
            return {"connected": True, "responseTime": elapsed, "error": READ_ONLY}
        return {"connected": True, "responseTime": elapsed}
    elapsed = round((time.perf_counter() - started) * 1000)
    return {"connected": False, "responseTime": elapsed, "error": problem}


def is_database_connected() -> bool:
    """True when the health statement succeeds within the retry budget."""
    return bool(get_database_health()["connected"])
