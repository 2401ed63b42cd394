"""15. Indexes from evidence: every endpoint's SQL explained on data at production size.

The section builds a database of its own (migrated to head, so the other sections' figures are
not taken on it) and fills it in the database (`INSERT … SELECT generate_series`): 1,000,000
users, 5,000,000 search history rows, 10,000,000 `api_usage` rows, 500,000 saved searches,
200,000 webhook events and 1,000,000 system metrics (quick: a hundredth). The benchmark's own
user is a heavy account: every 100th history row and every 50th usage row is theirs, so their
per-user reads walk 50,000 and 200,000 rows, as a busy customer's do.

Then a worker runs every endpoint's scenario once on a warm container while recording the SQL
it sends (the round-trips recorder), and runs each recorded statement again under
`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` inside a transaction it rolls back, so writes leave
nothing behind. A plan that reads a large table (at least LARGE_ROWS rows) with a sequential
scan fails the section's target. Index use is read from `pg_stat_user_indexes` after the run
(statistics reset before it): an index no statement used is listed, with its size, as a
candidate to drop; whether to drop it is decided in the docs (uniqueness, foreign keys and crons
use indexes these requests do not).
"""

from __future__ import annotations

from typing import Any

from benchmarks.core import Context, Timer, run_worker, target
from benchmarks.scenarios import USER
from devkit.migrate import upgrade_head
from devkit.postgres import create_database, drop_database, with_database

# A sequential scan of a table at least this large is a failure (quick runs: a hundredth).
LARGE_ROWS = 100_000

