"""Alembic environment: migrate over the direct endpoint, never through the pooler.

DDL needs a session (locks, `CREATE INDEX CONCURRENTLY`, advisory locks); Neon's pooled endpoint is
PgBouncer in transaction mode, so a `-pooler` host is refused with an explanation.

Each revision commits on its own, with its version change (`transaction_per_migration`): a
revision that fails leaves `alembic_version` naming the last one that went through, and the
schema as that one left it. (In one transaction for the whole run, a revision that builds an
index CONCURRENTLY commits everything before it, version included, and a later failure then
rolled back the version alone.) A revision with a step outside a transaction cleans up after
that step itself when it fails.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from shared.config import read_variable
from shared.db_url import parse_database_url
from shared.models.schema import metadata


class MigrationUrlError(RuntimeError):
    """No usable direct database URL; the message says what to set."""


def migration_url() -> str:
    """The config's `url`, else DIRECT_DATABASE_URL, else DATABASE_URL when it is not a pooler
    host (read as the settings read them: DATABASE_URL_UNPOOLED is the direct URL too)."""
    override = context.config.attributes.get("url")
    found = ("DIRECT_DATABASE_URL", override) if override else None
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
    engine = create_engine(migration_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            compare_server_default=True,
            transaction_per_migration=True,
        )
        # What the run starts from: `keyflash db migrate` reports it.
        context.config.attributes["starting_revision"] = (
            context.get_context().get_current_revision()
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
