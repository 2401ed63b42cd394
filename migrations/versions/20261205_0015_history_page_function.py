"""A user's history page as a server function, whose plans the server keeps per connection.

`search_history` is partitioned by quarter (revision 0010), and a user's history list names no
time, so planning it considers every partition kept, and costs more than running it (about
0.13 ms of 0.36-0.42 ms at 5M rows). A connection that cannot prepare statements (a
transaction pooler without prepared-statement support, such as PgBouncer before 1.21:
`PREPARED_STATEMENTS` resolves to off) planned it on every call, and one that can on its first
ten (psycopg prepares a statement on its sixth run, and the server makes five custom plans
before it considers a generic one). PL/pgSQL keeps each of its queries' plans in the server
connection, whichever client it serves (planned on their first five calls there), so through
a pooler, whose server connections outlive the containers, every client reuses the plans of
the server connections it lands on. On a connection that prepares, the call costs about as
much as the prepared statement, so the app (`search_history.list_for_user`) calls it on every
connection.

It returns the parent table's row type (`SETOF public.search_history`), so it depends on that
table: a migration that replaces the parent (as 0010 did) drops and recreates the function.

`search_history_page(user, limit, before_at, before_id)`: the user's rows newest first
(`"searchedAt" DESC, id DESC`), at most `limit`, only those before the cursor
(`("searchedAt", id) < (before_at, before_id)`, an index range) when `before_at` is given.
Each branch is its own query, so each keeps a plan that uses the index. STABLE, SECURITY
INVOKER (the caller's own rights on the table), the table named with its schema.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 06:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "public.search_history_page(text, bigint, timestamp without time zone, text)"


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION public.search_history_page(
            p_user_id text,
            p_limit bigint,
            p_before_at timestamp without time zone,
            p_before_id text
        ) RETURNS SETOF public.search_history
        LANGUAGE plpgsql STABLE AS $body$
        BEGIN
            IF p_before_at IS NULL THEN
                RETURN QUERY
                    SELECT * FROM public.search_history
                    WHERE "userId" = p_user_id
                    ORDER BY "searchedAt" DESC, id DESC
                    LIMIT p_limit;
            ELSE
                RETURN QUERY
                    SELECT * FROM public.search_history
                    WHERE "userId" = p_user_id
                      AND ("searchedAt", id) < (p_before_at, p_before_id)
                    ORDER BY "searchedAt" DESC, id DESC
                    LIMIT p_limit;
            END IF;
        END
        $body$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {FUNCTION}")