GENERATE = {
    "users": """
INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
                   "monthlyResetAt", "createdAt", "updatedAt", "stripeCustomerId")
SELECT 'user_ix' || lpad(g::text, 9, '0'), 'ix' || g || '@bench.test',
       (CASE WHEN g %% 10 = 0 THEN 'PRO' WHEN g %% 97 = 0 THEN 'ENTERPRISE'
             ELSE 'FREE' END)::"UserTier",
       g %% 700, g %% 5000, date_trunc('month', now() AT TIME ZONE 'UTC'),
       now() - (g %% 900) * interval '1 day', now() - (g %% 40) * interval '1 day',
       CASE WHEN g %% 10 = 0 THEN 'cus_ix' || g END
FROM generate_series(1, %(n)s) AS g
""",
    "search_history": """
INSERT INTO search_history (id, "userId", keywords, location, language, "matchType", provider,
                            "cacheHit", "responseTime", "keywordCount", "avgVolume",
                            "totalVolume", "searchedAt")
SELECT 'hix' || lpad(g::text, 19, '0'),
       CASE WHEN g %% 100 = 0 THEN %(heavy)s WHEN g %% 5 = 0 THEN NULL
            ELSE 'user_ix' || lpad((1 + g %% %(users)s)::text, 9, '0') END,
       ARRAY['keyword ' || (g %% 5000), 'keyword ' || (g %% 777)], 'US', 'en', 'phrase',
       CASE WHEN g %% 3 = 0 THEN 'dataforseo' WHEN g %% 3 = 1 THEN 'google-ads' ELSE 'mock' END,
       g %% 2 = 0, 50 + g %% 400, 2, g %% 9000, (g %% 9000) * 2,
       now() AT TIME ZONE 'UTC' - (g %% 400) * interval '1 day' - (g %% 86400) * interval '1 s'
FROM generate_series(1, %(n)s) AS g
""",
    "api_usage": """
INSERT INTO api_usage (id, "userId", endpoint, method, "statusCode", duration, "ipAddress",
                       "userAgent", timestamp)
SELECT 'uix' || lpad(g::text, 19, '0'),
       CASE WHEN g %% 50 = 0 THEN %(heavy)s WHEN g %% 7 = 0 THEN NULL
            ELSE 'user_ix' || lpad((1 + g %% %(users)s)::text, 9, '0') END,
       (ARRAY['/api/keywords', '/api/searches', '/api/history', '/api/me', '/api/flags',
              '/api/history/stats'])[1 + g %% 6],
       CASE WHEN g %% 4 = 0 THEN 'POST' ELSE 'GET' END,
       CASE WHEN g %% 53 = 0 THEN 429 WHEN g %% 101 = 0 THEN 500 ELSE 200 END,
       5 + g %% 900, NULL, 'bench/1.0',
       now() AT TIME ZONE 'UTC' - (g %% 90) * interval '1 day' - (g %% 86400) * interval '1 s'
FROM generate_series(1, %(n)s) AS g
""",
    "saved_searches": """
INSERT INTO saved_searches (id, "userId", name, keywords, "keywordCount", "createdAt",
                            "updatedAt", "lastAccessedAt")
SELECT 'six' || lpad(g::text, 19, '0'), 'user_ix' || lpad((1 + g %% %(users)s)::text, 9, '0'),
       'Saved ' || g, ARRAY['keyword ' || (g %% 5000)], 1,
       now() - (g %% 300) * interval '1 day', now() - (g %% 30) * interval '1 day',
       now() - (g %% 30) * interval '1 day'
FROM generate_series(1, %(n)s) AS g
""",
    "webhook_events": """
INSERT INTO webhook_events (id, type, provider, processed, "processedAt", attempts,
                            "lastAttemptAt", payload, "createdAt")
SELECT 'evt_ix' || g, (ARRAY['customer.subscription.updated', 'invoice.paid',
                             'checkout.session.completed'])[1 + g %% 3],
       CASE WHEN g %% 4 = 0 THEN 'clerk' ELSE 'stripe' END, g %% 1000 <> 0,
       CASE WHEN g %% 1000 <> 0 THEN now() - (g %% 60) * interval '1 day' END, 1,
       now() - (g %% 60) * interval '1 day', '{}'::jsonb, now() - (g %% 60) * interval '1 day'
FROM generate_series(1, %(n)s) AS g
""",
    "system_metrics": """
INSERT INTO system_metrics (id, metric, value, tags, timestamp)
SELECT 'mix' || lpad(g::text, 19, '0'),
       (ARRAY['requests', 'errors', 'latency_ms', 'cache_hit_rate'])[1 + g %% 4], g %% 1000,
       NULL,
       now() AT TIME ZONE 'UTC' - (g %% 90) * interval '1 day' - (g %% 1440) * interval '1 min'
FROM generate_series(1, %(n)s) AS g
""",
    "account_tombstones": """
INSERT INTO account_tombstones (key, "trialEndsAt", "keywordsUsed")
SELECT md5('tomb' || g) || md5('stone' || g), now() - (g %% 30) * interval '1 day', g %% 300
FROM generate_series(1, %(n)s) AS g
""",
}

FULL_SIZES = {
    "users": 1_000_000,
    "search_history": 5_000_000,
    "api_usage": 10_000_000,
    "saved_searches": 500_000,
    "webhook_events": 200_000,
    "system_metrics": 1_000_000,
    "account_tombstones": 100_000,
}

# Request paths that may read a large table in full, and why: none of them is hot (an erasure or
# an export per account, now and then; the admin analytics page), and no index serves them.
FULL_SCANS_ALLOWED: dict[str, tuple[tuple[str, ...], str]] = {
    "webhook_events": (
        ("DELETE /api/me", "GET /api/me/export"),
        "the user's ids anywhere in a payload (a JSON path search no index serves); the table "
        "keeps processed events for 30 days",
    ),
    "system_metrics": (
        ("DELETE /api/me", "GET /api/me/export"),
        "the user's ids anywhere in the tags; the table keeps 90 days",
    ),
    "search_history": (
        ("report refresh:",),
        "a report's refresh reads the history it aggregates, in the cron, never under a request",
    ),
    "search_daily_rollups": (
        ("report refresh:",),
        "the provider report aggregates every retained day's rollup, in the cron",
    ),
    "users": (
        ("GET /api/admin/analytics", "report refresh:"),
        "counts every user by tier and subscription status: counting all rows reads all rows",
    ),
}


