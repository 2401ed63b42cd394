"""Reads on a real streaming replica: routing, read-your-writes, the lag rule, outages.

Lag is made real with `pg_wal_replay_pause()` on the replica: WAL keeps arriving, nothing is
applied. A read served by the replica is told apart from one served by the primary by what it
sees: a row the primary has and the paused replica has not.
"""

from __future__ import annotations

import contextvars
import gzip
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import psycopg
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from devkit._host import wait_for
from devkit.postgres import create_database, drop_database, with_database
from devkit.replica import primary_position
from shared import config, db, exports, flags, replicas
from shared.clock import utcnow
from shared.cron import exports as exports_job
from shared.cron.runner import run_job
from shared.http import consistency
from shared.repositories import data_exports, search_history, users
from tests.support.http import Caller
from tests.support.replica import ReplicaPair
from tests.support.s3 import BUCKET as S3_BUCKET
from tests.support.s3 import mock_s3

pytestmark = pytest.mark.replica

T = TypeVar("T")

USER = "user_replica"
# How long a read may hang before the test fails instead of hanging with it: a guard, not a
# claim (the bounds under test are a few seconds).
HANG_GUARD_S = 60.0
MUCH = "600000"  # a lag bound no test reaches: only the token (or an outage) refuses


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "keyflash"]
    return [event for event in found if event.get("event") == name]


def fallbacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [event["reason"] for event in events(caplog, "replica_fallback")]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="keyflash")


def max_lag(monkeypatch: pytest.MonkeyPatch, ms: str) -> None:
    monkeypatch.setenv("REPLICA_MAX_LAG_MS", ms)
    config.get_settings.cache_clear()


def new_container() -> None:
    """What another warm container looks like: its own engines and its own replica state."""
    db.dispose_engine()
    replicas.reset()


def record_search(pair: ReplicaPair, keyword: str) -> None:
    """A history row written on the primary by someone else (no token for the reader)."""
    search = search_history.NewSearch(
        user_id=USER, keywords=[keyword], location="US", language="en", match_type="phrase",
        provider="mock", cache_hit=False, response_time=10, avg_volume=1, total_volume=1,
        user_agent=None, ip_address=None,
    )  # fmt: skip
    db.run(partial(search_history.record, search=search, now=utcnow()))


def keywords_seen(call: Caller, **options: Any) -> list[str]:
    result = call("history", "GET", "/api/history", user=USER, **options)
    assert result.status == 200, result.text
    return [item["keywords"][0] for item in result.json["history"]]


def answered(read: Callable[[], T]) -> T:
    """`read()`'s outcome; one still waiting after HANG_GUARD_S fails the test."""
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(read())
        except BaseException as error:  # handed to the test below
            outcome.append(error)

    reader = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    reader.start()
    reader.join(HANG_GUARD_S)
    assert outcome, f"the read still waited for the frozen replica after {HANG_GUARD_S} s"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def pooled_replica_connection(pair: ReplicaPair) -> psycopg.Connection[Any]:
    """The replica connection the next read checks out (the pool keeps one, last in first out)."""
    engine = replicas.read_engine(replicas.READ_URL, pair.read_url)
    with engine.connect() as connection:
        driver: psycopg.Connection[Any] = connection.connection.dbapi_connection  # type: ignore[assignment]
    return driver


@pytest.fixture
def seeded(replica_pair: ReplicaPair, replica_api: Caller) -> Caller:
    """USER exists with one search, replicated; replay is paused for the test."""
    db.run(lambda conn: users.get_or_create(conn, USER, f"{USER}@example.com"))
    record_search(replica_pair, "before")
    replica_pair.caught_up()
    replica_pair.replica.pause_replay()  # the lane's teardown resumes it
    return replica_api


def test_a_fresh_replica_serves_declared_reads(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, MUCH)
    record_search(replica_pair, "unreplayed")
    assert keywords_seen(seeded) == ["before"]  # the replica's state: served there
    assert fallbacks(caplog) == []


