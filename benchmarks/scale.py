"""6. Scale: the monthly usage reset over 1,000,000 users, history pruning over 5,000,000 rows,
and the legacy backfill of 100,000 records.

Data is generated in the database (`INSERT … SELECT generate_series`), not timed as part of the
jobs (its time is reported apart). Each job runs the cron module when it exists
(`functions/cron/reset_monthly_usage.py`, `functions/cron/prune.py`, run through its Lambda
handler in a worker, every statement and transaction timed); otherwise this file's batched SQL
below — keyset batches, one autocommit statement each — and the report says which ran.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.sql

from benchmarks.core import ROOT, Context, WorkerError, run_worker, target

if TYPE_CHECKING:
    from shared.repositories.partitions import Layout

BATCH = 10_000
RETENTION_DAYS = 365  # fallback prune: history older than a year

GENERATE_USERS = """
INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
                   "monthlyResetAt", "createdAt", "updatedAt", "trialEndsAt")
SELECT 'cscale' || lpad(g::text, 19, '0'),
       'scale' || g || '@bench.test',
       (CASE WHEN g %% 10 = 0 THEN 'PRO' WHEN g %% 97 = 0 THEN 'ENTERPRISE'
             ELSE 'FREE' END)::"UserTier",
       g %% 700, g %% 5000,
       date_trunc('month', now() AT TIME ZONE 'UTC') - interval '12 days',
       now() - interval '200 days', now() - interval '40 days', now() - interval '190 days'
FROM generate_series(1, %(n)s) AS g
"""

GENERATE_HISTORY = """
INSERT INTO search_history (id, "userId", keywords, location, language, "matchType", provider,
                            "cacheHit", "responseTime", "keywordCount", "avgVolume",
                            "totalVolume", "searchedAt")
SELECT 'hscale' || lpad(g::text, 19, '0'),
       CASE WHEN g %% 5 = 0 THEN NULL
            ELSE 'cscale' || lpad((1 + g %% %(users)s)::text, 19, '0') END,
       ARRAY['keyword ' || (g %% 5000), 'keyword ' || (g %% 777)],
       'US', 'en', 'phrase', CASE WHEN g %% 3 = 0 THEN 'dataforseo' ELSE 'mock' END,
       g %% 2 = 0, 50 + g %% 400, 2, g %% 9000, (g %% 9000) * 2,
       now() AT TIME ZONE 'UTC' - (g %% 730) * interval '1 day' - (g %% 86400) * interval '1 second'
