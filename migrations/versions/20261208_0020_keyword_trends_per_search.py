"""`report_keyword_trends.searches` counts searches, not mentions of the keyword.

0011's view counted the rows of `unnest(keywords)` after folding them, so one search naming a
keyword three ways (`["Latte Dup", "latte dup", " LATTE DUP "]`, which the API stores as typed)
counted as three searches, and a keyword typed twice per search outranked one searched more
often. Each search now counts once per distinct normalised keyword (a LATERAL `SELECT
DISTINCT` over its own array), as the docs and the admin analytics' `topKeywords` say.
`users` (distinct users) was right and is unchanged.

A materialized view's query cannot be altered: the view is dropped and created again `WITH
DATA` (a concurrent refresh needs a populated view), with its unique index and its grant to
`keyflash_readonly` (the role has no default privileges since 0019: a report's revision grants
it). Building it reads every history row kept, about 13 to 22 s at 1,000,000 rows
(docs/analytics.md), and the trends route's keyword reads wait for it meanwhile. The DROP
waits at most LOCK_TIMEOUT for the view's lock (the hourly refresh, a long reader): a DROP
queued behind them would hold up every trends reader behind it, so the revision fails instead
(nothing of it is left; run it again once the lock is free). The downgrade restores 0011's
query.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 12:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEW = "report_keyword_trends"
LOCK_TIMEOUT = "5s"

PER_SEARCH = """
    SELECT date_trunc('week', h."searchedAt") AS week,
           k.keyword,
           count(*)::bigint AS searches,
           count(DISTINCT h."userId")::bigint AS users
      FROM search_history h
     CROSS JOIN LATERAL (
           SELECT DISTINCT lower(btrim(named)) AS keyword
             FROM unnest(h.keywords) AS named
            WHERE btrim(named) <> '') k
     GROUP BY 1, 2
"""

PER_MENTION = """
    SELECT date_trunc('week', h."searchedAt") AS week,
           lower(btrim(k.keyword)) AS keyword,
           count(*)::bigint AS searches,
           count(DISTINCT h."userId")::bigint AS users
      FROM search_history h
     CROSS JOIN LATERAL unnest(h.keywords) AS k(keyword)
     WHERE btrim(k.keyword) <> ''
     GROUP BY 1, 2
"""  # 0011's query, as it was applied


def _recreate(query: str) -> None:
    op.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")  # this revision's transaction
    op.execute(f"DROP MATERIALIZED VIEW {VIEW}")
    op.execute(f"CREATE MATERIALIZED VIEW {VIEW} AS {query} WITH DATA")
    op.execute(f'CREATE UNIQUE INDEX {VIEW}_key ON {VIEW} ("week", "keyword")')
    op.execute(f"GRANT SELECT ON {VIEW} TO keyflash_readonly")


def upgrade() -> None:
    _recreate(PER_SEARCH)


def downgrade() -> None:
    _recreate(PER_MENTION)
