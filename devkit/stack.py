"""The local stack's moving parts and their lifetimes: state dir, lock, database, Redis, env.

Everything a `keyflash` command starts is registered on one ExitStack and stopped in reverse
order, on success, on error, on Ctrl-C and on SIGTERM. For the one process that is not ours to
wait for — PostgreSQL, which pg_ctl detaches — a watchdog (devkit.watchdog) stops it if we are
killed outright.

One lock per state dir (`stack.lock`, an flock held for the command's life, with the holder's
pid and URLs inside) makes `keyflash dev` exclusive and lets other commands borrow a running
stack's database and Upstash emulator instead of starting their own. The kernel drops an flock
when its holder dies, so a lock file left by a killed process is recognised as stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from devkit.console import CliError, info
from devkit.layout import REPO_ROOT

if TYPE_CHECKING:
    from devkit.tokens import DevKey

STATE_DIR_ENV = "KEYFLASH_STATE_DIR"
DEFAULT_STATE_DIR = REPO_ROOT / ".keyflash"
DATABASE_NAME = "keyflash"
LOCK_FILE = "stack.lock"
WATCHDOG_LOG = "watchdog.log"
CLEANUP_WAIT_S = 30.0


def resolve_state_dir(explicit: Path | None = None) -> Path:
    """`--state-dir`, else $KEYFLASH_STATE_DIR, else `.keyflash/` in the repository."""
    chosen = explicit or (
        Path(os.environ[STATE_DIR_ENV]) if os.environ.get(STATE_DIR_ENV) else None
    )
    return (chosen or DEFAULT_STATE_DIR).absolute()


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a running process (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: existence is all we can check
    return stat[stat.rindex(")") + 2] != "Z"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lock_holder(state_dir: Path) -> dict[str, Any] | None:
    """What the live holder of the state dir's lock recorded, or None when nobody holds it."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_json(path)
    finally:
        os.close(fd)  # also releases the probe's shared lock
    return None


def describe_holder(holder: dict[str, Any], state_dir: Path) -> str:
    command = holder.get("command", "another keyflash command")
    where = f", serving {holder['url']}" if holder.get("url") else ""
    return f"keyflash {command} (pid {holder.get('pid', '?')}{where}) is using {state_dir}"


