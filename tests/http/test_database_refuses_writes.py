"""The database refusing writes is an outage of the data store, not a bug (docs/core.md#the-engine).

A read-only database (SQLSTATE 25006: a Neon read replica or a compute in a read-only state,
`default_transaction_read_only`) and insufficient resources (class 53: Neon's project size
limit is 53100 `disk_full`) answer a write the 503 envelope with `Retry-After`, at once (a write
refused is not retried), log why, and count nothing: no keywords charged, no row stored. Reads
go on. On real PostgreSQL, both lanes: read-only through `ALTER DATABASE`, the size limit raised
by a trigger with Neon's own words.

A statement the server cancels for its statement timeout (57014) is the server refusing work
for now too: a write waiting on a row another writer of the shared database (the Prisma app's
transaction, psql) holds past the timeout answers the same 503, is not retried, and counts
nothing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from functions import health
from shared import config, db
from tests.support.http import Caller
from tests.support.processes import RowLock

SEARCH = {"name": "x", "searchParams": {"keywords": ["a"], "location": "US", "matchType": "phrase"}}
KEYWORDS = {"keywords": ["refused write"], "matchType": "phrase", "location": "US"}
NEON_SIZE_LIMIT = "could not extend file because project size limit (512 MB) has been exceeded"


def user_id() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def end_other_sessions(admin: psycopg.Connection[Any]) -> None:
    """End every other session of the database (PgBouncer's server connections too), so the
    next ones start with its new defaults; waits until the server has let them go."""
    others = (
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    admin.execute(f"SELECT pg_terminate_backend(pid) FROM ({others}) AS s")
    deadline = time.monotonic() + 10
    while admin.execute(others).fetchone() is not None:
        assert time.monotonic() < deadline, "terminated sessions did not exit"
    db.dispose_engine()


@contextmanager
def read_only(admin: psycopg.Connection[Any]) -> Iterator[None]:
    """The test database read-only for every new session, as a Neon replica answers writes."""
    name = sql.Identifier(admin.info.dbname)
    admin.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name))
    end_other_sessions(admin)
    try:
        yield
    finally:
        admin.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name))
        end_other_sessions(admin)


@contextmanager
def size_limit(admin: psycopg.Connection[Any], *writes: str) -> Iterator[None]:
    """Neon's project size limit (53100) on each of `writes` (`"INSERT ON search_history"`)."""
    admin.execute(
        "CREATE FUNCTION kf_size_limit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION '{NEON_SIZE_LIMIT}' USING ERRCODE = '53100'; END $$"
    )
    for n, write in enumerate(writes):
        event, table = write.split(" ON ")
        admin.execute(
            f"CREATE TRIGGER kf_size_limit_{n} BEFORE {event} ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION kf_size_limit()"
        )
    try:
        yield
    finally:
        admin.execute("DROP FUNCTION kf_size_limit() CASCADE")


def core_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in events if event["event"] == name]


def assert_unavailable(answer: Any) -> None:
    assert answer.status == 503, answer.text
    assert answer.headers["retry-after"] == "60"
    assert answer.json["statusCode"] == 503
    assert answer.json["error"] == "Service Unavailable"


def assert_refused_once(caplog: pytest.LogCaptureFixture, sqlstate: str, refusals: int) -> None:
    """Each write refused was logged with why, and none was tried twice."""
    unavailable = core_events(caplog, "db_unavailable")
    assert len(unavailable) == refusals, unavailable
    assert {(e["retried"], e["sqlstate"]) for e in unavailable} == {(False, sqlstate)}
    assert core_events(caplog, "db_retry") == []
    failed = core_events(caplog, "request_failed")
    assert {e.get("reason") for e in failed} == {"database_unavailable"}, failed  # no 500


def counters(admin: psycopg.Connection[Any], user: str) -> tuple[Any, ...] | None:
    return admin.execute(
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal",'
        ' (SELECT count(*) FROM keyword_reservations WHERE "userId" = users.id),'
        ' (SELECT count(*) FROM search_history WHERE "userId" = users.id),'
        ' (SELECT count(*) FROM saved_searches WHERE "userId" = users.id)'
        " FROM users WHERE id = %s",
        (user,),
    ).fetchone()


def usage_rows(admin: psycopg.Connection[Any], user: str) -> list[tuple[Any, ...]]:
    return admin.execute(
        'SELECT endpoint, method, "statusCode" FROM api_usage WHERE "userId" = %s ORDER BY 1, 2',
        (user,),
    ).fetchall()


def test_writes_to_a_read_only_database_answer_503_and_reads_go_on(
    api_env: Any, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    call = Caller("lambda_v2", api_env)
    known, new = user_id(), user_id()
    assert call("searches", "POST", "/api/searches", user=known, json_body=SEARCH).status == 201
    before = counters(admin_conn, known)
    with read_only(admin_conn):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="keyflash")
        assert_unavailable(call("searches", "POST", "/api/searches", user=known, json_body=SEARCH))
        assert_unavailable(
            call("keywords", "POST", "/api/keywords", user=known, json_body=KEYWORDS)
        )
        assert_unavailable(call("me", "GET", "/api/me", user=new))  # its first call writes its row
        assert_refused_once(caplog, "25006", refusals=3)
        assert "read-only" in core_events(caplog, "db_unavailable")[0]["reason"]
        listed = call("searches", "GET", "/api/searches", user=known)
        assert listed.status == 200, listed.text
        assert "usage_record_deferred" in caplog.text  # its row, refused for now, is kept
    assert counters(admin_conn, known) == before
    assert counters(admin_conn, new) is None
    assert call("searches", "GET", "/api/searches", user=known).status == 200
    # One row per answer but the 503s: the held row went with the next request's, once.
    assert usage_rows(admin_conn, known) == [
        ("/api/searches", "GET", 200),
        ("/api/searches", "GET", 200),
        ("/api/searches", "POST", 201),
    ]


