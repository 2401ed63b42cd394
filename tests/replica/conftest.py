"""The replica lane: a real streaming replica of the test server, direct and through PgBouncer.

One replica per pytest process (each xdist worker), made on the first replica test by
`pg_basebackup -R` from the worker's embedded server (`devkit.replica`); with an external
DATABASE_URL, whose server we cannot back up, the lane starts its own embedded primary (with the
schema migrated) and replicates that. Each test runs twice: `[direct]` (both URLs straight to
the servers) and `[pooled]` (each through its own PgBouncer in transaction mode, as Neon gives a
read replica its own pooled endpoint).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from devkit.migrate import upgrade_head
from devkit.pgbouncer import LocalPgBouncer
from devkit.postgres import LocalPostgres, create_database, truncate_tables, with_database
from devkit.replica import LocalReplica, primary_position
from devkit.upstash_emulator import UpstashEmulator
from tests.support.ci import missing_tool
from tests.support.http import Caller, Keys, app_environment
from tests.support.replica import ReplicaPair

# As the root conftest reads them: before any test's monkeypatching.
EXTERNAL_DATABASE_URL = os.environ.get("DATABASE_URL")
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def _port(url: str) -> int:
    return int(conninfo_to_dict(url).get("port") or 5432)


# A pooler queues a query while its server is unreachable, by default for 120 s: in front of
# a replica, whose reads the primary can serve instead, it should give up within seconds.
REPLICA_POOLER_SETTINGS = {"query_wait_timeout": "1", "server_login_retry": "1"}


def _bouncer(
    host_port: int, workdir: Path, settings: dict[str, str] | None = None
) -> LocalPgBouncer:
    return LocalPgBouncer("127.0.0.1", host_port, workdir, settings=settings)


@pytest.fixture(scope="session")
def replica_servers(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, LocalReplica]]:
    """(server URL of the primary, direct URL of the migrated test database, its replica)."""
    with tempfile.TemporaryDirectory(prefix="keyflash-replica-") as tmp:
        if EXTERNAL_DATABASE_URL:
            primary = LocalPostgres(Path(tmp) / "primary", ephemeral=True)
            primary.start()
            request.addfinalizer(primary.stop)
            server_url = primary.url()
            name = f"keyflash_replica_{WORKER}_{secrets.token_hex(4)}"
            create_database(server_url, name)
            database_url = with_database(server_url, name)
            upgrade_head(database_url)
        else:
            server_url = request.getfixturevalue("postgres_server_url")
            database_url = request.getfixturevalue("direct_database_url")
        with LocalReplica(Path(tmp) / "replica", _port(server_url)) as replica:
            replica.wait_until_replayed(primary_position(database_url))
            yield server_url, database_url, replica


@pytest.fixture(scope="session")
def replica_bouncers(
    replica_servers: tuple[str, str, LocalReplica],
) -> Iterator[tuple[LocalPgBouncer, LocalPgBouncer]]:
    """PgBouncers in transaction mode in front of the lane's primary and of its replica."""
    if not LocalPgBouncer.available():
        missing_tool("pgbouncer is not installed, so the pooled replica lane cannot run")
    server_url, _, replica = replica_servers
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-replica-bouncers-") as tmp,
        _bouncer(_port(server_url), Path(tmp) / "primary") as primary_bouncer,
        _bouncer(replica.port, Path(tmp) / "replica", REPLICA_POOLER_SETTINGS) as replica_bouncer,
    ):
        yield primary_bouncer, replica_bouncer


@pytest.fixture(
    params=[
        pytest.param("direct", id="direct"),
        pytest.param("pooled", id="pooled", marks=pytest.mark.pooled),
    ]
)
def replica_pair(
    request: pytest.FixtureRequest,
    replica_servers: tuple[str, str, LocalReplica],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ReplicaPair]:
    """The app pointed at the primary (DATABASE_URL) and the replica (DATABASE_READ_URL) in
    this lane, with fresh settings, engines and replica state; afterwards replay runs again, the
    replica is a replica again (a test may promote or stop it) and the tables are emptied."""
    from shared import replicas
    from shared.config import get_settings
    from shared.db import dispose_engine

    _, database_url, replica = replica_servers
    name = str(conninfo_to_dict(database_url)["dbname"])
    pair = ReplicaPair(name, database_url, replica)
    if request.param == "direct":
        pair.primary_url, pair.read_url = database_url, replica.url(name)
    else:
        primary_bouncer, replica_bouncer = request.getfixturevalue("replica_bouncers")
        pair.primary_url, pair.read_url = primary_bouncer.url(name), replica_bouncer.url(name)
    monkeypatch.setenv("DATABASE_URL", pair.primary_url)
    monkeypatch.setenv("DIRECT_DATABASE_URL", database_url)
    monkeypatch.setenv("DATABASE_READ_URL", pair.read_url)
    monkeypatch.delenv("ANALYTICS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DB_RETRY_BUDGET_S", "2")
    get_settings.cache_clear()
    dispose_engine()
    replicas.reset()
    yield pair
    dispose_engine()
    replicas.reset()
    get_settings.cache_clear()
    if not replica.is_running() or not replica.in_recovery():
        replica.rebuild()
    replica.resume_replay()
    truncate_tables(database_url)
    pair.caught_up()


@pytest.fixture
def replica_api(
    replica_pair: ReplicaPair,
    rsa_keys: Keys,
    upstash: UpstashEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Caller]:
    """Functions on the replica lane, invoked as Lambda does (HTTP API v2 events)."""
    from shared import auth, config, redis

    for name, value in app_environment(rsa_keys, upstash.url, upstash.token).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ADMIN_USER_IDS", raising=False)
    config.get_settings.cache_clear()
    auth._provisioned.clear()
    redis.reset_redis()
    yield Caller("lambda_v2", rsa_keys)
    auth._provisioned.clear()
    redis.reset_redis()