FROM generate_series(1, %(n)s) AS g
"""

RESET_BATCH = """
WITH batch AS (
    SELECT id FROM users WHERE id > %(after)s ORDER BY id LIMIT %(size)s
), reset AS (
    UPDATE users u
    SET "keywordSearchesThisMonth" = 0, "monthlyResetAt" = %(now)s, "updatedAt" = %(now)s
    FROM batch
    WHERE u.id = batch.id AND u."monthlyResetAt" < %(month_start)s
    RETURNING 1
)
SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM reset)
"""

PRUNE_BATCH = """
WITH doomed AS (
    SELECT id FROM search_history WHERE "searchedAt" < %(cutoff)s LIMIT %(size)s
)
DELETE FROM search_history h USING doomed WHERE h.id = doomed.id
"""


def run(ctx: Context) -> dict[str, Any]:
    users = ctx.pick(1_000_000, 2_000)
    history = ctx.pick(5_000_000, 10_000)
    legacy = ctx.pick(100_000, 1_000)
    crons = set(ctx.crons)
    result: dict[str, Any] = {"sizes": {"users": users, "history": history, "legacy": legacy}}
    with ctx.stack.connect() as conn:
        ctx.log(f"  scale: generating {users:,} users")
        result["generate_users_s"] = _timed(conn, GENERATE_USERS, {"n": users})
        conn.execute("ANALYZE users")
        result["reset_monthly_usage"] = _job(ctx, conn, "reset_monthly_usage", crons, users)
        ctx.log(f"  scale: generating {history:,} history rows")
        # Every userId refers to a generated user: skip the per-row foreign-key checks while
        # generating (superuser only; the embedded server's user is one).
        replica = _try(conn, "SET session_replication_role = replica")
        params = {"n": history, "users": users}
        result["generate_history_s"] = _timed(conn, GENERATE_HISTORY, params)
        if replica:
            conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("ANALYZE search_history")
        result["prune"] = _job(ctx, conn, "prune", crons, history)
        if result["prune"].get("ran", "").startswith("functions/"):
            result["prune"]["ran"] += "; rows in the legacy partition: batched deletes"
        result["prune_partitioned"] = _partitioned_prune(ctx, conn, crons, params)
    result["legacy_backfill"] = _legacy(ctx, legacy)
    hot = result.get("prune_partitioned", {}).get("hot_paths")
    result["targets"] = [_hot_paths_target(hot)] if hot else []
    return result


# "No slower" with room for the spread of these medians between runs of one build (about 5 %).
HOT_PATH_LIMIT = 1.05


def _hot_paths_target(hot: dict[str, Any]) -> dict[str, Any]:
    """The app's hot statements on the partitioned logs against a plain table: the usage insert,
    and the history list as the app sends it (`APP_LIST`), for both accounts on both lanes."""
    ratios = {"usage insert": hot["insert_ratio"]} | {
        f"history list, {kind}, {lane}": hot[f"list_{APP_LIST}_{kind}_{lane}_ratio"]
        for kind in ("active", "light")
        for lane in ("prepared", "unprepared")
    }
    worst = max(ratios, key=lambda name: ratios[name])
    return target(
        f"hot statements on the partitioned logs <= {HOT_PATH_LIMIT}x a plain table",
        ratios[worst] <= HOT_PATH_LIMIT,
        ", ".join(f"{name} x{ratio}" for name, ratio in ratios.items()),
        detail=f"worst: {worst}",
    )


ACTIVE_ACCOUNTS = 20  # cscale…01 to …20: a page fills from their newest partition
GENERATE_ACTIVE = """
INSERT INTO search_history (id, "userId", keywords, location, language, "matchType", provider,
                            "cacheHit", "responseTime", "keywordCount", "avgVolume",
                            "totalVolume", "searchedAt")
SELECT 'hactive' || lpad(g::text, 19, '0'),
       'cscale' || lpad((1 + g %% %(accounts)s)::text, 19, '0'),
       ARRAY['keyword ' || (g %% 5000)], 'US', 'en', 'phrase', 'mock',
       g %% 2 = 0, 50 + g %% 400, 1, g %% 9000, g %% 9000,
       now() AT TIME ZONE 'UTC' - (g %% 30) * interval '1 day' - (g %% 86400) * interval '1 second'