def test_writes_past_the_storage_limit_answer_503(
    api_env: Any, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    call = Caller("lambda_v2", api_env)
    known, new = user_id(), user_id()
    assert call("me", "GET", "/api/me", user=known).status == 200
    with size_limit(admin_conn, "INSERT ON saved_searches", "INSERT ON users"):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="keyflash")
        assert_unavailable(call("searches", "POST", "/api/searches", user=known, json_body=SEARCH))
        assert_unavailable(call("me", "GET", "/api/me", user=new))
        assert_refused_once(caplog, "53100", refusals=2)
        assert "53100" in core_events(caplog, "db_unavailable")[0]["reason"]
    assert counters(admin_conn, known) == (0, 0, 0, 0, 0)
    assert counters(admin_conn, new) is None


def test_a_keyword_search_whose_history_write_hits_the_storage_limit_gives_the_keywords_back(
    api_env: Any, admin_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    call = Caller("lambda_v2", api_env)
    who = user_id()
    assert call("me", "GET", "/api/me", user=who).status == 200
    with size_limit(admin_conn, "INSERT ON search_history"):
        caplog.set_level(logging.INFO, logger="keyflash")
        # Reserved, answered by the provider, then refused where the search is recorded.
        assert_unavailable(call("keywords", "POST", "/api/keywords", user=who, json_body=KEYWORDS))
        assert_refused_once(caplog, "53100", refusals=1)
    assert counters(admin_conn, who) == (0, 0, 0, 0, 0)  # given back, nothing recorded
    answer = call("keywords", "POST", "/api/keywords", user=who, json_body=KEYWORDS)
    assert answer.status == 200, answer.text
    assert counters(admin_conn, who) == (1, 1, 0, 1, 0)  # charged once, for the search answered


def test_deep_health_reports_a_read_only_database(
    api_env: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    call = Caller("lambda_v2", api_env)
    with read_only(admin_conn):
        answer = call("health", "GET", "/api/health", query={"deep": "true"})
    check = answer.json["checks"]["database"]
    assert check["healthy"] is False
    assert check["error"] == db.READ_ONLY
    assert health.database_check(deep=True)["healthy"] is True  # writable again


def short_statement_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """DB_STATEMENT_TIMEOUT_MS of 1 s from the next connection on: a lock wait ends soon."""
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "1000")
    config.get_settings.cache_clear()
    db.dispose_engine()


def assert_cancelled_once(caplog: pytest.LogCaptureFixture, path: str) -> None:
    """The cancelled statement was not retried, and its 503 was logged with the driver's class
    and SQLSTATE only (never its message, which may quote row values)."""
    assert core_events(caplog, "db_retry") == []
    failed = core_events(caplog, "request_failed")
    assert [(e["status"], e["path"], e["cause"], e["sqlstate"]) for e in failed] == [
        (503, path, "QueryCanceled", "57014")
    ], failed


def test_a_saved_search_waiting_past_the_statement_timeout_on_a_held_row_answers_503(
    api_env: Any,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was a 500 without `Retry-After`. The lock is held until the answer comes back."""
    call = Caller("lambda_v2", api_env)
    who = user_id()
    assert call("searches", "POST", "/api/searches", user=who, json_body=SEARCH).status == 201
    before = counters(admin_conn, who)
    short_statement_timeout(monkeypatch)
    caplog.set_level(logging.INFO, logger="keyflash")
    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = %(id)s", {"id": who}):
        assert_unavailable(call("searches", "POST", "/api/searches", user=who, json_body=SEARCH))
    assert_cancelled_once(caplog, "/api/searches")
    assert counters(admin_conn, who) == before
    assert ("/api/searches", "POST", 503) in usage_rows(admin_conn, who)
    assert call("searches", "POST", "/api/searches", user=who, json_body=SEARCH).status == 201


# Direct lane only: through a pooler, single statements (the keyword reservation) get the
# role's statement_timeout, which the test database's role does not set.
@pytest.mark.parametrize("database_url", ["direct"], indirect=True)
def test_a_keyword_search_waiting_past_the_statement_timeout_on_a_held_row_answers_503(
    api_env: Any,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was a 500 without `Retry-After`; nothing reserved, charged or recorded."""
    call = Caller("lambda_v2", api_env)
    who = user_id()
    assert call("me", "GET", "/api/me", user=who).status == 200
    short_statement_timeout(monkeypatch)
    caplog.set_level(logging.INFO, logger="keyflash")
    with RowLock(direct_database_url, "SELECT id FROM users WHERE id = %(id)s", {"id": who}):
        assert_unavailable(call("keywords", "POST", "/api/keywords", user=who, json_body=KEYWORDS))
    assert_cancelled_once(caplog, "/api/keywords")
    assert counters(admin_conn, who) == (0, 0, 0, 0, 0)
    answer = call("keywords", "POST", "/api/keywords", user=who, json_body=KEYWORDS)
    assert answer.status == 200, answer.text
    assert counters(admin_conn, who) == (1, 1, 0, 1, 0)