class StackLock:
    """An exclusive flock on `<state dir>/stack.lock`, with the holder's details as JSON."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.fd: int | None = None
        self.stale_pid: int | None = None  # set when we took over from a dead holder
        self.details: dict[str, Any] = {}

    def acquire(self, command: str, *, wait_for_cleanup: float = CLEANUP_WAIT_S) -> None:
        """Take the lock or fail with who holds it. A holder whose process is dead is a
        watchdog still cleaning up after it: wait (bounded) for that to finish."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_for_cleanup
        announced = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_json(self.path)
                pid = holder.get("pid")
                cleaning = isinstance(pid, int) and not pid_alive(pid)
                if cleaning and time.monotonic() < deadline:
                    if not announced:
                        info(f"waiting for the cleanup after keyflash (pid {pid}) to finish…")
                        announced = True
                    time.sleep(0.1)
                    continue
                if cleaning:
                    raise CliError(
                        f"the cleanup after keyflash (pid {pid}) in {self.path.parent} has not "
                        f"finished within {wait_for_cleanup:.0f} s; see "
                        f"{self.path.parent / WATCHDOG_LOG}"
                    ) from None
                if holder.get("command") == "dev" and command == "dev":
                    raise CliError(
                        f"another keyflash dev is already running (pid {pid}"
                        + (f", {holder['url']}" if holder.get("url") else "")
                        + f") with state in {self.path.parent}; stop it first (Ctrl-C) or use "
                        "another --state-dir"
                    ) from None
                raise CliError(
                    describe_holder(holder, self.path.parent) + "; wait for it to finish"
                ) from None
            if not self._still_linked(fd):
                os.close(fd)  # the previous holder removed the file after we opened it
                continue
            previous = _read_json(self.path).get("pid")
            if isinstance(previous, int) and previous != os.getpid():
                self.stale_pid = previous
            self.fd = fd
            self.update(pid=os.getpid(), command=command, started=time.time())
            return

    def _still_linked(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def update(self, **details: Any) -> None:
        """Record more about this session (URLs once known) for other commands to read."""
        if self.fd is None:
            raise RuntimeError("the stack lock is not held")
        self.details.update(details)
        data = json.dumps(self.details, indent=2).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Remove the file, then let go of the lock (in that order, so nobody locks a file
        that is about to disappear)."""
        if self.fd is None:
            return
        if self._still_linked(self.fd):
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


@dataclass(frozen=True)
class Database:
    url: str  # what the functions use (DATABASE_URL)
    direct_url: str  # what migrations use (DIRECT_DATABASE_URL)
    origin: str  # "embedded", "borrowed from keyflash dev", or the variable `url` was read from
    direct_origin: str  # the same for `direct_url` (DATABASE_URL's variable when no direct one)
    data_dir: Path | None = None

    @property
    def is_local(self) -> bool:
        from shared.db_url import parse_database_url

        try:
            return parse_database_url(self.direct_url).is_loopback
        except ValueError:
            return False

    @property
    def redacted(self) -> str:
        from shared.db_url import redact_url

        return redact_url(self.url)

    def label(self, *, direct: bool) -> str:
        """`URL (where it came from)` of the URL a command uses (`direct`: DIRECT_DATABASE_URL's,
        which DDL and dumps use), its password masked."""
        from shared.db_url import redact_url

        if direct:
            return f"{redact_url(self.direct_url)} ({self.direct_origin})"
        return f"{self.redacted} ({self.origin})"


@dataclass(frozen=True)
class Redis:
    url: str
    token: str
    origin: str
    variable: str | None = None  # the developer's variable it came from (no emulator then)

    @property
    def redacted(self) -> str:
        """The URL with any password in its user info masked, for banners and warnings."""
        from shared.db_url import redact_url

        return redact_url(self.url)


class Session:
    """What one `keyflash` command uses, acquired on demand and released in reverse order."""

    def __init__(self, state_dir: Path, command: str) -> None:
        self.state_dir = state_dir
        self.command = command
        self.cleanup = contextlib.ExitStack()
        self.lock: StackLock | None = None
        self.running: dict[str, Any] | None = None  # a live `keyflash dev` we borrow from
        self._database: Database | None = None
        self._redis: Redis | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup.close()

    def claim(self, *, exclusive: bool = False) -> None:
        """Take the state dir's lock, or (unless `exclusive`) borrow a running `keyflash dev`."""
        if self.lock is not None or self.running is not None:
            return
        holder = lock_holder(self.state_dir)
        pid = holder.get("pid") if holder else None
        if (
            not exclusive
            and holder is not None
            and holder.get("command") == "dev"
            and isinstance(pid, int)
            and pid_alive(pid)  # a dead holder's watchdog is cleaning up: acquire() waits
        ):
            self.running = holder
            return
        lock = StackLock(self.state_dir)
        lock.acquire(self.command)
        self.cleanup.callback(lock.release)
        self.lock = lock
        if lock.stale_pid is not None:
            info(f"keyflash: cleared a stale lock left by pid {lock.stale_pid}")

    def database(self, on_step: Callable[[str], None] | None = None) -> Database:
        """DATABASE_URL when set (with DIRECT_DATABASE_URL, read as the settings read them);
        else the running stack's; else the embedded server, started (initialised on first use,
        data under the state dir) until this command ends."""
        if self._database is not None:
            return self._database
        step = on_step or (lambda label: None)
        from shared.config import read_variable

        pooled = read_variable("DATABASE_URL")
        if pooled:
            from shared.db_url import unencoded_userinfo

            unpooled = read_variable("DIRECT_DATABASE_URL") or pooled
            for variable, given in dict((pooled, unpooled)).items():
                # Refused before anything prints or parses it, naming the variable at fault.
                problem = unencoded_userinfo(given)
                if problem is not None:
                    raise CliError(f"{variable} {problem}")
            self._database = Database(pooled[1], unpooled[1], pooled[0], unpooled[0])
            return self._database
        self.claim()
        if self.running is not None:
            self._refuse_unrecorded(self.running, "database_variable", "")
            url = self.running.get("database_url")
            if not url:
                raise CliError(
                    f"keyflash dev (pid {self.running.get('pid')}) is still starting; "
                    "try again once it prints 'ready'"
                )
            direct = str(self.running.get("direct_database_url") or url)
            borrowed = "borrowed from keyflash dev"
            self._database = Database(str(url), direct, borrowed, borrowed)
            return self._database
        from devkit.postgres import LocalPostgres, database_exists

        server = LocalPostgres(self.state_dir / "pgdata")
        first_run = not (server.data_dir / "PG_VERSION").exists()
        self._start_watchdog(server.data_dir)
        self.cleanup.callback(server.stop)  # before start: an interrupted start is stopped too
        step("initialising PostgreSQL (first run)" if first_run else "starting PostgreSQL")
        server.start()
        if not database_exists(server.url(), DATABASE_NAME):
            server.create_database(DATABASE_NAME)
        url = server.url(DATABASE_NAME)
        self._database = Database(url, url, "embedded", "embedded", server.data_dir)
        return self._database

    def redis(
        self, on_step: Callable[[str], None] | None = None, *, empty_ok: bool = True
    ) -> Redis:
        """UPSTASH_REDIS_REST_URL and _TOKEN when set (or the names Vercel's integration
        writes, as the settings read them); else the running stack's emulator; else an
        emulator in this process (over REDIS_URL's Redis when set, else in-memory). `on_step`
        hears which of the first and last it is, for a progress line that tells the truth.
        `empty_ok=False` (a command that reads what Redis already holds) refuses instead of
        starting an in-memory emulator, which holds nothing."""
        if self._redis is not None:
            return self._redis
        step = on_step or (lambda label: None)
        from shared.config import read_variable

        url, token = (
            read_variable("UPSTASH_REDIS_REST_URL"),
            read_variable("UPSTASH_REDIS_REST_TOKEN"),
        )
        if url and token:
            step(f"using {url[0]}")
            self._redis = Redis(url[1], token[1], url[0], variable=url[0])
            return self._redis
        if self.running is not None:
            self._refuse_unrecorded(self.running, "redis_variable", " and its token")
        if self.running is not None and self.running.get("upstash_url"):
            self._redis = Redis(
                str(self.running["upstash_url"]),
                str(self.running["upstash_token"]),
                "borrowed from keyflash dev",
            )
            return self._redis
        from devkit.upstash_emulator import UpstashEmulator

        backend = os.environ.get("REDIS_URL") or None
        if backend is None and not empty_ok:
            raise CliError(
                f"keyflash {self.command} reads Redis: set UPSTASH_REDIS_REST_URL and "
                f"UPSTASH_REDIS_REST_TOKEN (or REDIS_URL), or start keyflash dev in "
                f"{self.state_dir}"
            )
        step("starting the Upstash emulator" + (" over REDIS_URL" if backend else ""))
        emulator = UpstashEmulator(backend_url=backend)
        try:
            emulator.start()
        except (OSError, RuntimeError) as error:
            raise CliError(f"the Upstash emulator did not start: {error}") from None
        self.cleanup.callback(emulator.stop)
        origin = "Upstash emulator over REDIS_URL" if backend else "Upstash emulator, in-memory"
        self._redis = Redis(emulator.url, emulator.token, origin)
        return self._redis

    def local_s3(self) -> dict[str, str]:
        """Start the local S3 (devkit.local_s3) for this command's life and return the env the
        functions need for it; {} when the developer set BACKUP_BUCKET (their own S3)."""
        if os.environ.get("BACKUP_BUCKET"):
            return {}
        from devkit.local_s3 import LocalS3Server

        server = LocalS3Server()
        self.cleanup.callback(server.stop)  # before start: a half-started server is stopped
        return server.start().env()

    def _refuse_unrecorded(self, running: dict[str, Any], field: str, also: str) -> None:
        """The running stack uses a setting from its own environment, which its lock does not
        record (it holds a password or token): this command needs it in its own, or it would
        use another database or Redis than the stack's."""
        variable = running.get(field)
        if variable:
            raise CliError(
                f"keyflash dev (pid {running.get('pid')}) uses {variable} from its own "
                f"environment, which {LOCK_FILE} does not record (it would hold a secret): set "
                f"{variable}{also} for keyflash {self.command} too"
            )

    def stack_env(self) -> dict[str, str]:
        """What the running `keyflash dev` on this state dir added to the functions'
        environment (its `APP_URL`, local S3 and CORS origins), for commands that borrow it."""
        holder = self.running
        if holder is None:
            holder = lock_holder(self.state_dir) or {}
            pid = holder.get("pid")
            if holder.get("command") != "dev" or not (isinstance(pid, int) and pid_alive(pid)):
                return {}
        extra = holder.get("stack_env")
        if not isinstance(extra, dict):
            return {}
        return {str(name): str(value) for name, value in extra.items()}

    def _start_watchdog(self, data_dir: Path) -> None:
        """Start the process that stops PostgreSQL if we die without doing it ourselves."""
        if self.lock is None or self.lock.fd is None:
            raise RuntimeError("the watchdog guards a locked session")
        from devkit.watchdog import DONE

        read_end, write_end = os.pipe()
        log = open(self.state_dir / WATCHDOG_LOG, "ab")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "devkit.watchdog", "--owner", str(os.getpid()),
                    "--lock", str(self.lock.path), "--data-dir", str(data_dir),
                ],
                stdin=read_end,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(self.lock.fd,),
                start_new_session=True,  # a terminal's Ctrl-C must not reach it
                cwd=REPO_ROOT,
            )  # fmt: skip
        finally:
            os.close(read_end)
            log.close()

        def finish() -> None:
            with contextlib.suppress(OSError):
                os.write(write_end, DONE)
            os.close(write_end)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        self.cleanup.callback(finish)


