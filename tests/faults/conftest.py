"""Fixtures for the fault lane: servers a test owns outright, so it may stop, kill and pause them.

The suite's shared PostgreSQL (tests/conftest.py) must never go down under other tests, so every
pytest process (each xdist worker too) starts its own embedded PostgreSQL here, with one migrated
database, and its own PgBouncer in front of it. Tests stop and start them; the fixtures make sure
each test starts with both up and resumed, and empty the tables afterwards.

`fault_app` points the app at them the way `api_env` (tests/support/http.py) does for the normal
lanes, in two lanes: `[direct]` and `[pooled]` (through PgBouncer, `?pgbouncer=true`).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from devkit._host import LOOPBACK
from devkit.migrate import upgrade_head
from devkit.pgbouncer import LocalPgBouncer
from devkit.postgres import LocalPostgres, truncate_tables
from devkit.upstash_emulator import UpstashEmulator
from tests.support.ci import missing_tool
from tests.support.http import Keys, app_environment

DATABASE = "keyflash_faults"
# The app's password: trust auth ignores it, so it only serves to prove no answer or log leaks it.
APP_PASSWORD = "fault-lane-s3cret"
# Small on purpose: the promises are about what happens when this budget runs out.
RETRY_BUDGET_S = 1.5
CONNECT_TIMEOUT_S = 2
# One engine connection per client thread (a thread stands for a warm container).
CLIENT_THREADS = 6
# PgBouncer holds a query while it has no server to give it (server down, PAUSE) for up to
# query_wait_timeout (default 120 s, Neon's pooler too), and after a failed server connect it waits
# server_login_retry (default 15 s) before trying again. The app's retry budget cannot shorten a
# wait inside the pooler (with the defaults, a read waited out a whole 6 s PAUSE on a 1.5 s budget,
# and a cancel request does not reach a queued query), so the fault lane's PgBouncer uses short
# ones.
POOLER_QUERY_WAIT_TIMEOUT_S = 2
POOLER_SERVER_LOGIN_RETRY_S = 1


class FaultPgBouncer(LocalPgBouncer):
    """LocalPgBouncer with the pooler's waits shortened (see POOLER_* above)."""

    def _write_config(self) -> Path:
        config = super()._write_config()
        with config.open("a") as extra:
            extra.write(f"query_wait_timeout = {POOLER_QUERY_WAIT_TIMEOUT_S}\n")
            extra.write(f"server_login_retry = {POOLER_SERVER_LOGIN_RETRY_S}\n")
        return config


@dataclass(frozen=True)
class FaultServers:
    """This process's own PostgreSQL (and PgBouncer, when installed) and the migrated database."""

    postgres: LocalPostgres
    bouncer: LocalPgBouncer | None

    @property
    def direct_url(self) -> str:
        """The database's direct URL without a password (migrations, assertions, admin work)."""
        return self.postgres.url(DATABASE)


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[FaultServers]:
    """This process's PostgreSQL with `keyflash_faults` migrated to head, and a PgBouncer
    in front of it when pgbouncer is installed (the pooled lane is skipped otherwise)."""
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-faults-") as tmp,
        LocalPostgres(Path(tmp) / "pgdata", ephemeral=True) as server,
    ):
        server.create_database(DATABASE)
        upgrade_head(server.url(DATABASE))
        if not LocalPgBouncer.available():
            yield FaultServers(server, None)
            return
        with FaultPgBouncer(LOOPBACK, server.port, Path(tmp) / "pgbouncer") as bouncer:
            yield FaultServers(server, bouncer)


@dataclass(frozen=True)
class FaultApp:
    """The app configured for one lane against this process's fault servers."""

    lane: str
    url: str  # what DATABASE_URL holds (with APP_PASSWORD)
    application_name: str  # this test's engine connections, as pg_stat_activity shows them
    keys: Keys
    servers: FaultServers

    @property
    def bouncer(self) -> LocalPgBouncer:
        assert self.servers.bouncer is not None, "pooled lane without PgBouncer"
        return self.servers.bouncer

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """A direct autocommit connection that is not the app's (another application_name)."""
        return psycopg.connect(
            self.servers.direct_url, autocommit=True, application_name="fault-admin"
        )


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{quote(APP_PASSWORD)}@", 1)


@pytest.fixture(
    params=[
        pytest.param("direct", id="direct"),
        pytest.param("pooled", id="pooled", marks=pytest.mark.pooled),
    ]
)
def fault_app(
    request: pytest.FixtureRequest,
    fault_servers: FaultServers,
    rsa_keys: Keys,
    upstash: UpstashEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[FaultApp]:
    """The app on this lane, like `api_env` but on the fault servers, with a small retry budget,
    a unique application_name and fresh per-container caches; tables emptied afterwards."""
    from shared import auth, config, db, redis

    lane = request.param
    if lane == "pooled" and fault_servers.bouncer is None:
        message = "pgbouncer is not installed, so the pooled fault lane cannot run"
        missing_tool(message)
    _bring_back(fault_servers)
    url = (
        fault_servers.bouncer.url(DATABASE)
        if lane == "pooled" and fault_servers.bouncer is not None
        else fault_servers.direct_url
    )
    app = FaultApp(
        lane=lane,
        url=_with_password(url),
        application_name=f"kf-fault-{secrets.token_hex(4)}",
        keys=rsa_keys,
        servers=fault_servers,
    )
    env = {
        "DATABASE_URL": app.url,
        "DIRECT_DATABASE_URL": _with_password(fault_servers.direct_url),
        "DB_RETRY_BUDGET_S": str(RETRY_BUDGET_S),
        "DB_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
        "DB_POOL_SIZE": str(CLIENT_THREADS),
        "DB_APPLICATION_NAME": app.application_name,
        **app_environment(rsa_keys, upstash.url, upstash.token),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ADMIN_USER_IDS", raising=False)
    config.get_settings.cache_clear()
    db.dispose_engine()
    auth._provisioned.clear()
    redis.reset_redis()
    yield app
    db.dispose_engine()
    config.get_settings.cache_clear()
    auth._provisioned.clear()
    redis.reset_redis()
    _bring_back(fault_servers)
    truncate_tables(fault_servers.direct_url)


def _bring_back(servers: FaultServers) -> None:
    """Both servers running and the pooler not paused, whatever the last test did."""
    port = servers.postgres.port
    servers.postgres.start()
    assert servers.postgres.port == port, "PostgreSQL came back on another port"
    if servers.bouncer is not None:
        servers.bouncer.start()
        databases = servers.bouncer.admin("SHOW DATABASES")
        if any(row["name"] == DATABASE and int(row["paused"]) for row in databases):
            servers.bouncer.resume(DATABASE)