FROM generate_series(1, %(n)s) AS g
"""


def _partitioned_prune(
    ctx: Context, conn: psycopg.Connection[Any], crons: set[str], params: dict[str, Any]
) -> dict[str, Any]:
    """The same rows again, this time in the partitions the cron lays out (`partitions.LAYOUTS`),
    and the same cron: what was a batched delete (`prune` above: the rows sat in the legacy
    partition the migration made of the old table) becomes dropping whole partitions. The hot
    statements are then timed on what retention keeps."""
    from shared.repositories import partitions

    partitioned = conn.execute(
        "SELECT to_regclass('partitions.search_history_legacy') IS NOT NULL"
    ).fetchone()
    if "prune" not in crons or partitioned is None or not partitioned[0]:
        return {"ran": "not available", "reason": "search_history is not partitioned"}
    layout = partitions.LAYOUTS["search_history"]
    ctx.log(f"  scale: the same history in {layout.unit}ly partitions")
    conn.execute("TRUNCATE search_history")
    # Every range so far (the legacy partition, the migration's months, the first run's ranges
    # ahead) is empty now: the layout's periods take their place, from two years back (what the
    # generated rows cover) to as far ahead as the cron makes them, as after years of the cron.
    for (name,) in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'search_history'::regclass AND c.relname <> 'search_history_default'"
    ).fetchall():
        conn.execute(f"DROP TABLE partitions.{name}")
    now = datetime.now(UTC)
    periods = _lay_out(conn, layout, now - timedelta(days=731), now)
    replica = _try(conn, "SET session_replication_role = replica")
    generated = _timed(conn, GENERATE_HISTORY, params)
    active = ctx.pick(1_000, 50) * ACTIVE_ACCOUNTS
    conn.execute(GENERATE_ACTIVE, {"accounts": ACTIVE_ACCOUNTS, "n": active})
    if replica:
        conn.execute("SET session_replication_role = DEFAULT")
    conn.execute("ANALYZE search_history")
    before = _count(conn)
    outcome = _job(ctx, conn, "prune", crons, params["n"] + active)
    after_rows = _count(conn)
    dropped = outcome.get("result", {}).get("dropped", {}).get("search_history", [])
    removed = before - after_rows
    seconds = outcome.get("seconds")
    hot = _hot_paths(ctx, conn, params["users"], now)
    return {
        **outcome,
        "ran": f"{outcome.get('ran')}; {len(dropped)} {layout.unit}ly partitions dropped",
        "rows_changed": removed,
        "changed_per_s": round(removed / seconds) if seconds else None,
        "generate_history_s": generated,
        "active_rows": active,
        "hot_paths": hot,
        "unit": layout.unit,
        "periods_created": periods,
        "partitions_dropped": len(dropped),
        "note": f"rows changed: rows gone (dropped with their partitions, or deleted in "
        f"batches); a {layout.unit} goes once it is wholly past retention",
    }


def _lay_out(conn: psycopg.Connection[Any], layout: Layout, first: datetime, now: datetime) -> int:
    """Ranges of `layout`'s periods for its table, from the one holding `first` to
    `layout.ahead` periods after `now`'s; returns how many."""
    start, made = layout.start(first), 0
    end = layout.start(now)
    for _ in range(layout.ahead + 1):
        end = layout.after(end)
    while start < end:
        after = layout.after(start)
        conn.execute(
            f"CREATE TABLE partitions.{layout.name(start)} PARTITION OF {layout.table} "
            f"FOR VALUES FROM ('{start}') TO ('{after}')"
        )
        start, made = after, made + 1
    return made


# A user's newest 21 as the app reads it (`search_history.list_for_user`: the server function of
# revision 0015, whose plans the server keeps per connection) and as a statement on each table:
# the plain copy, the partitioned table (what the app sent before 0015) and the monthly copy
# (the layout before quarters). The limit is a bound parameter: written in the SQL, a prepared
# statement's generic plan sorts every row the account has
# (docs/performance.md#retention-by-partitions).
HOT_LIST = (
    'SELECT * FROM {table} WHERE "userId" = %(user)s ORDER BY "searchedAt" DESC, id DESC '
    "LIMIT %(limit)s"
)
LISTS = {
    "plain": HOT_LIST.format(table="bench_plain_history"),
    "statement": HOT_LIST.format(table="search_history"),
    "function": (
        "SELECT * FROM search_history_page(%(user)s, %(limit)s, NULL::timestamp, NULL::text) "
        'ORDER BY "searchedAt" DESC, id DESC'
    ),
    "monthly": HOT_LIST.format(table="bench_monthly_history"),
}
APP_LIST = "function"  # what `list_for_user` sends, on either lane
LISTED_TABLES = {
    "plain": "bench_plain_history",
    "statement": "search_history",
    "monthly": "bench_monthly_history",
}
HOT_INSERT = (
    'INSERT INTO {table} (id, "userId", endpoint, method, "statusCode", duration, "ipAddress", '
    "\"userAgent\", timestamp) VALUES (%(id)s, %(user)s, '/api/keywords', 'POST', 200, 87, "
    "'203.0.113.0', 'bench', now() AT TIME ZONE 'UTC') ON CONFLICT ({key}) DO NOTHING"
)