def migrate_and_seed(database: Database, on_step: Callable[[str], None]) -> str | None:
    """Bring the schema to head; seed demo data into a new local database. Returns what the
    seed did (None when nothing was seeded)."""
    from devkit.migrate import upgrade_head
    from devkit.seed import seed

    on_step("migrating to head")
    upgrade_head(database.direct_url)
    if not database.is_local:
        return None
    on_step("seeding demo data")
    with shared_database(database):
        summary = seed()
    return None if summary is None else str(summary)


@contextlib.contextmanager
def shared_database(database: Database) -> Iterator[None]:
    """Point `shared` (settings, engine) at `database` for the block; restore after."""
    from shared.config import every_spelling, get_settings
    from shared.db import dispose_engine

    env = every_spelling({"DATABASE_URL": database.url, "DIRECT_DATABASE_URL": database.direct_url})
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engine()
    try:
        yield
    finally:
        dispose_engine()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def function_env(
    database: Database,
    redis: Redis,
    key: DevKey,
    *,
    stack_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment the functions run with locally: ours where the stack decides (with
    `stack_env`: what `keyflash dev` added, its `APP_URL`, local S3 and CORS origins), under
    every spelling the developer exported too, and the developer's own values kept for everything
    else."""
    from devkit.tokens import DEV_ISSUER
    from shared.config import every_spelling

    env = every_spelling(
        {
            "DATABASE_URL": database.url,
            "DIRECT_DATABASE_URL": database.direct_url,
            "UPSTASH_REDIS_REST_URL": redis.url,
            "UPSTASH_REDIS_REST_TOKEN": redis.token,
            "CLERK_JWT_KEY": key.public_pem,
            "CLERK_ISSUER": DEV_ISSUER,
        }
    )
    defaults = {
        "APP_ENV": "development",
        "KEYWORD_API_PROVIDER": "mock",
        # One process serves every function here; Lambda's pool of one would serialise them.
        "DB_POOL_SIZE": "10",
    }
    for name, value in defaults.items():
        env[name] = os.environ.get(name) or value
    env.update(stack_env or {})
    return env


def recordable(stack_env: dict[str, str]) -> dict[str, str]:
    """`stack_env` as the lock records it: without a CLERK_WEBHOOK_SECRET from the developer's
    environment (a secret; commands that borrow the stack read their own environment)."""
    own = os.environ.get("CLERK_WEBHOOK_SECRET")
    return {k: v for k, v in stack_env.items() if not (k == "CLERK_WEBHOOK_SECRET" and v == own)}


def cors_env(origins: list[str]) -> dict[str, str]:
    """ALLOWED_ORIGINS with `--cors-origin`'s origins added to the developer's own, or {}."""
    if not origins:
        return {}
    current = [o.strip() for o in os.environ.get("ALLOWED_ORIGINS", "").split(",") if o.strip()]
    merged = list(dict.fromkeys(current + [o.rstrip("/") for o in origins]))
    return {"ALLOWED_ORIGINS": ",".join(merged)}


def clerk_webhook_env(state_dir: Path) -> dict[str, str]:
    """CLERK_WEBHOOK_SECRET for the functions: the developer's own (a Clerk instance's endpoint
    pointed at this stack), else the state dir's dev secret, so signed Clerk events are applied
    locally rather than refused for a missing setting."""
    from devkit.tokens import dev_webhook_secret

    own = os.environ.get("CLERK_WEBHOOK_SECRET")
    return {"CLERK_WEBHOOK_SECRET": own or dev_webhook_secret(state_dir)}


def clerk_key_env() -> dict[str, str]:
    """How the functions verify session tokens when the developer exported a Clerk instance's
    `CLERK_JWKS_URL`: with that JWKS alone (no dev key, which would win over it, and their own
    `CLERK_ISSUER` or none), as a deployment with only that setting does. {} otherwise: the
    dev key of `function_env`."""
    from shared.config import every_spelling, read_variable

    jwks = read_variable("CLERK_JWKS_URL")
    if jwks is None:
        return {}
    issuer = read_variable("CLERK_ISSUER")
    return every_spelling(
        {
            "CLERK_JWKS_URL": jwks[1].strip(),
            "CLERK_JWT_KEY": "",
            "CLERK_ISSUER": issuer[1] if issuer else "",
        }
    )


def jwks_url_of(env: dict[str, str]) -> str | None:
    """The `CLERK_JWKS_URL` a stack's environment verifies tokens with (see `clerk_key_env`)."""
    from shared.config import setting_of

    return next((v for k, v in env.items() if setting_of(k) == "clerk_jwks_url" and v), None)


def apply_env(env: dict[str, str]) -> None:
    """Export `env` for in-process functions; cached settings and engine start afresh."""
    os.environ.update(env)
    from shared.config import get_settings
    from shared.db import dispose_engine

    get_settings.cache_clear()
    dispose_engine()


def refuse_production() -> None:
    if os.environ.get("APP_ENV", "").strip().lower() == "production":
        raise CliError(
            "APP_ENV=production is set: the local stack is for development (unset APP_ENV)"
        )


@contextlib.contextmanager
def bound_socket(host: str, port: int) -> Iterator[Any]:
    """A TCP socket bound to host:port before anything slow starts, so a taken port fails
    fast and nobody can take it while we start up."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
    except socket.gaierror as error:
        raise CliError(f"cannot resolve --host {host}: {error.strerror}", code=2) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {port} on {host} is already in use; stop whatever listens there or "
                "pick another with --port"
            ) from None
        raise CliError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    try:
        yield sock
    finally:
        sock.close()
