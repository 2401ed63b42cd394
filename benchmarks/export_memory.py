"""8. Export memory: the exports cron's peak RSS building the heavy account's export.

The heavy account (30,000 history rows, 30,000 API-usage rows, 50 saved searches with large
`results`; `generate_heavy_account`, which the export tests share) is generated in the
database, an export is requested, and a worker — a fresh container — runs the exports cron
once against moto's S3 (through PgBouncer when it runs: the pooled lane the cron uses
deployed). The figures: the worker's RSS before the run and its peak (`VmHWM`) during it, the
document's size raw and gzip, and the run's time.
"""

from __future__ import annotations

from typing import Any

import psycopg

from benchmarks.core import Context, run_worker, target

HEAVY = "user_heavy"
HISTORY_ROWS = 30_000
USAGE_ROWS = 30_000
SAVED_SEARCHES = 50
RESULTS_PER_SEARCH = 400
PEAK_TARGET_MB = 256  # well inside the 512 MB of a Lambda function's default memory


def generate_heavy_account(
    conn: psycopg.Connection[Any], user_id: str = HEAVY, *, scale: float = 1.0
) -> None:
    """Rows shaped like production's: what a PRO user at 1,000 searches a month stores in
    2.5 years (`scale` shrinks the row counts). Text is md5-derived (so gzip cannot shrink it
    to nothing) with unicode mixed in."""
    history, usage = int(HISTORY_ROWS * scale), int(USAGE_ROWS * scale)
    searches = max(1, int(SAVED_SEARCHES * scale))
    conn.execute(
        """INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
                              "monthlyResetAt", "createdAt", "updatedAt")
           VALUES (%s, %s, 'PRO', 900, 30000, now(), now() - interval '900 days', now())""",
        [user_id, f"{user_id}+ünï@example.com"],
    )
    conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
               provider, "cacheHit", "responseTime", "keywordCount", "avgVolume", "totalVolume",
               "searchedAt", "userAgent", "ipAddress")
           SELECT 'h' || i, %s,
                  ARRAY[md5(i::text), 'café ☕ ' || left(md5((i + 1)::text), 12), '"q" 検索 🚀'],
                  'US', 'en', 'phrase', 'dataforseo', i %% 3 = 0, 100 + i %% 900, 3,
                  i %% 10000, (i %% 10000) * 3,
                  now() - make_interval(mins => i),
                  'Mozilla/5.0 (X11; Linux x86_64) ' || md5(i::text),
                  '198.51.100.' || (i %% 250)
             FROM generate_series(1, %s) AS i""",
        [user_id, history],
    )
    conn.execute(
        """INSERT INTO api_usage (id, "userId", endpoint, method, "statusCode", duration,
               "ipAddress", "userAgent", timestamp)
           SELECT 'u' || i, %s, '/api/keywords', 'POST', 200, i %% 700, '2001:db8::' || (i %% 999),
                  'KeyFlash/1.0 ' || md5(i::text) || md5((i * 7)::text),
                  now() - make_interval(mins => i)
             FROM generate_series(1, %s) AS i""",
        [user_id, usage],
    )
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", name, keywords, location, language,
               "matchType", "keywordCount", "createdAt", "updatedAt", "lastAccessedAt",
               description, results, "resultCount")
           SELECT gen_random_uuid()::text, %s, 'Search ' || s || ' 🧪', ARRAY[md5(s::text)], 'US',
                  'en', 'exact', 1, now() - make_interval(days => s), now(), now(),
                  E'line\\nbreak \\u0007 ' || md5(s::text),
                  (SELECT jsonb_agg(jsonb_build_object(
                      'keyword', md5((s * 1000 + r)::text) || ' ünï',
                      'searchVolume', r * 10, 'difficulty', r %% 100, 'cpc', r / 7.0,
                      'competition', 'medium', 'intent', 'commercial',
                      'trends', (SELECT jsonb_agg(jsonb_build_object(
                                    'month', m, 'year', 2026, 'volume', r * m))
                                   FROM generate_series(1, 12) AS m)))
                     FROM generate_series(1, %s) AS r),
                  %s
             FROM generate_series(1, %s) AS s""",
        [user_id, RESULTS_PER_SEARCH, RESULTS_PER_SEARCH, searches],
    )


def run(ctx: Context) -> dict[str, Any]:
    scale = ctx.pick(1.0, 0.02)
    user_id = f"{HEAVY}_bench"
    with ctx.stack.connect() as conn:
        conn.execute('DELETE FROM data_exports WHERE "userId" = %s', [user_id])
        for table in ("api_usage", "search_history", "saved_searches"):
            conn.execute(f'DELETE FROM {table} WHERE "userId" = %s', [user_id])
        conn.execute("DELETE FROM users WHERE id = %s", [user_id])
        generate_heavy_account(conn, user_id, scale=scale)
    pooled = ctx.stack.pooled_url is not None
    ctx.log(f"  export: heavy account x{scale:g}, {'pooled' if pooled else 'direct'} lane")
    env = ctx.stack.app_env(pooled=pooled)
    result = run_worker("export_memory", {"user_id": user_id}, env)
    peak_mb = result["peak_rss_kb"] / 1024
    result["lane"] = "pgbouncer" if pooled else "direct"
    result["targets"] = [
        target(
            f"exports cron peak RSS <= {PEAK_TARGET_MB} MB for the heavy account",
            peak_mb <= PEAK_TARGET_MB,
            f"{peak_mb:.0f} MB peak for {result['bytes']:,} bytes of JSON (account x{scale:g})",
        )
    ]
    return result
