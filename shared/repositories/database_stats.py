"""What the metrics cron reads about the database itself, in one round trip.

Row counts are the planner's estimates, `pg_class.reltuples` as the last ANALYZE or VACUUM
left it: exact `count(*)` would scan every table every five minutes. A table never analysed
(reltuples -1 since PostgreSQL 14) reports the statistics' live-tuple count instead, which
every insert and delete keeps up to date, or 0 when the statistics were reset. A partitioned
table has no estimate of its own (autovacuum never analyses the parent), so its count is the
sum over its leaf partitions (`pg_partition_tree`, which lists nothing for a plain table: a
plain table counts itself). Connections are
the server's sessions in this database (through Neon's pooler: the pooler's server
connections, which is what the compute's limit applies to).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from shared.app_tables import APP_TABLES
from shared.db import Conn
from shared.telemetry import database_operation

_STATS = text(
    f"""
    SELECT pg_database_size(current_database()),
           (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()),
           (SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active'),
           current_setting('max_connections')::int,
           (SELECT coalesce(jsonb_object_agg(t.relname, (
                       SELECT coalesce(sum(CASE WHEN l.reltuples >= 0 THEN l.reltuples::bigint
                                                ELSE coalesce(s.n_live_tup, 0) END), 0)
                         FROM (SELECT t.oid AS relid
                               UNION SELECT relid FROM pg_partition_tree(t.oid)) p
                         JOIN pg_class l ON l.oid = p.relid
                         LEFT JOIN pg_stat_user_tables s ON s.relid = l.oid
                        WHERE l.relkind <> 'p')), '{{}}'::jsonb)
              FROM ({APP_TABLES}) t)
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
def read(conn: Conn) -> DatabaseStats:
    size, connections, active, limit, rows = conn.connection.execute(_STATS).one()
    return DatabaseStats(
        size_bytes=int(size),
        connections=int(connections),
        active_connections=int(active),
        max_connections=int(limit),
        table_rows={str(name): int(count) for name, count in (rows or {}).items()},
    )
