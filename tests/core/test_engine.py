"""The engine's promises on a real server: warm reuse, dead connections, retries, timeouts, logs."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event, make_url, pool, text
from sqlalchemy.exc import OperationalError, SAWarning

from shared import config, db
from shared.db_url import parse_database_url
from shared.models.users import User
from shared.repositories import users
from tests.support.tls_server import self_signed, tls_server

pytestmark = pytest.mark.usefixtures("db_env")


@pytest.fixture
def app_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A unique application_name, so pg_stat_activity shows exactly this engine's connections."""
    name = f"kf-test-{secrets.token_hex(4)}"
    monkeypatch.setenv("DB_APPLICATION_NAME", name)
    config.get_settings.cache_clear()
    db.dispose_engine()
    yield name


def reconfigure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config.get_settings.cache_clear()
    db.dispose_engine()


def connects(counter: list[int]) -> None:
    event.listen(db.get_engine(), "connect", lambda *args: counter.append(1))


def server_pids(admin: psycopg.Connection[Any], app_name: str) -> list[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,)
    ).fetchall()
    return [row[0] for row in rows]


def terminate(admin: psycopg.Connection[Any], app_name: str) -> None:
    """Kill this engine's server connections and wait (bounded) until the server lets them go."""
    for pid in server_pids(admin, app_name):
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 10
    while server_pids(admin, app_name):
        assert time.monotonic() < deadline, "terminated backends did not exit"
        time.sleep(0.01)


def json_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [e for e in events if e["event"] == name]


def test_two_hundred_operations_reuse_one_connection_without_pings(
    app_name: str, admin_conn: psycopg.Connection[Any]
) -> None:
    opened: list[int] = []
    sent: list[str] = []
    connects(opened)
    event.listen(db.get_engine(), "before_cursor_execute", lambda *a: sent.append(a[2]))
    db.run(lambda conn: users.create(conn, "warm", "warm@example.com"))
    for _ in range(199):
        db.run(lambda conn: users.get(conn, "warm"), idempotent=True)
    assert len(opened) == 1
    assert len(sent) == 200  # one statement per operation: no BEGIN, no ping on a hot connection
    assert len(server_pids(admin_conn, app_name)) == 1


def test_a_new_engine_sends_one_statement_of_its_own_before_the_first_query(
    db_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy initialises its dialect on an engine's first connection. Stock: five
    statements, each a round trip on a new container's first request (version, schema,
    isolation level, standard_conforming_strings, hstore). Ours: one, and the same answers."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def recorded(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recorded)
    assert db.run(lambda conn: users.get(conn, "user_nobody"), idempotent=True) is None
    assert len(sent) == 2, sent
    assert "current_schema()" in sent[0] and "FROM users" in sent[1]

    stock = create_engine(parse_database_url(db_env).sqlalchemy_url, poolclass=pool.NullPool)
    with stock.connect():
        pass
    assert len(sent) == 2 + 5  # what the stock dialect asks for the same answers
    ours = db.get_engine().dialect
    for attribute in (
        "server_version_info",
        "default_schema_name",
        "default_isolation_level",
        "_backslash_escapes",
        "supports_identity_columns",
        "max_identifier_length",
    ):
        assert getattr(ours, attribute) == getattr(stock.dialect, attribute), attribute
    stock.dispose()


