"""Read routing: work declared read-only (`db.read`) goes to a replica that is fresh enough.

Imported only when DATABASE_READ_URL or ANALYTICS_DATABASE_URL is set (`shared.db.read`).

A read URL serves a read when its server, checked on the read's own connection:
- is named by a URL that keeps DATABASE_URL's rules (`shared.db_url`), else `url_refused`;
- is DATABASE_URL's database: its cluster, the same database and schema revision (asked once
  per connection, as it opens), else `other_database` (`identity_unknown` when either server
  could not say what it is);
- is in recovery (a promoted replica no longer follows the primary: `promoted`);
- has replayed the request's required position (`shared.db.Consistency`: the caller's token
  and this request's own writes), else `behind_token` (`unknown_position` when that position is
  unknown: a token that does not parse, a write whose position could not be read);
- is at most REPLICA_MAX_LAG_MS behind, else `lagging`. Lag is 0 while the WAL receiver is
  streaming and everything received is replayed (correct on an idle primary, where the last
  replayed commit's age only grows); with WAL waiting, it is the age of the last replayed
  commit, an upper bound.

A check is skipped while the last one still proves freshness: replay never goes back, so a
replica `lag` behind at `t` is at most `lag + (now - t)` behind now and has replayed at least
what it had then. A server that cannot be reached within REPLICA_RETRY_BUDGET_S is `down`;
after a refusal of its own (down, promoted, lagging) a URL rests for PAUSE_AFTER_S before it is
tried again, and a rebuilt or restarted server's dead connections are replaced by the retry
rules. A server that stops answering on an open connection is `down` as well: a check gives up
within the same budget, counted from when its connection is ready, the read's statements after
the statement timeout plus that budget (`db.BoundedConnection`). Every refusal reads from the
primary and logs `replica_fallback` with its reason; none is an error. ANALYTICS_DATABASE_URL
may point at the primary itself (a read-only role there): a server not in recovery is fresh by
definition for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from shared import db
from shared.config import get_settings
from shared.db import Conn
from shared.db_url import DatabaseUrlError
from shared.telemetry import log_event

T = TypeVar("T")

READ_URL = "DATABASE_READ_URL"
ANALYTICS_URL = "ANALYTICS_DATABASE_URL"
# A replica is an optimisation: waiting long for one that does not answer only delays a read
# the primary can serve now. A Neon replica waking from suspend answers within this.
REPLICA_RETRY_BUDGET_S = 2.0
# After a refusal for a reason of the replica's own, reads go straight to the primary for this
# long (no check, no connect attempt), then the replica is tried again. A request whose token
# the replica has not replayed yet says nothing about it for other requests.
PAUSE_AFTER_S = {
    "down": 10.0,
    "promoted": 10.0,
    "other_database": 10.0,
    "identity_unknown": 10.0,
    "url_refused": 10.0,
    "lagging": 1.0,
}

# A write in work declared read-only is a bug to surface, not a replica to avoid.
_READ_ONLY_VIOLATION = "25006"

# Whether a server is DATABASE_URL's database, asked once per connection as it opens: a physical
# replica keeps its primary's cluster (the system identifier) and holds all its databases, so the
# database and the schema revision (Alembic's) must be the same too. Each part only where the
# role may read it: a read-only login (docs/analytics.md) may not read the revision, and some
# managed services revoke EXECUTE on pg_control_system() from PUBLIC. What it may read is asked
# first: a statement naming a function or table the role may not read fails whole, however
# guarded (the privileges are checked before anything runs).
_READABLE = """
    SELECT current_database(),
           has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE'),
           coalesce(has_table_privilege(to_regclass('alembic_version'), 'SELECT'), false)
"""
_SYSTEM_IDENTIFIER = "(SELECT system_identifier FROM pg_control_system())::text"
_REVISION = "(SELECT max(version_num) FROM alembic_version)"
_IDENTITY_PARTS = ("system identifier", "database name", "schema revision")
# DATABASE_URL's answer to _identity, asked on the first routed read (and again after a server
# differed: the primary may have moved on, e.g. a migration the replica will replay).
_primary_identity: tuple[str | None, ...] | None = None

# One row, on the read's own connection: is it a replica, what it replayed, how far behind.
_CHECK = text(
    """
    SELECT pg_is_in_recovery(),
           pg_last_wal_replay_lsn() - '0/0'::pg_lsn,
           CASE
             WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn()
                  AND EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming')
               THEN 0
             ELSE (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())
                   * 1000)::bigint
           END
    """
)


class _Refused(Exception):
    """The replica may not serve this read; `reason` (and `detail`, if any) is logged."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Freshness:
    """What the last check of one read URL proved (monotonic clock)."""

    checked_at: float = 0.0
    lag_ms: float | None = None  # None: unknown (never checked, or not a replica)
    replayed: int = 0
    primary: bool = False  # the server is not in recovery (only acceptable for analytics)
    paused_until: float = 0.0
    paused_for: str = ""
    paused_detail: str | None = None