def run(ctx: Context) -> dict[str, Any]:
    scale = 100 if ctx.quick else 1
    sizes = {table: rows // scale for table, rows in FULL_SIZES.items()}
    large = LARGE_ROWS // scale
    database = f"{ctx.stack.database}_indexes"
    create_database(ctx.stack.server_url, database)
    url = with_database(ctx.stack.server_url, database)
    try:
        upgrade_head(url)
        env = ctx.stack.app_env(
            DATABASE_URL=url, DIRECT_DATABASE_URL=url, RATE_LIMIT_REQUESTS_PER_HOUR="1000000000"
        )
        fixtures = run_worker("seed", {"private_pem": ctx.stack.private_pem}, env)
        generated = _generate(ctx, url, sizes)
        explained = run_worker(
            "explain",
            {"private_pem": ctx.stack.private_pem, "fixtures": fixtures, "large_rows": large},
            env,
            timeout=1800,
        )
        footprint = _footprint(url, sizes)
    finally:
        drop_database(ctx.stack.server_url, database)
    seq_scans = [
        f"{row['endpoint']}: {row['statement']} ({', '.join(hot)})"
        for row in explained["statements"]
        if (hot := [t for t in row.get("seq_scans", []) if not _allowed(t, row["endpoint"])])
    ]
    return {
        "sizes": sizes,
        "large_rows": large,
        "generate_s": generated,
        "statements": explained["statements"],
        "errors": explained["errors"],
        "unused_indexes": explained["unused_indexes"],
        "footprint": footprint,
        "targets": [
            target(
                f"no hot request-path statement seq-scans a table of >= {large:,} rows",
                not seq_scans and not explained["errors"],
                f"{len(explained['statements'])} statements explained, "
                f"{len(seq_scans)} with a large sequential scan",
                detail="; ".join(seq_scans + explained["errors"])[:2000],
            )
        ],
    }


def _generate(ctx: Context, url: str, sizes: dict[str, int]) -> dict[str, float]:
    import psycopg

    seconds: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        # The generated user ids are all real: skip per-row foreign-key checks while loading
        # (superuser only; the embedded server's user is one).
        conn.execute("SET session_replication_role = replica")
        for table, sql in GENERATE.items():
            ctx.log(f"  indexes: generating {sizes[table]:,} {table} rows")
            with Timer() as timer:
                conn.execute(sql, {"n": sizes[table], "users": sizes["users"], "heavy": USER})
            seconds[table] = round(timer.seconds, 1)
        conn.execute("SET session_replication_role = DEFAULT")
        conn.execute("VACUUM ANALYZE")
        conn.execute("SELECT pg_stat_reset()")
    return seconds


def _footprint(url: str, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """Heap and index bytes per row of each generated table (partitions summed): what a row
    costs on disk, indexes included, at this size."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, sum(pg_table_size(p.oid)), sum(pg_indexes_size(p.oid))
            FROM pg_class c JOIN pg_class p
              ON p.oid = c.oid OR p.oid IN (SELECT relid FROM pg_partition_tree(c.oid))
            WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace
            GROUP BY c.relname
            """,
            (list(sizes),),
        ).fetchall()
    return {
        table: {
            "heap_bytes_per_row": round(int(heap) / sizes[table], 1),
            "index_bytes_per_row": round(int(index) / sizes[table], 1),
        }
        for table, heap, index in rows
    }


def _allowed(table: str, endpoint: str) -> bool:
    endpoints, _ = FULL_SCANS_ALLOWED.get(table, ((), ""))
    return any(endpoint.startswith(allowed) for allowed in endpoints)