def test_the_engine_caches_compiled_statements() -> None:
    """SQLAlchemy compiles anew each time for a dialect class that does not declare caching."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        for _ in range(2):
            db.run(lambda conn: conn.session.get(User, "user_nobody"), idempotent=True)
    assert len(db.get_engine()._compiled_cache) > 0


def test_read_after_the_server_killed_the_connection_succeeds(
    app_name: str, admin_conn: psycopg.Connection[Any]
) -> None:
    opened: list[int] = []
    connects(opened)
    db.run(lambda conn: users.create(conn, "survivor", "survivor@example.com"))
    terminate(admin_conn, app_name)
    user = db.run(lambda conn: users.get(conn, "survivor"), idempotent=True)
    assert user is not None and user.id == "survivor"


# Direct lane only: behind PgBouncer a killed server connection is PgBouncer's to replace.
@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_idle_connection_is_checked_and_replaced_before_a_write(
    app_name: str,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconfigure(monkeypatch, DB_IDLE_CHECK_S="0")
    db.run(lambda conn: users.create(conn, "idle", "idle@example.com"))
    terminate(admin_conn, app_name)
    caplog.set_level(logging.INFO, logger="keyflash")
    usage = db.run(lambda conn: users.increment_usage(conn, "idle", 1))  # not idempotent: no retry
    assert usage.this_month == 1
    assert json_events(caplog, "db_idle_connection_replaced")
    assert not json_events(caplog, "db_retry")


# Direct lane only: behind PgBouncer a killed server connection is PgBouncer's to replace.
@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_run_work_is_retried_when_the_server_ended_its_session_before_its_first_statement(
    app_name: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reconfigure(monkeypatch, DB_IDLE_CHECK_S="3600")  # no ping: the write meets the ended session
    db.run(lambda conn: users.create(conn, "ended", "ended@example.com"))
    terminate(admin_conn, app_name)
    usage = db.run(lambda conn: users.increment_usage(conn, "ended", 1))  # not idempotent
    assert usage.this_month == 1


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_run_work_is_not_run_again_after_one_of_its_statements_committed(
    app_name: str, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run` commits each statement: the server ending the session before the second statement
    must not run the first again (it would count the usage twice)."""
    reconfigure(monkeypatch, DB_IDLE_CHECK_S="3600")
    db.run(lambda conn: users.create(conn, "twice", "twice@example.com"))
    attempts: list[int] = []

    def work(conn: db.Conn) -> None:
        attempts.append(1)
        users.increment_usage(conn, "twice", 1)
        terminate(admin_conn, app_name)
        conn.connection.execute(text("SELECT 1"))  # the server ended this session: 57P01

    with pytest.raises(db.DatabaseUnavailableError) as raised:
        db.run(work)
    assert raised.value.outcome_unknown
    assert attempts == [1]
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth" FROM users WHERE id = %s', ("twice",)
    ).fetchone()
    assert row == (1,)


def test_transaction_is_retried_whole_when_its_connection_dies_before_commit(
    admin_conn: psycopg.Connection[Any],
) -> None:
    db.run(lambda conn: users.create(conn, "tx", "tx@example.com"))
    attempts: list[int] = []

    def work(conn: Any) -> None:
        attempts.append(1)
        users.increment_usage(conn, "tx", 5)
        if len(attempts) == 1:
            pid = conn.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.session.execute(text("SELECT 1"))  # fails: the server ended this session

    db.transaction(work)
    assert len(attempts) == 2
    row = admin_conn.execute(
        'SELECT "keywordSearchesThisMonth" FROM users WHERE id = %s', ("tx",)
    ).fetchone()
    assert row == (5,)  # the first attempt rolled back, the second applied once


