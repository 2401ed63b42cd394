"""A real PgBouncer in transaction mode, as Neon's pooled endpoint runs it: the pooled test lane.

Debian's PgBouncer 1.18 is stricter than Neon's (no prepared statements, and startup parameters
it does not track are refused: `ignore_startup_parameters` stays unset on purpose), so code that
passes through it passes through Neon's pooler too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.abc import Query
from psycopg.rows import dict_row

from devkit._host import LOOPBACK, Service, free_port, log_tail, service_account, wait_for

CONFIG_FILE = "pgbouncer.ini"
AUTH_FILE = "userlist.txt"
LOG_FILE = "pgbouncer.log"


class LocalPgBouncerError(RuntimeError):
    """PgBouncer is missing or failed to start; the message ends with its log's tail."""


class LocalPgBouncer(Service):
    """PgBouncer on 127.0.0.1 (free port) in front of `upstream_host:upstream_port`, every database.

    Clients are trusted (no password); PgBouncer logs in upstream as `user` with `password`. As
    root it runs as the `embedded_postgres` system user (PgBouncer refuses root), which then owns
    `workdir` (config, auth file). It runs in the foreground as our child, logging to `workdir`.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        workdir: Path,
        *,
        user: str = "postgres",
        password: str = "",
        timeout: float = 30.0,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings or {}  # more [pgbouncer] settings, e.g. query_wait_timeout
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.workdir = Path(workdir).absolute()
        self.user = user
        self.password = password
        self.timeout = timeout
        self.log_path = self.workdir / LOG_FILE
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        """Path of the pgbouncer executable (Debian puts it in /usr/sbin, often not on PATH)."""
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
        return shutil.which("pgbouncer", path=search_path)

    @classmethod
    def available(cls) -> bool:
        """Whether pgbouncer is installed (`apt-get install pgbouncer`)."""
        return cls.binary() is not None

    @property
    def port(self) -> int:
        """The port PgBouncer listens on (chosen on first start, kept across restarts)."""
        if self._port is None:
            raise LocalPgBouncerError("PgBouncer has not been started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The running PgBouncer's process id (its CPU time is read from /proc), else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def url(self, database: str) -> str:
        """The app's URL: `?pgbouncer=true` tells our db layer this is a transaction pooler.

        The db layer strips the flag before connecting; raw psycopg refuses it: use `dsn()` there.
        """
        return f"{self.dsn(database)}?pgbouncer=true"

    def dsn(self, database: str) -> str:
        """A plain libpq URL through PgBouncer (psycopg needs prepare_threshold=None over it)."""
        return f"postgresql://{quote(self.user)}@{LOOPBACK}:{self.port}/{quote(database)}"

    def start(self) -> None:
        """Write the config, launch PgBouncer and wait until its admin console answers."""
        binary = self.binary()
        if binary is None:
            raise LocalPgBouncerError("PgBouncer is not installed: apt-get install pgbouncer")
        if self._process is not None and self._process.poll() is None:
            return
        if self._port is None:
            self._port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.log_path.touch()
        account = service_account()
        if account is not None:
            account.give(self.workdir, config, self.workdir / AUTH_FILE, self.log_path)
        run_as = ["-u", account.name] if account else []
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [binary, *run_as, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not wait_for(self._answers, timeout=self.timeout):
            self.stop()
            raise LocalPgBouncerError(self._explain(f"did not answer on port {self._port}"))

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM drops client connections) and wait for the exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port, so URLs handed out stay valid."""
        self.stop()
        self.start()

    def pause(self, database: str | None = None) -> None:
        """PAUSE: wait until server connections are released, then hold new queries back."""
        self.admin(_admin_command("PAUSE", database))

    def resume(self, database: str | None = None) -> None:
        """RESUME after `pause()`."""
        self.admin(_admin_command("RESUME", database))

    def admin(self, command: Query) -> list[dict[str, Any]]:
        """Run one admin-console command (`SHOW POOLS`, `SHOW CONFIG`, …) and return its rows.

        The console speaks only the simple query protocol, hence psycopg's client-side cursor.
        """
        with psycopg.connect(
            self.dsn("pgbouncer"),
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
            row_factory=dict_row,
            connect_timeout=5,
        ) as conn:
            cursor = conn.execute(command)
            return cursor.fetchall() if cursor.description else []

    def _write_config(self) -> Path:
        auth_file = self.workdir / AUTH_FILE
        auth_file.touch(mode=0o600)  # it may hold the upstream password
        auth_file.write_text(f"{_quoted(self.user)} {_quoted(self.password)}\n")
        config = self.workdir / CONFIG_FILE
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.upstream_host} port={self.upstream_port}",
                    "",
                    "[pgbouncer]",
                    f"listen_addr = {LOOPBACK}",
                    f"listen_port = {self._port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {auth_file}",
                    f"admin_users = {self.user}",
                    "pool_mode = transaction",
                    "default_pool_size = 20",
                    "max_client_conn = 1000",
                    "server_reset_query =",
                    *(f"{name} = {value}" for name, value in self.settings.items()),
                    "",
                ]
            )
        )
        return config

    def _answers(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise LocalPgBouncerError(self._explain("exited while starting"))
        try:
            self.admin("SHOW VERSION")
        except psycopg.OperationalError:
            return False
        return True

    def _explain(self, what: str) -> str:
        return f"PgBouncer {what}. Last lines of {self.log_path}:\n{log_tail(self.log_path)}"


def _quoted(value: str) -> str:
    """A value as PgBouncer's auth_file wants it: in double quotes, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


def _admin_command(verb: str, database: str | None) -> Query:
    if database is None:
        return sql.SQL(verb)
    return sql.SQL("{} {}").format(sql.SQL(verb), sql.Identifier(database))
