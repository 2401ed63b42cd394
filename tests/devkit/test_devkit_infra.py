"""The test infrastructure itself: embedded PostgreSQL, PgBouncer's pooling mode, run.py."""

from __future__ import annotations

import ast
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from devkit._host import wait_for
from devkit.pgbouncer import LocalPgBouncer
from devkit.postgres import PORT_FILE, LocalPostgres, LocalPostgresError, truncate_tables

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A cluster directory outside pytest's 0700 tmp root (the server may run as another user)."""
    with tempfile.TemporaryDirectory(prefix="keyflash-test-pg-") as tmp:
        yield Path(tmp) / "pgdata"


def _setting(url: str, name: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_local_postgres_starts_restarts_and_stops(data_dir: Path) -> None:
    with LocalPostgres(data_dir, ephemeral=True) as server:
        assert server.is_running()
        url = server.url()
        assert url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_user, inet_server_addr()::text, pg_postmaster_start_time()"
            ).fetchone()
            assert row is not None
            user, address, first_start = row
            conn.execute("CREATE TABLE survives (id int)")
            conn.execute("INSERT INTO survives VALUES (1)")
        assert (user, address) == ("postgres", "127.0.0.1/32")
        assert _setting(url, "server_encoding") == "UTF8"
        assert _setting(url, "TimeZone") == "UTC"
        assert int(_setting(url, "max_connections")) >= 200
        assert _setting(url, "fsync") == "off"

        port = server.port
        server.restart()
        assert server.port == port
        with psycopg.connect(server.url()) as conn:
            row = conn.execute(
                "SELECT pg_postmaster_start_time(), (SELECT count(*) FROM survives)"
            ).fetchone()
        assert row is not None
        assert row[0] > first_start
        assert row[1] == 1

    assert not server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    server.stop()  # stopping a stopped server is a no-op


def test_local_postgres_reuses_its_port_and_is_durable_by_default(data_dir: Path) -> None:
    with LocalPostgres(data_dir) as first:
        port = first.port
        assert _setting(first.url(), "fsync") == "on"
        first.create_database("kept")
    assert (data_dir / PORT_FILE).read_text().strip() == str(port)

    with LocalPostgres(data_dir) as second:
        assert second.port == port
        with psycopg.connect(second.url("kept")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kept",)
        second.drop_database("kept")
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(second.url("kept"))


def test_local_postgres_stop_copes_with_a_dead_server(data_dir: Path) -> None:
    server = LocalPostgres(data_dir, ephemeral=True)
    server.start()
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    assert wait_for(lambda: not server.is_running(), timeout=30)
    server.stop()  # must neither raise nor hang


def test_local_postgres_start_failure_shows_the_server_log(data_dir: Path) -> None:
    server = LocalPostgres(data_dir, ephemeral=True)
    server.start()
    server.stop()
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("this line is not a setting\n")
    with pytest.raises(LocalPostgresError, match="syntax error") as failure:
        server.start()
    assert "server.log" in str(failure.value)
    assert not server.is_running()


class _InitdbStoppedMidway(LocalPostgres):
    """Ctrl-C during a first run's initdb: the cluster is left without its control file."""

    def _create_cluster(self, target: Path) -> None:
        super()._create_cluster(target)
        (target / "global" / "pg_control").unlink()
        raise KeyboardInterrupt


def test_a_first_run_stopped_during_initdb_leaves_nothing_the_next_start_trips_on(
    data_dir: Path,
) -> None:
    with pytest.raises(KeyboardInterrupt):
        _InitdbStoppedMidway(data_dir, ephemeral=True).start()
    assert not data_dir.exists()
    with LocalPostgres(data_dir, ephemeral=True) as server:
        assert _setting(server.url(), "server_version_num")
    assert not data_dir.with_name(data_dir.name + ".partial").exists()


def test_truncate_tables_empties_everything_but_alembic_version(
    scratch_database: Callable[[], str],
) -> None:
    url = scratch_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num text PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('head')")
        conn.execute('CREATE TABLE "Parent" (id serial PRIMARY KEY)')
        conn.execute('CREATE TABLE child (parent int REFERENCES "Parent" (id))')
        conn.execute('INSERT INTO "Parent" DEFAULT VALUES')
        conn.execute("INSERT INTO child VALUES (1)")

        truncate_tables(url)

        counts = conn.execute(
            'SELECT (SELECT count(*) FROM alembic_version), (SELECT count(*) FROM "Parent"),'
            " (SELECT count(*) FROM child)"
        ).fetchone()
        assert counts == (1, 0, 0)
        # RESTART IDENTITY: ids start over, so tests may rely on fresh sequences.
        assert conn.execute('INSERT INTO "Parent" DEFAULT VALUES RETURNING id').fetchone() == (1,)


def test_pgbouncer_urls_carry_the_pooler_flag_only_for_the_app(pgbouncer: LocalPgBouncer) -> None:
    assert (
        pgbouncer.url("db") == f"postgresql://postgres@127.0.0.1:{pgbouncer.port}/db?pgbouncer=true"
    )
    assert pgbouncer.dsn("db") == f"postgresql://postgres@127.0.0.1:{pgbouncer.port}/db"


def test_pgbouncer_pools_per_transaction(
    pgbouncer: LocalPgBouncer, scratch_database: Callable[[], str]
) -> None:
    config = {row["key"]: row["value"] for row in pgbouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["ignore_startup_parameters"] == ""

    # A fresh database has a fresh pool: A's login opens its single server connection. After A's
    # statement that connection goes back to the pool while A stays connected, so B's statement
    # runs on the same backend and even sees A's session-level SET. In session mode B would get
    # a backend of its own.
    dsn = pgbouncer.dsn(_name(scratch_database()))
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as a,
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as b,
    ):
        a_row = a.execute("SELECT pg_backend_pid()").fetchone()
        a.execute("SET keyflash.probe = 'set by a'")
        b_row = b.execute(
            "SELECT pg_backend_pid(), current_setting('keyflash.probe', true)"
        ).fetchone()
    assert a_row is not None and b_row is not None
    assert b_row == (a_row[0], "set by a")


def test_pgbouncer_pause_resume_and_restart(
    pgbouncer: LocalPgBouncer, scratch_database: Callable[[], str]
) -> None:
    name = _name(scratch_database())
    # A client stays connected (autocommit: its server goes back to the pool after each
    # statement, so PAUSE does not wait for it). Without one, PgBouncer's janitor may move the
    # idle auto-database off the list SHOW DATABASES reads (it did once in CI under load).
    with psycopg.connect(pgbouncer.dsn(name), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SELECT 1")
        pgbouncer.pause(name)
        try:
            assert _paused(pgbouncer, name) == 1
        finally:
            pgbouncer.resume(name)
        assert _paused(pgbouncer, name) == 0
        assert conn.execute("SELECT 1").fetchone() == (1,)

    port = pgbouncer.port
    pgbouncer.restart()
    assert pgbouncer.port == port
    with psycopg.connect(pgbouncer.dsn(name), prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)


def test_run_py_uses_only_the_standard_library() -> None:
    tree = ast.parse((REPO_ROOT / "run.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported, "run.py imports nothing? the check would be vacuous"
    assert imported <= sys.stdlib_module_names


def _name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _paused(bouncer: LocalPgBouncer, database: str) -> int:
    rows = [row for row in bouncer.admin("SHOW DATABASES") if row["name"] == database]
    assert len(rows) == 1
    return int(rows[0]["paused"])