def test_read_your_writes_across_containers_with_replay_paused(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, MUCH)
    wrote = seeded("keywords", "POST", "/api/keywords", user=USER,
                   json_body={"keywords": ["mine"], "matchType": "phrase"})  # fmt: skip
    assert wrote.status == 200, wrote.text
    token = wrote.headers[consistency.HEADER.lower()]
    assert f"{consistency.COOKIE}={token}" in wrote.headers["set-cookie"]
    assert consistency.decode(token) <= primary_position(replica_pair.primary_direct)
    new_container()
    # The token's reader sees its write (the replica has not replayed it: the primary serves)…
    assert keywords_seen(seeded, headers={consistency.HEADER: token})[0] == "mine"
    assert fallbacks(caplog) == ["behind_token"]
    # … the cookie does the same for a browser …
    cookie = {"cookie": f"{consistency.COOKIE}={token}"}
    assert keywords_seen(seeded, headers=cookie)[0] == "mine"
    # … while a reader without it gets the replica's (older) state, within the lag bound.
    assert "mine" not in keywords_seen(seeded)
    replica_pair.replica.resume_replay()
    replica_pair.replica.wait_until_replayed(consistency.decode(token))
    caplog.clear()
    assert keywords_seen(seeded, headers={consistency.HEADER: token})[0] == "mine"
    assert fallbacks(caplog) == []  # replayed: the replica serves the token's reader now


def test_a_token_that_does_not_parse_reads_from_the_primary(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, MUCH)
    record_search(replica_pair, "unreplayed")
    assert keywords_seen(seeded, headers={consistency.HEADER: "not-a-position"})[0] == (
        "unreplayed"
    )
    assert fallbacks(caplog) == ["unknown_position"]  # a client's bug, not lag


def test_reads_past_the_lag_bound_go_to_the_primary(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, "200")
    record_search(replica_pair, "unreplayed")
    replica = replica_pair.replica
    replica.wait_until_received(primary_position(replica_pair.primary_direct))

    def last_replayed_commit_older_than_bound() -> bool:
        with psycopg.connect(replica.url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT clock_timestamp() - pg_last_xact_replay_timestamp() > '200 ms'"
            ).fetchone()
        return bool(row and row[0])

    assert wait_for(last_replayed_commit_older_than_bound, timeout=30)
    assert keywords_seen(seeded)[0] == "unreplayed"
    assert fallbacks(caplog) == ["lagging"]