def _hot_paths(
    ctx: Context, conn: psycopg.Connection[Any], users: int, now: datetime
) -> dict[str, Any]:
    """The hot statements on the partitioned tables against plain copies with Prisma's key and
    indexes, same rows, interleaved call by call: the history list (a user's newest 21) and the
    usage insert. The list also runs on the same rows in monthly partitions (the layout before
    quarters), for two kinds of account (`active`: a page from the last month; `light`: a few
    searches over the retention, most accounts), prepared on a direct connection and unprepared
    through PgBouncer (the local pooler cannot prepare; Neon's can). Medians in ms."""
    from shared.config import Settings
    from shared.repositories import partitions

    ctx.log("  scale: hot paths, plain vs partitioned (and monthly)")
    conn.execute("CREATE TABLE bench_plain_history (LIKE search_history INCLUDING DEFAULTS)")
    conn.execute("INSERT INTO bench_plain_history SELECT * FROM search_history")
    conn.execute("ALTER TABLE bench_plain_history ADD PRIMARY KEY (id)")
    conn.execute('CREATE INDEX ON bench_plain_history ("userId", "searchedAt")')
    conn.execute("ANALYZE bench_plain_history")
    # The monthly layout keeps the months from the cutoff's (a quarter may start up to two
    # months earlier): those rows, the app's key and list index, and a DEFAULT partition.
    monthly = replace(
        partitions.LAYOUTS["search_history"], table="bench_monthly_history", unit="month", ahead=2
    )
    days = Settings.retention_search_history_days
    first = monthly.start(now - timedelta(days=days))
    conn.execute(
        "CREATE TABLE bench_monthly_history (LIKE search_history INCLUDING DEFAULTS) "
        'PARTITION BY RANGE ("searchedAt")'
    )
    conn.execute('ALTER TABLE bench_monthly_history ADD PRIMARY KEY (id, "searchedAt")')
    conn.execute(
        'CREATE INDEX ON bench_monthly_history ("userId", "searchedAt") '
        'INCLUDE (provider, "responseTime", "cacheHit")'
    )
    months = _lay_out(conn, monthly, first, now)
    conn.execute(
        "CREATE TABLE partitions.bench_monthly_history_default PARTITION OF bench_monthly_history "
        "DEFAULT"
    )
    conn.execute(
        'INSERT INTO bench_monthly_history SELECT * FROM search_history WHERE "searchedAt" >= %s',
        (first,),
    )
    conn.execute("ANALYZE bench_monthly_history")
    conn.execute("CREATE TABLE bench_plain_usage (LIKE api_usage INCLUDING DEFAULTS)")
    conn.execute("ALTER TABLE bench_plain_usage ADD PRIMARY KEY (id)")
    for columns in ('"userId", timestamp', "endpoint, timestamp", '"ipAddress", timestamp'):
        conn.execute(f"CREATE INDEX ON bench_plain_usage ({columns})")
    conn.execute("CREATE INDEX ON bench_plain_usage (timestamp)")
    pooled = ctx.stack.pgbouncer.dsn(ctx.stack.database) if ctx.stack.pgbouncer else None
    lanes = {
        "prepared": conn,
        "unprepared": psycopg.connect(
            pooled or ctx.stack.direct_url, autocommit=True, prepare_threshold=None
        ),
    }
    calls = 2_000 if users > 10_000 else 200
    timings: dict[str, list[float]] = {"insert_plain": [], "insert_partitioned": []}
    warm = psycopg.ClientCursor(conn)
    for i in range(calls):
        accounts = {
            "active": "cscale" + str(1 + i % ACTIVE_ACCOUNTS).zfill(19),
            "light": "cscale"
            + str(1 + ACTIVE_ACCOUNTS + (i * 7919) % (users - ACTIVE_ACCOUNTS)).zfill(19),
        }
        order = list(LISTS.items())
        order = order[i % len(order) :] + order[: i % len(order)]  # each first as often
        # Each account's pages read once, untimed, first: the statement and the function read
        # the same partitions, and whichever came first paid the buffer misses of a light
        # account (a new one each call) for both, which biased the prepared lane's medians.
        for user in accounts.values():
            for statement in LISTS.values():
                warm.execute(statement, {"user": user, "limit": 21}).fetchall()
        for lane, lane_conn in lanes.items():
            for kind, user in accounts.items():
                for label, statement in order:
                    started = time.perf_counter()
                    lane_conn.execute(statement, {"user": user, "limit": 21}).fetchall()
                    elapsed = (time.perf_counter() - started) * 1000
                    timings.setdefault(f"list_{label}_{kind}_{lane}", []).append(elapsed)
        for label, table, key in (
            ("plain", "bench_plain_usage", "id"),
            ("partitioned", "api_usage", 'id, "timestamp"'),
        ):
            started = time.perf_counter()
            conn.execute(
                HOT_INSERT.format(table=table, key=key),
                {"id": f"hot{label}{i}", "user": accounts["light"]},
            )
            timings[f"insert_{label}"].append((time.perf_counter() - started) * 1000)
    settled = {
        kind: _rows_read_settled(lanes["unprepared"], LISTS["function"], user)
        for kind, user in accounts.items()
    }
    lanes["unprepared"].close()
    generic = {
        label: _generic_plan(conn, statement, accounts["active"])
        for label, statement in LISTS.items()
        if label != "function"  # a function's plan is not in its caller's EXPLAIN
    }
    counts = {
        table: _partition_count(conn, table)
        for table in ("search_history", "bench_monthly_history")
    }
    rows = {label: _count(conn, table) for label, table in LISTED_TABLES.items()}
    conn.execute("DROP TABLE bench_plain_history, bench_monthly_history, bench_plain_usage")
    conn.execute("DELETE FROM api_usage WHERE id LIKE 'hot%'")
    medians = {key: round(sorted(v)[len(v) // 2], 3) for key, v in timings.items()}
    ratios = {
        f"list_{label}_{kind}_{lane}_ratio": round(
            medians[f"list_{label}_{kind}_{lane}"] / medians[f"list_plain_{kind}_{lane}"], 2
        )
        for label in ("statement", "function", "monthly")
        for kind in ("active", "light")
        for lane in lanes
    }
    return {
        "calls": calls,
        "unprepared_lane": "PgBouncer (transaction mode)" if pooled else "direct",
        "partitions": {
            "quarterly": counts["search_history"],
            "monthly": counts["bench_monthly_history"],
        },
        "months_laid_out": months,
        "rows": rows,
        **medians,
        **ratios,
        "insert_ratio": round(medians["insert_partitioned"] / medians["insert_plain"], 2),
        "app_list": APP_LIST,
        "generic_plan_active": generic,
        "function_rows_read": settled,
    }


def _generic_plan(conn: psycopg.Connection[Any], statement: str, user: str) -> dict[str, Any]:
    """The list's generic plan (what a prepared statement settles on) for an active account:
    its top nodes and the rows its scans return, from EXPLAIN ANALYZE (no timing)."""
    prepared = statement.replace("%(user)s", "$1::text").replace("%(limit)s", "$2::bigint")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        conn.execute(f"PREPARE bench_list AS {prepared}")
        values = [user, 21] if "$2" in prepared else [user]
        row = conn.execute(
            psycopg.sql.SQL(
                "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) EXECUTE bench_list({})"
            ).format(psycopg.sql.SQL(", ").join(map(psycopg.sql.Literal, values)))
        ).fetchone()
        conn.execute("DEALLOCATE bench_list")
    finally:
        conn.execute("RESET plan_cache_mode")
    plan = row[0][0]["Plan"] if row else {}

    def leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
        children = node.get("Plans", [])
        return [leaf for child in children for leaf in leaves(child)] if children else [node]

    nodes, node = [plan.get("Node Type")], plan
    while len(node.get("Plans", [])) == 1:
        node = node["Plans"][0]
        nodes.append(node["Node Type"])
    if node.get("Plans"):
        nodes.append(node["Plans"][0]["Node Type"] + " per partition")
    return {
        "rows_read": sum(int(leaf.get("Actual Rows", 0)) for leaf in leaves(plan)),
        "nodes": " > ".join(str(name) for name in nodes),
    }


def _rows_read_settled(conn: psycopg.Connection[Any], statement: str, user: str) -> int:
    """Rows one call of `statement` reads once the plan cache of the server connection has
    settled (ten calls first: a plan is made per call for the first five, then the generic one
    may be kept)."""
    params = {"user": user, "limit": 21}
    for _ in range(10):
        conn.execute(statement, params).fetchall()
    return history_rows_read(conn, statement, params)


_HISTORY_ROWS_READ = (
    "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) "
    "FROM pg_stat_xact_user_tables WHERE relid IN "
    "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'search_history'::regclass)"
)


def history_rows_read(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> int:
    """Rows one run of `statement` reads from `search_history`'s partitions, by index or
    sequential scan: the server's per-transaction statistics, which see into functions where
    EXPLAIN does not. One transaction: one server connection for the three, even through
    PgBouncer."""
    with conn.transaction():
        before = conn.execute(_HISTORY_ROWS_READ).fetchone()
        conn.execute(statement, params).fetchall()
        after = conn.execute(_HISTORY_ROWS_READ).fetchone()
    assert before is not None and after is not None  # an aggregate always has its row
    return int(after[0] - before[0])


def _partition_count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass", (table,)
    ).fetchone()
    return int(row[0]) if row else 0


def _count(conn: psycopg.Connection[Any], table: str = "search_history") -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _try(conn: psycopg.Connection[Any], sql: str) -> bool:
    try:
        conn.execute(sql)
    except psycopg.Error:
        return False
    return True


def _timed(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> float:
    started = time.perf_counter()
    conn.execute(sql, params)
    return round(time.perf_counter() - started, 2)


def _job(
    ctx: Context, conn: psycopg.Connection[Any], job: str, crons: set[str], rows: int
) -> dict[str, Any]:
    ctx.log(f"  scale: {job}")
    if job in crons:
        try:
            outcome = run_worker("cron", {"job": job}, ctx.stack.app_env(), timeout=3600)
        except WorkerError as error:
            return {"ran": f"functions/cron/{job}.py", "error": str(error)[-1500:]}
        summary = outcome["result"] if isinstance(outcome["result"], dict) else {}
        seconds = outcome["seconds"]
        return {
            "ran": f"functions/cron/{job}.py (Lambda handler, 300 s timeout as in serverless.yml)",
            "rows": rows,
            "rows_changed": summary.get("processed"),
            "complete": summary.get("complete"),
            "seconds": seconds,
            "rows_per_s": round(rows / seconds) if seconds else None,
            "changed_per_s": round(summary.get("processed", 0) / seconds) if seconds else None,
            "batches": summary.get("batches"),
            "batch_size": _batch_size(),
            "longest_batch_ms": summary.get("longestBatchMs"),
            "longest_statement_ms": outcome["longest_statement_ms"],
            "statements": outcome["statements"],
            "transactions": outcome["transactions"],
            "result": summary,
        }
    batches: list[float] = []
    affected = 0
    started = time.perf_counter()
    if job == "reset_monthly_usage":
        now = datetime.now(UTC).replace(tzinfo=None)
        month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        after = ""
        while True:
            batch_started = time.perf_counter()
            row = conn.execute(
                RESET_BATCH,
                {"after": after, "size": BATCH, "now": now, "month_start": month_start},
            ).fetchone()
            batches.append((time.perf_counter() - batch_started) * 1000)
            if row is None or row[0] is None:
                break
            after, affected = row[0], affected + int(row[1])
        sql, note = (
            RESET_BATCH,
            "keyset batches of users by id; reset where monthlyResetAt < month start",
        )
    else:
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=RETENTION_DAYS)
        while True:
            batch_started = time.perf_counter()
            cursor = conn.execute(PRUNE_BATCH, {"cutoff": cutoff, "size": BATCH})
            batches.append((time.perf_counter() - batch_started) * 1000)
            if cursor.rowcount <= 0:
                break
            affected += cursor.rowcount
        sql, note = (
            PRUNE_BATCH,
            f"delete history older than {RETENTION_DAYS} days, {BATCH:,} rows per statement",
        )
    seconds = time.perf_counter() - started
    return {
        "ran": f"fallback SQL in benchmarks/scale.py (no functions/cron/{job}.py yet)",
        "note": note,
        "sql": " ".join(sql.split()),
        "rows": rows,
        "rows_changed": affected,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds) if seconds else None,
        "changed_per_s": round(affected / seconds) if seconds else None,
        "batches": len(batches),
        "batch_size": BATCH,
        "longest_batch_ms": round(max(batches, default=0.0), 1),
        "median_batch_ms": round(sorted(batches)[len(batches) // 2], 1) if batches else None,
    }


def _batch_size() -> int:
    """The cron's batch size: CRON_BATCH_SIZE, else the settings' default."""
    import os

    from shared.config import Settings

    value = os.environ.get("CRON_BATCH_SIZE")
    return int(value) if value else Settings.cron_batch_size


def _legacy(ctx: Context, records: int) -> dict[str, Any]:
    """Write `records` legacy records (60 % users, 40 % saved searches with their index sets)
    through the Upstash emulator, then run the backfill as `python -m devkit.legacy` does."""
    if not (ROOT / "devkit" / "legacy.py").exists():
        return {
            "ran": "not available",
            "reason": "devkit/legacy.py does not exist yet",
            "records": records,
        }
    ctx.log(f"  scale: writing {records:,} legacy records")
    started = time.perf_counter()
    users, searches = _write_legacy(ctx, records)
    generated = round(time.perf_counter() - started, 2)
    ctx.log("  scale: legacy backfill")
    report_path = ctx.stack.workdir / "legacy-backfill-report.json"
    try:
        outcome = run_worker(
            "legacy", {"report_path": str(report_path)}, ctx.stack.app_env(), timeout=3600
        )
    except WorkerError as error:
        return {"ran": "devkit.legacy.backfill", "records": records, "error": str(error)[-1500:]}
    seconds = outcome["seconds"]
    return {
        "ran": "devkit.legacy.backfill (batch size 500, as its CLI)",
        "records": records,
        "rows": records,
        "legacy_users": users,
        "legacy_saved_searches": searches,
        "generate_s": generated,
        "seconds": seconds,
        "rows_per_s": round(outcome["records_read"] / seconds) if seconds else None,
        "rows_changed": outcome["users"]["inserted"] + outcome["saved_searches"]["inserted"],
        "batches": outcome["batches"],
        "batch_size": 500,
        "longest_batch_ms": outcome["longest_batch_ms"],
        "median_batch_ms": outcome["median_batch_ms"],
        "records_read": outcome["records_read"],
        "quarantined": outcome["quarantined"],
        "complete": outcome["complete"],
    }


def _write_legacy(ctx: Context, records: int) -> tuple[int, int]:
    import httpx

    users = records * 6 // 10
    searches = records - users
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    stamp = created.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    later = (created + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    year = 31_536_000
    commands: list[list[Any]] = []
    for i in range(users):
        uid = f"user_legacy_{i:07d}"
        record = {
            "clerkUserId": uid,
            "email": f"legacy{i}@bench.test",
            "tier": "pro" if i % 10 == 0 else "trial",
            "trialStartedAt": stamp,
            "trialExpiresAt": later,
            "keywordsUsedThisMonth": 0,
            "monthlyResetAt": stamp,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        commands.append(["SET", f"user:{uid}", json.dumps(record), "EX", year])
    for j in range(searches):
        owner = f"user_legacy_{j % users:07d}"
        sid = str(uuid.UUID(int=j + 1, version=4))
        search: dict[str, Any] = {
            "id": sid,
            "clerkUserId": owner,
            "name": f"Legacy search {j}",
            "searchParams": {
                "keywords": ["running shoes", f"kw {j}"],
                "matchType": "phrase",
                "location": "US",
                "language": "en",
            },
            "metadata": {"createdAt": stamp, "updatedAt": stamp},
        }
        commands.append(["SET", f"saved-search:{owner}:{sid}", json.dumps(search), "EX", year])
        commands.append(["SADD", f"saved-searches:{owner}", sid])
    headers = {"authorization": f"Bearer {ctx.stack.upstash_token}"}
    with httpx.Client(base_url=ctx.stack.upstash_url, headers=headers, timeout=120) as http:
        for offset in range(0, len(commands), 2000):
            reply = http.post("/pipeline", json=commands[offset : offset + 2000])
            reply.raise_for_status()
    return users, searches
