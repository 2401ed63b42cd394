"""What the metrics cron reads about the database itself, in one round trip.

Row counts are the planner's estimates (`pg_class.reltuples`, or the statistics collector's
live-tuple count for a table never analysed): exact `count(*)` would scan every table every
five minutes. Connections are the server's sessions in this database (through Neon's pooler:
the pooler's server connections, which is what the compute's limit applies to).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.telemetry import database_operation

_STATS = text(
    """
    SELECT pg_database_size(current_database()),
           (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
           (SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active'),
           current_setting('max_connections')::int,
           (SELECT coalesce(jsonb_object_agg(c.relname,
                       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint
                            ELSE coalesce(s.n_live_tup, 0) END), '{}'::jsonb)
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
               AND c.relname <> 'alembic_version')
    """
)


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    size_bytes: int
    connections: int
    active_connections: int
    max_connections: int
    table_rows: dict[str, int]  # estimates, by table name


@database_operation("databaseStats")
def read(session: Session) -> DatabaseStats:
    size, connections, active, limit, rows = session.execute(_STATS).one()
    return DatabaseStats(
        size_bytes=int(size),
        connections=int(connections),
        active_connections=int(active),
        max_connections=int(limit),
        table_rows={str(name): int(count) for name, count in (rows or {}).items()},
    )
