"""Fixtures: a real PostgreSQL for the run, reached directly and through a real PgBouncer.

Server: the one at DATABASE_URL when it is set at startup (it must allow CREATE DATABASE), else an
embedded PostgreSQL in a temporary directory. Every pytest process — each xdist worker too — gets
its own database (and its own embedded server and PgBouncer), so `-n` workers never share rows.

Lanes: a test taking `database_url` (or `db_env`) runs twice, `[direct]` and `[pooled]`, the
second through PgBouncer in transaction mode, as production talks to Neon's pooler. Without
pgbouncer installed the pooled lane is skipped locally and fails in CI (`CI=true`).

Isolation: after each test that used the database, every table but `alembic_version` is emptied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from psycopg.conninfo import conninfo_to_dict

from devkit.migrate import upgrade_head
from devkit.pgbouncer import LocalPgBouncer
from devkit.postgres import (
    LocalPostgres,
    create_database,
    drop_database,
    truncate_tables,
    with_database,
)
from tests.support.ci import missing_tool

pytest_plugins = ["tests.support.http", "tests.support.breaker_clock"]

# Hypothesis fails an example that takes over 200 ms by default: a timing assertion, which a
# loaded machine trips (a dev-token round trip did, once). Speed is the benchmarks' business.
hypothesis_settings.register_profile("keyflash", deadline=None)
hypothesis_settings.load_profile("keyflash")

# Read once, before any test's monkeypatching: the server the developer asked us to use.
EXTERNAL_DATABASE_URL = os.environ.get("DATABASE_URL")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def _database_name(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


@pytest.fixture(autouse=True)
def current_event_loop() -> Iterator[None]:
    """Mangum runs each request on `asyncio.get_event_loop()`; an `asyncio.run()` earlier in the
    process (some tests use it) leaves the main thread without one. Each test gets its own."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    loop.close()
    asyncio.set_event_loop_policy(None)


@pytest.fixture(autouse=True)
def upstash_breaker_closed() -> None:
    """The container's Upstash breaker (`shared.redis.breaker`) is process-wide: a test whose
    Upstash calls failed must not leave the next test in this worker unable to send any."""
    redis = sys.modules.get("shared.redis")
    if redis is not None:
        redis.breaker.reset()


class _DeadlockRetries(logging.Handler):
    """Counts the transactions `shared.db` ran again after the server aborted them in a deadlock."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if '"event":"db_retry"' in message and '"reason":"deadlock detected"' in message:
            self.seen += 1


@pytest.fixture(autouse=True)
def no_deadlock(request: pytest.FixtureRequest) -> Iterator[None]:
    """A deadlock between our own statements is a bug in their lock order, even though
    `shared.db` runs the aborted transaction again: a test that met one fails, so the race tests
    keep proving the order, unless it is marked `deadlock` (it makes one on purpose)."""
    handler = _DeadlockRetries()
    logger = logging.getLogger("keyflash")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    if handler.seen and request.node.get_closest_marker("deadlock") is None:
        pytest.fail(f"{handler.seen} transaction(s) aborted in a deadlock and run again")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of the test server with rights to create databases (embedded unless DATABASE_URL)."""
    if EXTERNAL_DATABASE_URL:
        yield EXTERNAL_DATABASE_URL
        return
    # Not pytest's tmp_path: its root is 0700, and the server runs as another user when we are root.
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-pg-") as tmp,
        LocalPostgres(Path(tmp) / "pgdata", ephemeral=True) as server,
    ):
        yield server.url()


@pytest.fixture(scope="session")
def direct_database_url(postgres_server_url: str) -> Iterator[str]:
    """This process's fresh database, migrated with `alembic upgrade head`: its direct URL.

    Session-scoped, so it cleans nothing per test: tests that write take `database_url`,
    `db_env` or `admin_conn`, which empty the tables afterwards.
    """
    name = f"keyflash_test_{WORKER}_{secrets.token_hex(4)}"
    create_database(postgres_server_url, name)
    try:
        url = with_database(postgres_server_url, name)
        upgrade_head(url)
        yield url
    finally:
        drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def pgbouncer(postgres_server_url: str) -> Iterator[LocalPgBouncer]:
    """PgBouncer in transaction mode in front of the test server, one per pytest process."""
    if not LocalPgBouncer.available():
        message = (
            "pgbouncer is not installed, so the pooled lane cannot run: apt-get install pgbouncer"
        )
        missing_tool(message)
    server = conninfo_to_dict(postgres_server_url)
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-pgbouncer-") as tmp,
        LocalPgBouncer(
            str(server.get("host") or "localhost"),
            int(server.get("port") or 5432),
            Path(tmp),
            user=str(server.get("user") or "postgres"),
            password=str(server.get("password") or ""),
        ) as bouncer,
    ):
        yield bouncer


@pytest.fixture
def clean_tables(direct_database_url: str) -> Iterator[None]:
    """Empty every table but `alembic_version` once the test is over (over the direct URL)."""
    yield
    truncate_tables(direct_database_url)


@pytest.fixture(
    params=[
        pytest.param("direct", id="direct"),
        pytest.param("pooled", id="pooled", marks=pytest.mark.pooled),
    ]
)
def database_url(
    request: pytest.FixtureRequest, direct_database_url: str, clean_tables: None
) -> str:
    """The test database in this lane: direct, or through PgBouncer (`?pgbouncer=true` URL)."""
    if request.param == "direct":
        return direct_database_url
    bouncer: LocalPgBouncer = request.getfixturevalue("pgbouncer")
    return bouncer.url(_database_name(direct_database_url))


@pytest.fixture
def db_env(
    database_url: str, direct_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point the app at this lane: DATABASE_URL (lane) and DIRECT_DATABASE_URL, fresh caches.

    The cached settings and engine are reset before the test (they may hold another lane's URL)
    and after it (so no connection outlives the test), and usage rows an earlier test left held
    (its database refused them) are dropped: each test is a new container. Yields the lane URL.
    """
    from shared.config import get_settings
    from shared.db import dispose_engine
    from shared.http import usage

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DIRECT_DATABASE_URL", direct_database_url)
    get_settings.cache_clear()
    dispose_engine()
    usage._take_held()
    yield database_url
    dispose_engine()
    get_settings.cache_clear()


@pytest.fixture
def admin_conn(
    direct_database_url: str, clean_tables: None
) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the test database, direct, for assertions (counts, activity)."""
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def scratch_database(postgres_server_url: str) -> Iterator[Callable[[], str]]:
    """Factory: each call creates an empty database and returns its direct URL.

    For schema-compat and migration round trips; all are dropped after the test.
    """
    names: list[str] = []

    def create() -> str:
        name = f"keyflash_scratch_{WORKER}_{secrets.token_hex(4)}"
        create_database(postgres_server_url, name)
        names.append(name)
        return with_database(postgres_server_url, name)

    yield create
    for name in names:
        drop_database(postgres_server_url, name)