_freshness: dict[str, _Freshness] = {}
_lock = threading.Lock()


def read(
    work: Callable[[Conn], T], *, analytics: bool, snapshot: bool, at_least: int | None = None
) -> T:
    """`work` on the read URL that should serve it, else on the primary (logged); a replica
    serves it only once it has replayed the request's required position and `at_least`."""
    settings = get_settings()
    variable, url = READ_URL, settings.database_read_url
    if analytics and settings.analytics_database_url:
        variable, url = ANALYTICS_URL, settings.analytics_database_url
    if url is None:
        return db._execute(work, atomic=snapshot, idempotent=True)
    state = _state(variable)
    positions = [p for p in (db.required_position(), at_least) if p is not None]
    required = max(positions, default=None)
    max_lag = settings.replica_max_lag_ms
    now = time.monotonic()
    try:
        if required == db.UNKNOWN_POSITION:
            # A token that does not parse (or a write whose position is unknown): no replica
            # can be shown to have it, and no check is worth a round trip.
            raise _Refused("unknown_position")
        if now < state.paused_until:
            raise _Refused(state.paused_for, state.paused_detail)
        try:
            _primary()  # what each new connection is compared with (a primary outage is raised)
        except DBAPIError as error:
            # e.g. a statement timeout: no replica can be compared, but the primary can serve.
            unknown = f"DATABASE_URL's identity could not be read ({_failure(error.orig)})"
            raise _Refused("identity_unknown", unknown) from None
        accept_primary = variable == ANALYTICS_URL
        proven = _proven(state, required, max_lag, now, accept_primary=accept_primary)
        # No connect attempt outlasts the budget (`shared.db`): a standby that accepts the socket
        # but not the session (replay paused holding a catalog lock) costs this, not
        # DB_CONNECT_TIMEOUT_S.
        budget_s = min(settings.db_retry_budget_s, REPLICA_RETRY_BUDGET_S)
        try:
            engine = read_engine(variable, url)
        except DatabaseUrlError as error:  # DATABASE_URL's rules: its words name no secret
            raise _Refused("url_refused", str(error)) from None

        def check(conn: Conn) -> None:
            # A server that stopped answering on an open connection: the check ends within the
            # budget too (`db.BoundedConnection`), counted from now, its connection ready: the
            # wait for a connection (the pool, a slow connect) had a budget of its own.
            with db.round_trips_by(time.monotonic() + budget_s):
                _check(conn, state, required, max_lag, accept_primary=accept_primary)

        def checked(conn: Conn) -> T:
            if not proven and not snapshot:
                check(conn)  # on the read's own connection, just before it
            return work(conn)

        try:
            on_replica = partial(
                db._execute, idempotent=True, engine=engine, budget_s=budget_s, database=variable
            )
            if not proven and snapshot:
                # A snapshot's first statement may set its isolation: check before it begins.
                on_replica(check, atomic=False)
            return on_replica(checked, atomic=snapshot)
        except db.DatabaseUnavailableError as error:
            state.lag_ms = None
            raise _Refused("down", str(error)) from None
        except DBAPIError as error:
            # e.g. a query cancelled by a recovery conflict (40001): the primary has no such.
            if getattr(error.orig, "sqlstate", None) == _READ_ONLY_VIOLATION:
                raise
            raise _Refused(f"failed:{_failure(error.orig)}") from None
    except _Refused as refusal:
        pause = PAUSE_AFTER_S.get(refusal.reason)
        if pause is not None and now >= state.paused_until:
            state.paused_until = time.monotonic() + pause
            state.paused_for = refusal.reason
            state.paused_detail = refusal.detail
        detail = {} if refusal.detail is None else {"detail": refusal.detail}
        log_event(
            "replica_fallback",
            level=logging.WARNING,
            database=variable,
            reason=refusal.reason,
            **detail,
        )
    return db._execute(work, atomic=snapshot, idempotent=True)


