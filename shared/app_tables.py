"""The app's own tables, as the catalog holds them: one definition for everything that walks them.

Every relation in `public` that holds rows of its own: plain and partitioned tables, not a
partition attached there by hand (its rows are its parent's), not Alembic's bookkeeping. The
backup dumps these and the metrics cron counts them; both select `FROM ({APP_TABLES}) t`.
"""

APP_TABLES = """
    SELECT c.oid, c.relname
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND c.relname <> 'alembic_version'
"""
