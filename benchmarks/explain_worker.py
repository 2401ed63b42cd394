"""The `explain` worker task: every endpoint's SQL under EXPLAIN (ANALYZE, BUFFERS) (section 15).

Runs inside `python -m benchmarks.worker explain` against the section's scale database. Each
scenario of `benchmarks.scenarios` (and a generic request for any route without one) runs in a
fresh container and then warm, with the round-trips recorder on; every distinct statement it sent
is then run again as `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) <statement>` with its recorded
parameters (generated ids made fresh in inserts), inside a transaction that is rolled back.
Transaction control (`BEGIN`, `COMMIT`, `SET LOCAL`) is not explained. The materialized
reports' defining queries (what the rollup cron's REFRESH reads) are explained too. The
`api_usage` row each request sends after its response goes around SQLAlchemy and is not
recorded: a single-row INSERT, whose cost is the indexes it maintains (listed by the section),
not a plan.
"""

from __future__ import annotations

from typing import Any

from benchmarks import scenarios
from benchmarks.scenarios import Fixtures, Tokens
from benchmarks.worker import (
    RECORDER,
    Env,
    _fresh_ids,
    bare_connection,
    describe_sql,
    http_functions,
    recorded_call,
    routes_of,
)

# The materialized reports' queries, which the rollup cron's REFRESH runs (label prefix).
REFRESH = "report refresh:"
_NOT_EXPLAINED = ("BEGIN", "COMMIT", "ROLLBACK", "SET", "SAVEPOINT", "RELEASE", "SHOW")


def task_explain(params: dict[str, Any]) -> dict[str, Any]:
    tokens = Tokens(params["private_pem"])
    fixtures = Fixtures(**params["fixtures"])
    large_rows = int(params["large_rows"])
    RECORDER.install()
    recorded: dict[str, tuple[str, Any]] = {}  # statement text -> (first endpoint, params)
    errors: list[str] = []
    for scenario in _all_scenarios():
        for cold in (True, False):
            try:
                with Env(scenario.env):
                    recorded_call(scenario, tokens, fixtures, cold=cold)
            except Exception as error:  # report and go on: one broken scenario is not the run
                errors.append(f"{scenario.name}: {type(error).__name__}: {error}")
                continue
            for statement, parameters in RECORDER.statements:
                recorded.setdefault(statement, (scenario.name, parameters))
    conn = bare_connection()
    try:
        sizes = _table_rows(conn)
        statements = []
        for statement, (endpoint, parameters) in recorded.items():
            verb = describe_sql(statement).split(" ", 1)[0].rstrip(";").upper()
            if verb in _NOT_EXPLAINED:
                continue
            if verb in ("INSERT", "WITH"):  # an insert inserts anew, not into its own key
                parameters = _fresh_ids(parameters)
            statements.append(_explain(conn, endpoint, statement, parameters, sizes, large_rows))
        for view, definition in _report_queries(conn):
            statements.append(
                _explain(conn, f"{REFRESH} {view}", definition, None, sizes, large_rows)
            )
        unused = _unused_indexes(conn)
    finally:
        conn.close()
    return {"statements": statements, "errors": errors, "unused_indexes": unused}


def _all_scenarios() -> list[scenarios.Scenario]:
    covered = {(s.function, s.method, s.route) for s in scenarios.ENDPOINTS}
    generic = [
        scenarios.generic(function, method, route)
        for function in http_functions()
        for method, route in routes_of(function)
        if (function, method, route) not in covered
    ]
    return [*scenarios.ENDPOINTS, *generic]


def _explain(
    conn: Any,
    endpoint: str,
    statement: str,
    parameters: Any,
    sizes: dict[str, tuple[int, str]],
    large_rows: int,
) -> dict[str, Any]:
    row: dict[str, Any] = {"endpoint": endpoint, "statement": describe_sql(statement)}
    try:
        with conn.transaction(force_rollback=True):
            plan_row = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters
            ).fetchone()
    except Exception as error:  # a statement that needs its transaction's earlier rows
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        return row
    document = plan_row[0][0]
    nodes = list(_nodes(document["Plan"]))
    row["ms"] = round(document["Execution Time"], 3)
    row["buffers"] = sum(
        document["Plan"].get(key, 0) for key in ("Shared Hit Blocks", "Shared Read Blocks")
    )
    row["scans"] = sorted({_scan(node) for node in nodes if "Relation Name" in node})
    row["seq_scans"] = sorted(
        {
            sizes[node["Relation Name"]][1]
            for node in nodes
            if node["Node Type"] == "Seq Scan"
            and sizes.get(node["Relation Name"], (0, ""))[0] >= large_rows
        }
    )
    return row


def _report_queries(conn: Any) -> list[tuple[str, str]]:
    """Each materialized view's defining query: what refreshing the report reads."""
    rows = conn.execute(
        "SELECT matviewname, definition FROM pg_matviews WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    return [(name, definition.rstrip().rstrip(";")) for name, definition in rows]


def _nodes(plan: dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _scan(node: dict[str, Any]) -> str:
    index = node.get("Index Name")
    return f"{node['Node Type']} {node['Relation Name']}" + (f" using {index}" if index else "")


def _table_rows(conn: Any) -> dict[str, tuple[int, str]]:
    """Estimated rows of every table and partition (ANALYZE ran after loading), with the table
    it belongs to: its partitioned parent's name, or its own."""
    rows = conn.execute(
        "SELECT c.relname, c.reltuples::bigint, "
        "coalesce(pg_partition_root(c.oid)::regclass::text, c.relname) FROM pg_class c "
        "WHERE c.relkind = 'r' AND c.relnamespace NOT IN "
        "('pg_catalog'::regnamespace, 'information_schema'::regnamespace, "
        "'pg_toast'::regnamespace)"
    ).fetchall()
    return {name: (max(int(count), 0), root) for name, count, root in rows}


def _unused_indexes(conn: Any) -> list[dict[str, Any]]:
    """Indexes nothing in the run scanned (the section reset the statistics after loading).

    The engine's connection flushes its statistics when it goes idle after this request.
    """
    from sqlalchemy import text

    from shared import db

    db.run(lambda conn: conn.session.execute(text("SELECT pg_stat_force_next_flush()")))
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        """
        SELECT s.relname, s.indexrelname, pg_relation_size(s.indexrelid),
               i.indisunique OR i.indisprimary
        FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
        WHERE s.idx_scan = 0 ORDER BY pg_relation_size(s.indexrelid) DESC
        """
    ).fetchall()
    return [
        {"table": table, "index": index, "bytes": size, "unique": unique}
        for table, index, size, unique in rows
    ]