def read_engine(variable: str, url: str) -> Engine:
    """The engine of the read URL in `variable`: each connection is checked to be DATABASE_URL's
    database as it opens, and the read's own statements wait no longer than the server's
    statement timeout would let them run, plus the replica's budget."""
    settings = get_settings()
    budget_s = min(settings.db_retry_budget_s, REPLICA_RETRY_BUDGET_S)
    return db.get_read_engine(
        variable,
        url,
        longest_round_trip_s=settings.db_statement_timeout_ms / 1000 + budget_s,
        verify=_verify,
    )


def _primary() -> tuple[str | None, ...]:
    """DATABASE_URL's answer to _IDENTITY (asked once, then kept)."""
    global _primary_identity
    if _primary_identity is None:
        _primary_identity = db._execute(
            lambda conn: _identity(lambda sql: conn.connection.exec_driver_sql(sql).one()),
            atomic=False,
            idempotent=True,
        )
    return _primary_identity


def _identity(one: Callable[[str], Sequence[Any] | None]) -> tuple[str | None, ...]:
    """(system identifier, database name, schema revision), each None where the role may not
    read it, through `one`, which runs a statement and returns its row."""
    database, identifier_readable, revision_readable = one(_READABLE) or (None, False, False)
    if not (identifier_readable or revision_readable):
        return None, database, None
    parts = (
        _SYSTEM_IDENTIFIER if identifier_readable else "NULL",
        _REVISION if revision_readable else "NULL",
    )
    system_identifier, revision = one(f"SELECT {', '.join(parts)}") or (None, None)
    return system_identifier, database, revision


def _failure(error: BaseException | None) -> str:
    """A failed statement's SQLSTATE (else its error's class): what a log may say of it."""
    return getattr(error, "sqlstate", None) or type(error).__name__


def _verify(connection: psycopg.Connection[Any]) -> None:
    """A read URL's new connection: refused (`other_database`) unless its server is DATABASE_URL's
    database, or `identity_unknown` when it could not say. The detail names what differs, never
    a value (a database name is no log's)."""
    global _primary_identity
    try:
        found = _identity(lambda sql: connection.execute(sql).fetchone())
    except psycopg.Error as error:
        if connection.broken or connection.closed:
            raise  # the connection failed: the retry rules, then `down`
        # e.g. a statement timeout: it cannot be shown to be DATABASE_URL's database.
        detail = f"its identity could not be read ({_failure(error)})"
        raise _Refused("identity_unknown", detail) from None
    expected = _primary()
    differs = [
        part
        for part, mine, primary in zip(_IDENTITY_PARTS, found, expected, strict=True)
        if mine != primary and None not in (mine, primary)
    ]
    if differs:
        _primary_identity = None  # asked again next time: the primary may have moved on
        verb = "differs" if len(differs) == 1 else "differ"
        detail = f"not DATABASE_URL's database: its {' and '.join(differs)} {verb}"
        raise _Refused("other_database", detail)


def _state(variable: str) -> _Freshness:
    state = _freshness.get(variable)
    if state is None:
        with _lock:
            state = _freshness.setdefault(variable, _Freshness())
    return state


def _proven(
    state: _Freshness, required: int | None, max_lag: int, now: float, *, accept_primary: bool
) -> bool:
    """Whether the last check still proves this read may use the replica (no query needed)."""
    if state.primary:
        return accept_primary
    if state.lag_ms is None:
        return False
    if required is not None and state.replayed < required:
        return False
    return state.lag_ms + (now - state.checked_at) * 1000 <= max_lag


def _check(
    conn: Conn, state: _Freshness, required: int | None, max_lag: int, *, accept_primary: bool
) -> None:
    """Check the server behind `conn`; raise `_Refused` unless it may serve this read."""
    started = time.monotonic()
    in_recovery, replayed, lag_ms = conn.connection.execute(_CHECK).one()
    state.checked_at = started
    state.primary = not in_recovery
    if not in_recovery:
        state.lag_ms = None
        if accept_primary:
            return
        raise _Refused("promoted")
    state.replayed = int(replayed or 0)
    state.lag_ms = None if lag_ms is None else float(lag_ms)
    if required is not None and state.replayed < required:
        raise _Refused("behind_token")
    if state.lag_ms is None or state.lag_ms > max_lag:
        raise _Refused("lagging")


def reset() -> None:
    """Forget every read URL's freshness and the primary's identity (tests; settings changes)."""
    global _primary_identity
    with _lock:
        _freshness.clear()
        _primary_identity = None
