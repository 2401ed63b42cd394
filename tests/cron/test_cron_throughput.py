"""How fast the batch jobs go on a larger table (printed, never asserted: machine-dependent).

100,000 stale users for the monthly reset and 200,000 history rows past retention for prune,
generated in the database with `generate_series`; default batch size (CRON_BATCH_SIZE=1000).
Run with `-s` to see the numbers, in both lanes:

    .venv/bin/python -m pytest tests/cron/test_cron_throughput.py -s -p no:cacheprovider
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from shared.cron import prune, reset_usage
from shared.cron.runner import run_job
from tests.support.cron import count

NOW = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)
USERS = 100_000
HISTORY = 200_000


def report(label: str, lane: str, summary: dict[str, Any], rows: int) -> None:
    seconds = summary["durationMs"] / 1000
    print(
        f"\n{label} [{lane}]: {rows:,} rows in {seconds:.2f} s = {rows / seconds:,.0f} rows/s; "
        f"{summary['batches']} batches of <= 1000, longest {summary['longestBatchMs']:.0f} ms"
    )


def test_reset_and_prune_throughput(db_env: str, admin_conn: psycopg.Connection[Any]) -> None:
    lane = "pooled" if "pgbouncer=true" in db_env else "direct"
    stale = (NOW - timedelta(days=20)).replace(tzinfo=None)
    admin_conn.execute(
        """INSERT INTO users (id, email, "keywordSearchesThisMonth", "monthlyResetAt",
                              "updatedAt")
           SELECT 'c' || lpad(g::text, 8, '0'), 'u' || g || '@example.com', 1 + g %% 300, %(t)s,
                  %(t)s
           FROM generate_series(1, %(n)s) g""",
        {"t": stale, "n": USERS},
    )
    old = (NOW - timedelta(days=500)).replace(tzinfo=None)
    admin_conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
                                       provider, "responseTime", "keywordCount", "searchedAt")
           SELECT 'h' || lpad(g::text, 8, '0'), 'c' || lpad((1 + g %% 100000)::text, 8, '0'),
                  ARRAY['kw' || g], 'US', 'en', 'broad', 'mock', g %% 900, 1,
                  %(t)s + g * interval '1 second'
           FROM generate_series(1, %(n)s) g""",
        {"t": old, "n": HISTORY},
    )
    admin_conn.execute("ANALYZE users; ANALYZE search_history")

    reset = run_job(reset_usage.JOB, now=NOW)
    assert reset["complete"] is True and reset["processed"] == USERS
    report("reset_monthly_usage", lane, reset, USERS)

    pruned = run_job(prune.JOB, now=NOW)
    assert pruned["complete"] is True and pruned["deleted"]["search_history"] == HISTORY
    report("prune (search_history)", lane, pruned, HISTORY)
    assert count(admin_conn, "SELECT count(*) FROM search_history") == 0