def test_an_idle_primary_is_no_lag(
    replica_pair: ReplicaPair,
    replica_api: Caller,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Caught up and streaming is 0 lag however old the last commit: the replica serves."""
    max_lag(monkeypatch, "200")
    db.run(lambda conn: users.get_or_create(conn, USER, f"{USER}@example.com"))
    record_search(replica_pair, "old")
    replica_pair.caught_up()
    replica = replica_pair.replica

    def idle_for_longer_than_bound() -> bool:
        with psycopg.connect(replica.url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT clock_timestamp() - pg_last_xact_replay_timestamp() > '200 ms'"
            ).fetchone()
        return bool(row and row[0])

    assert wait_for(idle_for_longer_than_bound, timeout=30)
    replica_pair.caught_up()  # nothing (autovacuum) slipped in meanwhile
    assert keywords_seen(replica_api) == ["old"]
    assert fallbacks(caplog) == []


def test_a_stopped_replica_costs_a_log_line(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, MUCH)
    record_search(replica_pair, "unreplayed")
    replica_pair.replica.stop()
    assert keywords_seen(seeded)[0] == "unreplayed"
    assert keywords_seen(seeded)[0] == "unreplayed"  # paused: no new attempt
    assert fallbacks(caplog) == ["down", "down"]
    assert not [e for e in events(caplog, "request_failed")]
    replica_pair.replica.start()


@pytest.mark.parametrize(
    "idle_check_s", [pytest.param("30", id="checked"), pytest.param("0", id="pinged")]
)
def test_a_frozen_replica_under_an_open_connection_costs_the_budget_then_the_primary(
    idle_check_s: str,
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The freshness check (`checked`), or the idle connection's ping on checkout (`pinged`),
    on a pooled connection to a replica that stopped answering (every process stopped: the
    kernel still acknowledges, nothing replies) gives up within the replica's budget; that
    connection is closed, not pooled again, and the primary answers."""
    monkeypatch.setenv("DB_IDLE_CHECK_S", idle_check_s)
    max_lag(monkeypatch, MUCH)
    monkeypatch.setattr(replicas, "PAUSE_AFTER_S", {})  # try the replica again right after
    assert keywords_seen(seeded) == ["before"]  # served by the replica: a warm connection
    opened = pooled_replica_connection(replica_pair)
    record_search(replica_pair, "unreplayed")
    replicas.reset()  # the proof is forgotten: the next read checks on that connection
    with replica_pair.replica.frozen():
        seen = answered(lambda: keywords_seen(seeded))
    assert seen[0] == "unreplayed"  # the primary's state
    assert fallbacks(caplog) == ["down"]
    assert opened.closed
    caplog.clear()
    assert keywords_seen(seeded) == ["before"]  # a new connection: the replica serves again
    assert fallbacks(caplog) == []


def test_a_replica_freezing_under_a_proven_read_is_bounded_by_the_statement_timeout(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No check is due (the last one still proves freshness): the read's own statement waits
    at most DB_STATEMENT_TIMEOUT_MS plus the replica's budget, then the primary answers."""
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "1000")
    max_lag(monkeypatch, MUCH)
    db.dispose_engine()  # connections made with the shorter statement timeout
    assert keywords_seen(seeded) == ["before"]
    record_search(replica_pair, "unreplayed")
    with replica_pair.replica.frozen():
        seen = answered(lambda: keywords_seen(seeded))
    assert seen[0] == "unreplayed"
    assert fallbacks(caplog) == ["down"]


def test_a_check_after_a_long_wait_for_its_connection_has_a_budget_of_its_own(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The freshness check's budget starts when its connection is ready: a read that waited
    longer than the replica's budget for its connection (here the pool's only one, which
    another read held) still checks a healthy replica instead of calling it `down`."""
    budget_s = 0.5
    monkeypatch.setattr(replicas, "REPLICA_RETRY_BUDGET_S", budget_s)
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "30")  # the pool's wait for a connection
    max_lag(monkeypatch, MUCH)
    replica_pair.caught_up()
    holding, release = threading.Event(), threading.Event()

    def hold(conn: db.Conn) -> bool:
        holding.set()
        release.wait(HANG_GUARD_S)
        return in_recovery(conn)

    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(db.read, hold)
        assert holding.wait(HANG_GUARD_S)
        # The holder's proof is forgotten (the primary's identity is not): the next read
        # checks, and waits for its connection at once.
        replicas._state(replicas.READ_URL).lag_ms = None
        waiter = pool.submit(db.read, in_recovery)
        time.sleep(3 * budget_s)  # the slow connect under test: it outlasts the budget
        release.set()
        assert answered(holder.result)
        assert answered(waiter.result)  # the replica served, after its check
    assert fallbacks(caplog) == []


def test_a_promoted_then_rebuilt_replica_is_picked_up(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_lag(monkeypatch, MUCH)
    monkeypatch.setattr(replicas, "PAUSE_AFTER_S", {})  # try the replica on every read
    assert keywords_seen(seeded) == ["before"]  # a warm connection to the replica
    replica = replica_pair.replica
    replica.promote()
    record_search(replica_pair, "after promotion")
    # Within the lag bound the last check's proof still holds (staleness grows by the time
    # elapsed, promoted or not); the next check finds the promotion: forget the proof.
    replicas.reset()
    assert keywords_seen(seeded)[0] == "after promotion"
    assert fallbacks(caplog) == ["promoted"]
    replica.rebuild()  # new base backup, same address; the old connections are dead
    record_search(replica_pair, "after rebuild")  # a commit replayed: its age is the lag
    replica_pair.caught_up()
    replica.pause_replay()
    record_search(replica_pair, "unreplayed")
    caplog.clear()
    assert keywords_seen(seeded)[0] == "after rebuild"  # the rebuilt replica's state
    assert fallbacks(caplog) == []


def current_database(conn: db.Conn) -> str:
    return str(conn.session.execute(text("SELECT current_database()")).scalar_one())


@pytest.mark.parametrize(
    ("older", "differs"),
    [(True, "database name and schema revision differ"), (False, "database name differs")],
    ids=["older-revision", "same-revision"],
)
def test_a_read_url_at_another_database_of_the_replica_is_refused(
    older: bool,
    differs: str,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streaming, caught-up standby, but the read URL names another of its databases (at an
    older schema revision, or at the same one): checked when the connection opens, refused, the
    primary reads, and the log says what differs without naming either database."""
    other = f"{replica_pair.database}_elsewhere"
    server = with_database(replica_pair.primary_direct, "postgres")
    with psycopg.connect(replica_pair.primary_direct) as conn:
        revision = conn.execute("SELECT max(version_num) FROM alembic_version").fetchone()
    create_database(server, other)
    try:
        with psycopg.connect(with_database(replica_pair.primary_direct, other)) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            version = "0008" if older else revision[0] if revision else None
            conn.execute("INSERT INTO alembic_version VALUES (%s)", (version,))
        replica_pair.caught_up()
        monkeypatch.setenv("DATABASE_READ_URL", with_database(replica_pair.read_url, other))
        max_lag(monkeypatch, MUCH)
        new_container()
        assert db.read(current_database) == replica_pair.database
        assert db.read(current_database) == replica_pair.database  # resting: not tried again
        refusals = events(caplog, "replica_fallback")
        assert [event["reason"] for event in refusals] == ["other_database"] * 2
        assert refusals[0]["detail"] == f"not DATABASE_URL's database: its {differs}"
        assert other not in caplog.text
    finally:
        new_container()
        drop_database(server, other)


def in_recovery(conn: db.Conn) -> bool:
    """Whether the server that served the read is a standby: the replica, not the primary."""
    return bool(conn.session.execute(text("SELECT pg_is_in_recovery()")).scalar_one())


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


# A login role of the test's own: the lane's PgBouncers know only the superuser.
DIRECT_ONLY = pytest.mark.parametrize("replica_pair", ["direct"], indirect=True)


@pytest.fixture
def no_control_role(replica_pair: ReplicaPair) -> Iterator[str]:
    """A login role that may not call pg_control_system() in the lane's database (EXECUTE
    revoked from PUBLIC there, as some managed services do) but may read alembic_version."""
    role = f"kf_noctl_{secrets.token_hex(4)}"
    with psycopg.connect(replica_pair.primary_direct, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON alembic_version TO {role}")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    replica_pair.caught_up()
    try:
        yield role
    finally:
        db.dispose_engine()  # no session of the role left
        with psycopg.connect(replica_pair.primary_direct, autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@DIRECT_ONLY
def test_a_role_that_may_not_read_the_system_identifier_still_reads_from_the_replica(
    replica_pair: ReplicaPair,
    no_control_role: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without EXECUTE on pg_control_system() the cluster is not compared (the database name
    and the schema revision still are): the replica serves, and nothing fails."""
    monkeypatch.setenv("DATABASE_URL", as_role(replica_pair.primary_url, no_control_role))
    monkeypatch.setenv("DATABASE_READ_URL", as_role(replica_pair.read_url, no_control_role))
    max_lag(monkeypatch, MUCH)
    new_container()
    assert db.read(in_recovery)
    assert fallbacks(caplog) == []


@contextmanager
def revision_locked(pair: ReplicaPair) -> Iterator[None]:
    """alembic_version locked on the primary, and on the replica once replayed: reading the
    schema revision (part of a server's identity) waits for the statement timeout."""
    with psycopg.connect(pair.primary_direct) as conn:
        conn.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        pair.caught_up()
        yield
        conn.rollback()
    pair.caught_up()


@DIRECT_ONLY  # the statement timeout is a direct connection's startup option
def test_the_primary_identity_failing_reads_from_the_primary_and_asks_again_later(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary could not say what it is (here a statement timeout; a role without a
    privilege alike): no replica can be compared with it, yet the primary can serve the read.
    The read URL rests, and the identity is asked again after the rest."""
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "300")
    max_lag(monkeypatch, MUCH)
    new_container()
    with revision_locked(replica_pair):
        assert not db.read(in_recovery)
    assert not db.read(in_recovery)  # resting: the identity is not asked, the primary reads
    refusals = events(caplog, "replica_fallback")
    assert [event["reason"] for event in refusals] == ["identity_unknown"] * 2
    assert "57014" in refusals[0]["detail"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    replicas._state(replicas.READ_URL).paused_until = 0.0  # the rest is over
    caplog.clear()
    assert db.read(in_recovery)  # asked again: the replica serves
    assert fallbacks(caplog) == []


@DIRECT_ONLY  # the statement timeout is a direct connection's startup option
def test_a_replica_whose_identity_cannot_be_read_is_refused_and_rests(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "300")
    max_lag(monkeypatch, MUCH)
    new_container()
    assert db.read(in_recovery)  # the primary's identity is known; the replica served
    db.dispose_engine()  # the next read opens a new replica connection, asked what it is
    with revision_locked(replica_pair):
        assert not db.read(in_recovery)
    assert not db.read(in_recovery)  # resting
    refusals = events(caplog, "replica_fallback")
    assert [event["reason"] for event in refusals] == ["identity_unknown"] * 2
    assert "57014" in refusals[0]["detail"]


def test_analytics_url_is_preferred_for_admin_reads(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ANALYTICS_DATABASE_URL may be the primary itself (a read-only role there): fresh."""
    monkeypatch.setenv("ANALYTICS_DATABASE_URL", replica_pair.primary_url)
    monkeypatch.setenv("ADMIN_USER_IDS", USER)
    config.get_settings.cache_clear()
    record_search(replica_pair, "unreplayed")
    result = seeded("admin_analytics", "GET", "/api/admin/analytics", user=USER)
    assert result.status == 200, result.text
    keywords = {item["keyword"] for item in result.json["topKeywords"]}
    assert "unreplayed" in keywords  # read on the primary's analytics URL, not the replica
    assert fallbacks(caplog) == []


POSITION = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"


def flag_seen(call: Caller, key: str, user: str, **options: Any) -> bool | None:
    result = call("flags", "GET", "/api/flags", user=user, **options)
    assert result.status == 200, result.text
    seen: bool | None = result.json["flags"].get(key)
    return seen


def test_a_cached_flag_set_never_serves_a_reader_whose_token_is_newer(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An admin's flag write refreshes the writing container at once, even for a reader without
    a token; in another container a reader without one may cache the replica's older flags
    (within the lag bound), but the admin's token is newer than them: they are reloaded."""
    max_lag(monkeypatch, MUCH)
    monkeypatch.setenv("ADMIN_USER_IDS", USER)
    config.get_settings.cache_clear()
    flags.invalidate_cache()
    key = "s52-ryw"
    admin = {"user": USER}
    created = seeded("admin_flags", "POST", "/api/admin/flags", **admin,
                     json_body={"key": key, "enabled": False, "allowedUsers": [USER]})  # fmt: skip
    assert created.status == 201, created.text
    replica_pair.replica.resume_replay()
    replica_pair.caught_up()
    assert flag_seen(seeded, key, USER) is False  # cached from the caught-up replica
    replica_pair.replica.pause_replay()
    wrote = seeded("admin_flag_item", "PUT", f"/api/admin/flags/{key}", **admin,
                   json_body={"enabled": True})  # fmt: skip
    assert wrote.status == 200, wrote.text
    token = {consistency.HEADER: wrote.headers[consistency.HEADER.lower()]}
    # The writing container: a reader without a token first, then the admin with it.
    assert flag_seen(seeded, key, "user_other") is False  # not in allowedUsers, but loaded now
    assert flag_seen(seeded, key, USER) is True
    assert flag_seen(seeded, key, USER, headers=token) is True
    # Another container: its first reader (no token) caches the paused replica's flags.
    new_container()
    monkeypatch.setattr(flags, "_cache", flags.FlagCache())
    assert flag_seen(seeded, key, USER) is False  # the replica's state, within the bound
    assert flag_seen(seeded, key, USER, headers=token) is True  # newer than that: reloaded
    flags.invalidate_cache()


def test_a_token_the_primary_load_covers_loads_once(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader whose token the paused replica lacks reloads from the primary; with no write
    since, that load covers the token (nothing was in flight), so the next request with it
    serves the snapshot rather than loading again."""
    max_lag(monkeypatch, MUCH)
    monkeypatch.setenv("ADMIN_USER_IDS", USER)
    config.get_settings.cache_clear()
    key = "s52-once"
    wrote = seeded("admin_flags", "POST", "/api/admin/flags", user=USER,
                   json_body={"key": key, "enabled": True, "allowedUsers": [USER]})  # fmt: skip
    assert wrote.status == 201, wrote.text
    new_container()
    loads: list[flags.Loaded] = []

    def counted(at_least: int | None) -> flags.Loaded:
        loads.append(flags.load_rules(at_least))
        return loads[-1]

    monkeypatch.setattr(flags, "_cache", flags.FlagCache(counted))
    assert flag_seen(seeded, key, USER) is None  # the paused replica's flags
    # The primary's insert position as the token: a quiet primary's newest possible one.
    position = db.run(lambda conn: conn.connection.exec_driver_sql(POSITION).scalar_one())
    token = {consistency.HEADER: consistency.encode(int(position))}
    assert flag_seen(seeded, key, USER, headers=token) is True  # the primary's
    assert flag_seen(seeded, key, USER, headers=token) is True
    assert len(loads) == 2  # the second request with the token: no load
    flags.invalidate_cache()


def test_a_write_declared_read_only_is_raised_not_hidden(
    replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    max_lag(monkeypatch, MUCH)
    replica_pair.caught_up()
    with pytest.raises(DBAPIError) as caught:
        db.read(lambda conn: conn.session.execute(text("CREATE TEMP TABLE kf_nope (x int)")))
    assert getattr(caught.value.orig, "sqlstate", None) == "25006"
    assert fallbacks(caplog) == []


def test_the_exports_cron_builds_what_was_written_before_the_request(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cron has no token, but the export must hold everything written before it was asked
    for: a replica that has not replayed that much does not build it (the primary does)."""
    max_lag(monkeypatch, MUCH)
    with mock_s3(monkeypatch) as storage:
        record_search(replica_pair, "just before")
        db.run(lambda conn: data_exports.request(conn, USER, now=utcnow()))
        summary = run_job(exports_job.JOB)
        assert summary["processed"] == 1, summary
        (stored,) = storage.list_objects_v2(Bucket=S3_BUCKET)["Contents"]
        body = storage.get_object(Bucket=S3_BUCKET, Key=stored["Key"])["Body"].read()
    document = json.loads(gzip.decompress(body))
    searched = {row["keywords"][0] for row in document["searchHistory"]}
    assert searched == {"before", "just before"}
    assert fallbacks(caplog) == ["behind_token"]


def test_the_export_snapshot_reads_on_the_replica(
    seeded: Caller,
    replica_pair: ReplicaPair,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """REPEATABLE READ, READ ONLY and server-side cursors work on a hot standby."""
    max_lag(monkeypatch, MUCH)
    record_search(replica_pair, "unreplayed")
    document = json.loads(exports.build(USER))
    searched = [row["keywords"][0] for row in document["searchHistory"]]
    assert searched == ["before"]  # the replica's snapshot
    assert fallbacks(caplog) == []
