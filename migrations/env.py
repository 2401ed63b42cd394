"""Alembic environment: migrate over the direct endpoint, never through the pooler.

DDL needs a session (locks, `CREATE INDEX CONCURRENTLY`, advisory locks); Neon's pooled endpoint is
PgBouncer in transaction mode, so a `-pooler` host is refused with an explanation.

Each revision commits on its own, with its version change (`transaction_per_migration`): a
revision that fails leaves `alembic_version` naming the last one that went through. (In one
transaction for the whole run, a revision that builds an index CONCURRENTLY commits everything
before it, version included, and a later failure then rolled back the version alone.) A revision
in one transaction leaves nothing of itself when it fails; one with steps outside a transaction
(CONCURRENTLY) may leave the steps before the failing one done, drops a failed build's INVALID
index, and is written so that running it again finishes it.

Two runs at once (two deploys) are serialised by a session-level advisory lock taken before
Alembic reads the version: the second waits, then finds the first's work done. It waits at most
KEYFLASH_MIGRATION_LOCK_WAIT seconds, then fails naming the holder. The run releases the lock
itself: behind an unflagged transaction pooler the server session (and a lock on it) outlives
the client. A run that finds itself moved off the session holding the lock refuses to go on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.exc import SQLAlchemyError

from shared.config import read_variable
from shared.db_url import parse_database_url
from shared.models.schema import metadata

# pg_advisory_lock's key for "a migration runs on this database" (the bytes of "kfmigrat").
MIGRATION_LOCK = 0x6B666D6967726174
LOCK_POLL = 0.5
# How long a run waits for another's lock before failing (seconds; the variable overrides it).
LOCK_WAIT_VARIABLE = "KEYFLASH_MIGRATION_LOCK_WAIT"
LOCK_WAIT_DEFAULT = 300.0
POOLER_HINT = (
    "migrations need a session: use the direct host (without -pooler), and flag any other "
    "transaction pooler's URL with ?pgbouncer=true so that it is refused before connecting"
)
# The migration session's application_name: a run waiting for the lock names its holder by it.
APPLICATION_NAME = "keyflash-migrate"


class MigrationUrlError(RuntimeError):
    """No usable direct database URL; the message says what to set."""


def migration_url() -> str:
    """The config's `url` (named by its `url_variable`), else DIRECT_DATABASE_URL, else
    DATABASE_URL when it is not a pooler host (read as the settings read them:
    DATABASE_URL_UNPOOLED is the direct URL too)."""
    override = context.config.attributes.get("url")
    named = context.config.attributes.get("url_variable", "DIRECT_DATABASE_URL")
    found = (named, override) if override else None
    found = found or read_variable("DIRECT_DATABASE_URL") or read_variable("DATABASE_URL")
    if not found:
        raise MigrationUrlError(
            "Set DIRECT_DATABASE_URL to the direct (non-pooler) connection string, e.g. "
            "postgresql://user:password@ep-cool-name-123.eu-central-1.aws.neon.tech/keyflash"
        )
    variable, direct = found
    target = parse_database_url(direct, variable=variable)
    if target.is_pooler:
        raise MigrationUrlError(
            f"{variable} points at a transaction pooler ({target.host}). Migrations need a "
            "session-holding connection: use the direct host (without -pooler) in "
            "DIRECT_DATABASE_URL."
        )
    return target.sqlalchemy_url


def run_migrations_offline() -> None:
    context.configure(
        url=migration_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(
        migration_url(),
        poolclass=pool.NullPool,
        connect_args={"application_name": APPLICATION_NAME},
    )
    with engine.connect() as connection:
        _lock(connection)
        try:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                compare_server_default=True,
                transaction_per_migration=True,
            )
            # What the run starts from, read under the lock: `keyflash db migrate` reports it.
            context.config.attributes["starting_revision"] = (
                context.get_context().get_current_revision()
            )
            with context.begin_transaction():
                context.run_migrations()
        except BaseException:
            # A lost session took the lock with it; the run's own error says more than ours.
            if not connection.invalidated:
                with contextlib.suppress(SQLAlchemyError):
                    _unlock(connection)
            raise
        if not _unlock(connection):
            raise CommandError(
                "the migration went through, but its lock was no longer on this run's server "
                f"session: a transaction pooler moved it between sessions ({POOLER_HINT}). "
                f"The lock is {_holder(connection, how_to_end=True)}"
            )
    engine.dispose()


def _lock(connection: Connection) -> None:
    """Wait for any other migration of this database to finish (at most the lock wait), then
    hold the lock for the session (across the revisions' transactions), checking that the
    session is still ours in the next transaction: a transaction pooler hands it to others.

    Asked for again every LOCK_POLL seconds, outside any transaction, rather than waited for in
    `pg_advisory_lock`: a waiting statement holds a snapshot, and CREATE INDEX CONCURRENTLY in
    the run holding the lock waits for every older snapshot (a deadlock)."""
    wait = _lock_wait()
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        taken, locker = connection.execute(
            text("SELECT pg_try_advisory_lock(:key), pg_backend_pid()"), {"key": MIGRATION_LOCK}
        ).one()
        connection.commit()
        if taken:
            break
        if time.monotonic() >= deadline:
            raise CommandError(
                f"another migration of this database did not finish within {wait:g} s "
                f"({LOCK_WAIT_VARIABLE}): the lock is {_holder(connection, how_to_end=True)}. "
                "If no migration is running, that session is stuck or a pooler kept it"
            )
        if not waiting:
            # On stderr: Alembic's logger has only a NullHandler unless a logging config is
            # loaded, and an operator whose deploy seems to hang needs to see why.
            print(
                f"another migration of this database is running ({_holder(connection)}): "
                f"waiting for it, at most {wait:g} s ({LOCK_WAIT_VARIABLE})",
                file=sys.stderr,
                flush=True,
            )
            waiting = True
        time.sleep(LOCK_POLL)
    if connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != locker:
        connection.commit()
        raise CommandError(
            f"the migration lock was taken by server session {locker}, and the run's next "
            f"transaction went to another: a transaction pooler sits in between ({POOLER_HINT}). "
            f"The lock is {_holder(connection, how_to_end=True)}"
        )
    connection.commit()


def _lock_wait() -> float:
    """The longest wait for another run's lock, in seconds (KEYFLASH_MIGRATION_LOCK_WAIT)."""
    given = os.environ.get(LOCK_WAIT_VARIABLE, "").strip()
    try:
        wait = float(given) if given else LOCK_WAIT_DEFAULT
    except ValueError:
        wait = -1.0
    if not wait >= 0:  # also NaN
        raise CommandError(f"{LOCK_WAIT_VARIABLE} must be a number of seconds, not {given!r}")
    return wait


def _unlock(connection: Connection) -> bool:
    """Release the lock; False when this session did not hold it (a pooler moved the run)."""
    connection.rollback()
    released = connection.execute(
        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK}
    ).scalar_one()
    connection.commit()
    return bool(released)


def _holder(connection: Connection, *, how_to_end: bool = False) -> str:
    """Who holds the migration lock: pid, application_name and state, from pg_stat_activity
    (`how_to_end`: and the statement that ends that session, for a run giving up on it)."""
    row = connection.execute(
        text(
            "SELECT a.pid, a.application_name, a.state FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid)"
        ),
        {"high": MIGRATION_LOCK >> 32, "low": MIGRATION_LOCK & 0xFFFFFFFF},
    ).first()
    connection.commit()
    if row is None:  # let go between the two questions
        return "held by a session that has just let go"
    pid, application, state = row
    held = f"held by pid {pid}, application_name {application or '(none)'!r}, {state}"
    return f"{held}; SELECT pg_terminate_backend({pid}) ends that session" if how_to_end else held


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