@pytest.mark.deadlock
def test_a_transaction_the_server_aborts_to_break_a_deadlock_is_run_again(
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another session holds row a and waits for row b, which our transaction holds; then ours
    asks for a. The server aborts ours and the whole transaction runs again once the other
    commits. It was a 500 wherever it happened (an erasure against a retried Stripe event of
    the same account).

    The victim is whichever waiter's deadlock check finds the cycle first, and each waiter
    checks once, `deadlock_timeout` after it starts waiting. So the other session waits first,
    with a check far later than ours, and ours closes the cycle: ours is always the one aborted,
    however slow the machine."""
    for user_id in ("dl_a", "dl_b"):
        db.run(lambda conn, user_id=user_id: users.create(conn, user_id, f"{user_id}@example.com"))
    caplog.set_level(logging.INFO, logger="keyflash")
    other = psycopg.connect(direct_database_url)
    other.execute("SET deadlock_timeout = '10min'")
    other.execute("SELECT id FROM users WHERE id = 'dl_a' FOR UPDATE")
    waiter = other.info.backend_pid
    b_held = threading.Event()
    failures: list[BaseException] = []

    def other_side() -> None:
        try:
            assert b_held.wait(timeout=30), "our transaction never took row b"
            other.execute(
                """UPDATE users SET "keywordSearchesThisMonth" = "keywordSearchesThisMonth" + 10
                   WHERE id = 'dl_b'"""
            )  # waits for row b until the server aborts our transaction
            other.commit()
        except BaseException as error:
            failures.append(error)
            other.rollback()

    def wait_until_the_other_waits_for(holder: int) -> None:
        deadline = time.monotonic() + 30
        while not admin_conn.execute(
            "SELECT %s = ANY(pg_blocking_pids(%s))", (holder, waiter)
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the other session never waited for row b"
            time.sleep(0.01)

    attempts: list[int] = []

    def work(conn: Any) -> None:
        attempts.append(1)
        users.increment_usage(conn, "dl_b", 1)
        if len(attempts) == 1:
            b_held.set()
            wait_until_the_other_waits_for(
                conn.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            )
        users.increment_usage(conn, "dl_a", 1)  # closes the cycle: ours is the check that runs

    thread = threading.Thread(target=other_side)
    thread.start()
    try:
        db.transaction(work)
    finally:
        b_held.set()
        thread.join(timeout=60)
        other.close()
    assert not failures, failures
    assert len(attempts) == 2
    counts = admin_conn.execute(
        """SELECT id, "keywordSearchesThisMonth" FROM users WHERE id IN ('dl_a', 'dl_b')
           ORDER BY id"""
    ).fetchall()
    assert counts == [("dl_a", 1), ("dl_b", 11)]  # the aborted attempt left nothing
    assert [e["reason"] for e in json_events(caplog, "db_retry")] == ["deadlock detected"]


def test_statement_timeout_is_not_mistaken_for_a_connection_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reconfigure(monkeypatch, DB_STATEMENT_TIMEOUT_MS="100")
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(OperationalError, match="statement timeout") as raised:
        db.transaction(lambda conn: conn.session.execute(text("SELECT pg_sleep(5)")))
    assert not json_events(caplog, "db_retry")
    # Raised as it is (a cron handles it); a request answers it 503 (tests/http).
    assert db.cancelled_statement(raised.value) == "statement cancelled (57014)"
    assert (
        db.run(lambda conn: conn.session.execute(text("SELECT 1")).scalar_one(), idempotent=True)
        == 1
    )


# Direct lane only: through a pooler, single statements get the role's statement_timeout.
@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_statement_timeout_applies_to_single_statements_on_direct_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reconfigure(monkeypatch, DB_STATEMENT_TIMEOUT_MS="100")
    with pytest.raises(OperationalError, match="statement timeout"):
        db.run(lambda conn: conn.session.execute(text("SELECT pg_sleep(5)")))


def test_a_transaction_with_its_own_longer_statement_timeout_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client gives up on a silent server after the statement timeout in force plus a
    grace (`db.BoundedConnection`): for a transaction that sets a longer one (a cron's report
    refresh), that is its own, not DB_STATEMENT_TIMEOUT_MS; the engine's bound holds again
    after it."""
    reconfigure(monkeypatch, DB_STATEMENT_TIMEOUT_MS="100")
    monkeypatch.setattr(db, "STATEMENT_GRACE_S", 0.1)  # the engine's bound: 0.2 s

    def slow(conn: db.Conn) -> int:
        return int(conn.session.execute(text("SELECT 1 FROM pg_sleep(0.5)")).scalar_one())

    assert db.transaction(slow, statement_timeout_ms=10_000) == 1
    with db.get_engine().connect() as connection:
        driver = connection.connection.dbapi_connection
    assert isinstance(driver, db.BoundedConnection)
    assert driver.longest_round_trip_s == pytest.approx(0.2)


def test_unreachable_database_fails_within_budget_without_leaking_the_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe closes
    reconfigure(
        monkeypatch,
        DATABASE_URL=f"postgresql://app:hunter2-secret@127.0.0.1:{port}/keyflash",
        DB_RETRY_BUDGET_S="0.5",
        DB_CONNECT_TIMEOUT_S="2",
    )
    caplog.set_level(logging.INFO, logger="keyflash")
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    assert time.monotonic() - started < 5  # the budget bounds it; generous for slow machines
    assert len(json_events(caplog, "db_retry")) >= 1
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text
    health = db.get_database_health()
    assert health["connected"] is False and health["error"] == "Database unreachable"
    assert isinstance(health["responseTime"], int)
    assert db.is_database_connected() is False


def fails_at_once(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> str:
    """Connect to `url` with a 30 s retry budget; expect one attempt and return the reason.

    Not retried is the promise here; whether the caller then sees a 503 or a 500 is another."""
    reconfigure(monkeypatch, DATABASE_URL=url, DB_RETRY_BUDGET_S="30", DB_CONNECT_TIMEOUT_S="5")
    caplog.set_level(logging.INFO, logger="keyflash")
    started = time.monotonic()
    with pytest.raises((OperationalError, db.DatabaseUnavailableError)) as caught:
        db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    assert time.monotonic() - started < 5, "one attempt, not the 30 s retry budget"
    assert json_events(caplog, "db_retry") == []
    return str(caught.value)


# Direct lane only: the pooled lane's URL already carries parameters of our own.
@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
@pytest.mark.parametrize(
    "option", ["channel_binding=requre", "target_session_attrs=primary-ish", "keepalives=yes"]
)
def test_an_invalid_connection_option_value_fails_at_once(
    db_env: str, option: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq refuses the value before connecting: the same on every attempt, so no outage."""
    separator = "&" if "?" in db_env else "?"
    reason = fails_at_once(f"{db_env}{separator}{option}", monkeypatch, caplog)
    assert "value" in reason


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
def test_a_certificate_libpq_refuses_fails_at_once(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """verify-full: the server's certificate names another host; verify-ca: another
    authority signed it. Neither changes on the next attempt."""
    with tls_server("db.other.example", tmp_path) as (port, certificate):
        root = certificate if mode == "verify-full" else self_signed("ca.example", tmp_path)[0]
        url = f"postgresql://app:pw@127.0.0.1:{port}/keyflash?sslmode={mode}&sslrootcert={root}"
        reason = fails_at_once(url, monkeypatch, caplog)
    expected = "does not match host name" if mode == "verify-full" else "certificate verify failed"
    assert expected in reason


def test_a_password_with_an_unencoded_at_never_reaches_the_driver_or_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """libpq would end the password at its first '@' and try the host `Qz9-Vb1@127.0.0.1`,
    logging that tail in every retry: the settings refuse the URL before anything connects."""
    reconfigure(
        monkeypatch,
        DATABASE_URL="postgresql://alex:Kx7@Qz9-Vb1@127.0.0.1:5432/keyflash",
        DB_RETRY_BUDGET_S="1",
    )
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(config.ConfigurationError, match="DATABASE_URL is invalid") as caught:
        db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    assert json_events(caplog, "db_retry") == []
    assert "Qz9" not in str(caught.value) and "Qz9" not in caplog.text


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
@pytest.mark.parametrize("failure", ["unreachable", "no such database"])
def test_connecting_ahead_tries_once_and_leaves_a_failure_to_the_first_request(
    db_env: str, failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """SnapStart's INIT connects ahead; a database it cannot use then must not fail the publish,
    nor hold it for the retry budget, nor log the password."""
    if failure == "unreachable":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # nothing listens here once the probe closes
        url = f"postgresql://app:hunter2-secret@127.0.0.1:{port}/keyflash"
    else:  # the real server, which refuses: configuration no retry mends
        url = db_env.rsplit("/", 1)[0] + "/kf_missing_database"
    reconfigure(monkeypatch, DATABASE_URL=url, DB_RETRY_BUDGET_S="30", DB_CONNECT_TIMEOUT_S="2")
    caplog.set_level(logging.INFO, logger="keyflash")
    started = time.monotonic()
    assert db.connect_ahead() is False
    assert time.monotonic() - started < 5, "one attempt, not the 30 s retry budget"
    assert json_events(caplog, "db_retry") == []
    # Reported as what it was, one attempt: not `retried: true` (tester s52t3).
    assert [e["retried"] for e in json_events(caplog, "db_unavailable")] == [False]
    [failed] = json_events(caplog, "db_connect_ahead_failed")
    expected = "Connection refused" if failure == "unreachable" else 'database "…" does not exist'
    assert expected in failed["reason"], failed
    for secret in ("hunter2", "kf_missing_database", "127.0.0.1"):
        assert secret not in caplog.text


def test_connecting_ahead_leaves_a_closed_pool_one_statement_per_query() -> None:
    """What SnapStart's INIT and before-snapshot hook do: the dialect learns the server once,
    the connection is closed, and the next query sends only itself."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def recorded(cursor: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(query))
        return execute(cursor, query, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(psycopg.Cursor, "execute", recorded)
        assert db.connect_ahead() is True
        assert len(sent) == 1 and "current_schema()" in sent[0]
        db.close_connections()
        assert db.run(lambda conn: users.get(conn, "user_nobody"), idempotent=True) is None
    assert len(sent) == 2 and "FROM users" in sent[1]


def test_health_reports_connected_and_response_time() -> None:
    health = db.get_database_health()
    assert health["connected"] is True and "error" not in health
    assert isinstance(health["responseTime"], int) and health["responseTime"] >= 0
    assert db.is_database_connected() is True


def test_slow_queries_are_logged_with_truncated_sql_and_no_parameters(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a threshold no `SELECT 1` reaches on a loaded machine (20 ms did, once)
    reconfigure(monkeypatch, SLOW_QUERY_MS="500")
    caplog.set_level(logging.INFO, logger="keyflash")
    padding = ", ".join(f"'{i}' AS c{i}" for i in range(60))
    statement = text(f"SELECT pg_sleep(0.6), CAST(:secret AS text), {padding}")
    db.run(
        lambda conn: conn.session.execute(statement, {"secret": "p4ssw0rd-value"}), idempotent=True
    )
    db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    slow = json_events(caplog, "slow_query")
    assert len(slow) == 1
    assert slow[0]["sql"].startswith("SELECT pg_sleep(0.6)") and len(slow[0]["sql"]) == 200
    assert slow[0]["durationMs"] >= 500 and slow[0]["thresholdMs"] == 500
    assert "p4ssw0rd-value" not in caplog.text


def test_repeated_statements_work_through_the_pooler_lane() -> None:
    """psycopg prepares a statement on its 5th run; through PgBouncer 1.18 that must be off."""
    db.run(lambda conn: users.create(conn, "prep", "prep@example.com"))
    for _ in range(20):
        assert db.run(lambda conn: users.get(conn, "prep"), idempotent=True) is not None


def test_a_pool_with_no_free_connection_is_unavailable_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More callers than DB_POOL_SIZE (a threaded dev server): the wait ends as a 503's error."""
    reconfigure(monkeypatch, DB_POOL_SIZE="1", DB_RETRY_BUDGET_S="0.2")
    held = db.get_engine().connect()  # the only connection, checked out elsewhere
    with held, pytest.raises(db.DatabaseUnavailableError, match="no pooled connection free"):
        db.run(lambda conn: conn.session.execute(text("SELECT 1")).scalar_one(), idempotent=True)
    assert (
        db.run(lambda conn: conn.session.execute(text("SELECT 1")).scalar_one(), idempotent=True)
        == 1
    )


@pytest.mark.parametrize(
    "message",
    [
        "connection failed: connection to server at 127.0.0.1 failed: FATAL:  terminating "
        "connection due to administrator command",
        "consuming input failed: could not receive data from server: Connection reset by peer",
        "SSL SYSCALL error: EOF detected",
    ],
)
def test_a_driver_error_without_sqlstate_is_a_connection_failure(message: str) -> None:
    """libpq's own failures carry no SQLSTATE (whatever their wording); statements' errors do."""
    error = OperationalError("SELECT 1", {}, psycopg.OperationalError(message))
    assert db.is_connection_failure(error)
    assert not db.is_connection_failure(
        OperationalError("SELECT 1", {}, psycopg.errors.QueryCanceled("canceling statement"))
    )


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_a_refused_connection_is_unavailable_at_once_without_retrying(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, direct_database_url: str
) -> None:
    """A server that refuses the connection (here a database that does not exist) is
    configuration no retry mends, yet the database is unavailable to us: one attempt, then
    `DatabaseUnavailableError` (a 503), which says what the server refused without the names it
    quotes."""
    missing = direct_database_url.rsplit("/", 1)[0] + "/kf_missing"
    reconfigure(monkeypatch, DATABASE_URL=missing, DB_RETRY_BUDGET_S="30")
    caplog.set_level(logging.INFO, logger="keyflash")
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
    assert caught.value.refused == 'database "…" does not exist'
    assert json_events(caplog, "db_retry") == []
    [unavailable] = json_events(caplog, "db_unavailable")
    assert (unavailable["stage"], unavailable["attempts"], unavailable["retried"]) == (
        "connect",
        1,
        False,
    )
    assert unavailable["reason"] == 'database "…" does not exist'
    assert "kf_missing" not in caplog.text and "kf_missing" not in str(caught.value)
    health = db.get_database_health()
    assert health["connected"] is False
    assert health["error"] == ("Database refused the connection - check DATABASE_URL (see the log)")


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (  # PostgreSQL
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'password authentication failed for user "alex"',
            'password authentication failed for user "…"',
        ),
        (  # Neon's proxy quotes with single quotes
            'connection failed: connection to server at "ep-x.neon.tech" (10.0.0.5), port '
            "5432 failed: ERROR:  password authentication failed for user 'alex'",
            'password authentication failed for user "…"',
        ),
        (  # PgBouncer names no one
            'connection failed: connection to server at "127.0.0.1", port 6432 failed: FATAL:  '
            "password authentication failed",
            "password authentication failed",
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'no pg_hba.conf entry for host "10.0.0.9", user "alex", database "neondb", no '
            "encryption",
            'no pg_hba.conf entry for host "…", user "…", database "…", no encryption',
        ),
        (  # libpq's own, before any server spoke
            'connection is bad: invalid sslmode value: "bogus"',
            'invalid sslmode value: "…"',
        ),
        (  # an apostrophe in a word opens no quote: it paired with the next quote and showed both
            'connection failed: connection to server at "ep-x.neon.tech", port 5432 failed: '
            "ERROR:  couldn't find endpoint 'ep-cool-123' for user 'alex'",
            'couldn\'t find endpoint "…" for user "…"',
        ),
        (  # PostgreSQL quotes a name without escaping the quotes inside it
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'no pg_hba.conf entry for host "10.0.0.9", user "al"ex", database "k"f", no '
            "encryption",
            'no pg_hba.conf entry for host "…", user "…", database "…", no encryption',
        ),
        (  # a proxy's unquoted form
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            "role alice smith does not exist",
            "role … does not exist",
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            "role ali:ce does not exist",
            "role … does not exist",
        ),
        (  # a quote and a space inside the name
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'role "a" b" does not exist',
            'role "…" does not exist',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'password authentication failed for user "a" b"',
            'password authentication failed for user "…"',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            "user alice does not exist, sorry",
            "user … does not exist, sorry",
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'role "a" b" is not permitted to log in',
            'role "…" is not permitted to log in',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'too many connections for role "a" b"',
            'too many connections for role "…"',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'permission denied for database "a" b"',
            'permission denied for database "…"',
        ),
        (
            'connection failed: connection to server at "10.0.0.5", port 5432 failed: FATAL:  '
            'no pg_hba.conf entry for host "10.0.0.9", user "a" b", database "k f", no '
            "encryption",
            'no pg_hba.conf entry for host "…", user "…", database "…", no encryption',
        ),
    ],
)
def test_a_refusal_is_told_without_the_names_it_quotes(message: str, reason: str) -> None:
    assert db.failure_reason(psycopg.OperationalError(message)) == reason


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_a_connect_attempt_waits_no_longer_than_the_retry_budget_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that accepts TCP and never answers (a hung compute, a firewall dropping packets
    after the handshake): each attempt waits at most what is left of the budget (at least
    psycopg's least connect timeout), never the whole DB_CONNECT_TIMEOUT_S past it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nothing ever reads or answers
        port = silent.getsockname()[1]
        reconfigure(
            monkeypatch,
            DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{port}/keyflash",
            DB_RETRY_BUDGET_S="1",
            DB_CONNECT_TIMEOUT_S="60",
        )
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailableError):
            db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
        # The bound the settings promise, plus a margin for a loaded machine; 60 s without it.
        assert time.monotonic() - started < 1 + db.CONNECT_TIMEOUT_LEAST_S + 5


@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_one_connect_waits_no_longer_than_the_budget_across_all_its_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host name with several addresses (Neon's often have a few), each accepting TCP and
    never answering: psycopg gives each address its own connect timeout, yet one connect waits
    at most what is left of the budget in all (its last attempt at least psycopg's least)."""
    addresses = [f"127.0.0.{n}" for n in range(1, 7)]  # libpq's multi-host list: one attempt each
    with contextlib.ExitStack() as stack:
        ports = []
        for address in addresses:
            silent = stack.enter_context(socket.socket())
            silent.bind((address, 0))
            silent.listen(16)  # the kernel completes handshakes; nothing ever reads or answers
            ports.append(str(silent.getsockname()[1]))
        reconfigure(
            monkeypatch,
            DATABASE_URL=(
                f"postgresql://app:pw@/keyflash?host={','.join(addresses)}&port={','.join(ports)}"
            ),
            DB_RETRY_BUDGET_S="2",
            DB_CONNECT_TIMEOUT_S="60",
        )
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailableError):
            db.run(lambda conn: conn.session.execute(text("SELECT 1")), idempotent=True)
        # The bound the settings promise, plus a margin for a loaded machine; the budget (at
        # least psycopg's least) once per address without it.
        assert time.monotonic() - started < 2 + db.CONNECT_TIMEOUT_LEAST_S + 5


def test_a_connect_goes_on_to_the_next_address_when_one_fails(
    monkeypatch: pytest.MonkeyPatch, direct_database_url: str, tmp_path: Path
) -> None:
    """The first address fails at once (a socket directory with no server), the next serves."""
    url = make_url(direct_database_url)
    reconfigure(
        monkeypatch,
        DATABASE_URL=(
            f"postgresql://{url.username}:{url.password}@/{url.database}"
            f"?host={tmp_path},{url.host}&port={url.port},{url.port}"
        ),
    )
    assert (
        db.run(lambda conn: conn.session.execute(text("SELECT 1")).scalar_one(), idempotent=True)
        == 1
    )
