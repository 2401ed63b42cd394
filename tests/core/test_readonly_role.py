"""`keyflash_readonly`: a login role in it, made as docs/analytics.md tells an operator to, can
read every report and what the admin analytics read, and can write nothing. Both lanes (through
PgBouncer the login role is added to its auth file, as an operator adds it to Neon's).

Every write is tried twice: as the role's sessions start (read-only transactions: refused with
25006) and in an explicit READ WRITE transaction (refused by privileges: 42501), so neither
guard is the only one.
"""

from __future__ import annotations

import io
import secrets
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import create_engine

from devkit.pgbouncer import AUTH_FILE, LocalPgBouncer
from devkit.postgres import LocalPostgres, with_database
from shared.db import Conn
from shared.repositories import partitions, reports, search_history, system_metrics, users

REPO = Path(__file__).resolve().parents[2]
ROLE = "keyflash_readonly"
REPORTS = reports.REPORTS
WHOLE_TABLES = ("search_daily_rollups", "system_metrics")
NOT_GRANTED = {  # personal columns of granted tables
    "users": ("email", "stripeCustomerId", "stripeSubscriptionId"),
    "search_history": ("ipAddress", "userAgent"),
    "api_usage": ("ipAddress", "userAgent"),
    "organizations": ("name", "slug", "stripeCustomerId", "stripeSubscriptionId"),
    "organization_members": ("permissions",),
}


@pytest.fixture
def analyst(
    request: pytest.FixtureRequest, database_url: str, direct_database_url: str
) -> Iterator[str]:
    """A LOGIN role IN ROLE keyflash_readonly; yields its URL in this lane."""
    name = f"kf_analyst_{secrets.token_hex(4)}"
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                sql.Identifier(name)
            )
        )
    if "pgbouncer=true" in database_url:
        bouncer: LocalPgBouncer = request.getfixturevalue("pgbouncer")
        with (bouncer.workdir / AUTH_FILE).open("a") as auth:
            auth.write(f'"{name}" ""\n')
        bouncer.admin("RELOAD")
    params = conninfo_to_dict(database_url.replace("?pgbouncer=true", ""))
    params["user"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(direct_database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, prepare_threshold=None)


def relations(conn: psycopg.Connection[Any], kinds: str) -> list[str]:
    rows = conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind = ANY(%s) ORDER BY 1""",
        (list(kinds),),
    ).fetchall()
    return [name for (name,) in rows]


def test_the_group_role_logs_in_nowhere_and_reads_only(admin_conn: psycopg.Connection[Any]) -> None:
    row = admin_conn.execute(
        """SELECT r.rolcanlogin, s.setconfig FROM pg_roles r
             LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0
            WHERE r.rolname = %s""",
        (ROLE,),
    ).fetchone()
    assert row == (False, ["default_transaction_read_only=on"])


PERSONAL_COLUMNS = ["email", "stripeCustomerId", "stripeSubscriptionId", "ipAddress", "userAgent"]


def test_the_role_reads_exactly_the_granted_relations(admin_conn: psycopg.Connection[Any]) -> None:
    """Every relation here is granted by name (there are no default privileges since revision
    0019): this list makes each one a decision."""
    assert readable_relations(admin_conn) == GRANTED_RELATIONS


GRANTED_RELATIONS = sorted({*REPORTS, *WHOLE_TABLES, *NOT_GRANTED, "cron_leases"})


def readable_relations(conn: psycopg.Connection[Any]) -> list[str]:
    """The relations of `public` the role may read, whole or some columns."""
    rows = conn.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND (has_table_privilege(%(role)s, c.oid, 'SELECT')
                   OR has_any_column_privilege(%(role)s, c.oid, 'SELECT'))
            ORDER BY 1""",
        {"role": ROLE},
    ).fetchall()
    return [name for (name,) in rows]


def test_no_personal_column_is_readable(admin_conn: psycopg.Connection[Any]) -> None:
    exposed = admin_conn.execute(
        """SELECT c.relname, a.attname FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE n.nspname = 'public' AND a.attname = ANY(%s)
              AND has_column_privilege(%s, c.oid, a.attnum, 'SELECT')""",
        (PERSONAL_COLUMNS, ROLE),
    ).fetchall()
    assert exposed == []


def test_the_role_reads_every_report_and_granted_column(analyst: str) -> None:
    with connect(analyst) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        for name in (*REPORTS, *WHOLE_TABLES):
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(name)))
        for table, hidden in NOT_GRANTED.items():
            readable = conn.execute(
                """SELECT array_agg(column_name::text ORDER BY column_name)
                     FROM information_schema.column_privileges
                    WHERE grantee = %s AND table_name = %s AND privilege_type = 'SELECT'""",
                (ROLE, table),
            ).fetchone()
            assert readable is not None and readable[0], table
            assert not set(hidden) & set(readable[0])
            columns = sql.SQL(", ").join(map(sql.Identifier, readable[0]))
            conn.execute(
                sql.SQL("SELECT {} FROM {} LIMIT 1").format(columns, sql.Identifier(table))
            )
            for column in hidden:
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(
                        sql.SQL("SELECT {} FROM {}").format(
                            sql.Identifier(column), sql.Identifier(table)
                        )
                    )


def test_the_admin_analytics_queries_run_as_the_role(analyst: str) -> None:
    """What the admin analytics, metrics and trends functions read, through our repositories."""
    now = datetime(2026, 11, 20, tzinfo=UTC)
    since = now - timedelta(days=7)
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(analyst, prepare_threshold=None)
    )
    try:
        with engine.connect() as connection:
            conn = Conn(connection)
            search_history.stats(conn, since=since, until=now)
            search_history.searches_per_day(conn, since=since, until=now)
            search_history.top_keywords(conn, since=since, until=now, limit=10)
            # Cut per organization (revision 0013 grants search_history."organizationId").
            search_history.stats(conn, since=since, until=now, organization_id="org_1")
            search_history.searches_per_day(conn, since=since, until=now, organization_id="org_1")
            search_history.top_keywords(
                conn, since=since, until=now, limit=10, organization_id="org_1"
            )
            users.subscription_metrics(conn)
            system_metrics.series(conn, "m", start=since, end=now, bucket="hour")
            reports.usage_by_tier(conn, start=since, end=now)
            reports.keyword_trends(conn, start=since, end=now, top=20)
            reports.provider_performance(conn, start=since, end=now, top=20)
            reports.freshness(conn, "report_keyword_trends")
    finally:
        engine.dispose()


WRITES = {
    "INSERT": "INSERT INTO {} DEFAULT VALUES",
    "UPDATE": "UPDATE {} SET {} = {}",
    "DELETE": "DELETE FROM {}",
    "TRUNCATE": "TRUNCATE {}",
    "CREATE INDEX": "CREATE INDEX ON {} ({})",
}


def first_column(conn: psycopg.Connection[Any], table: str) -> str:
    row = conn.execute(
        """SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0
            ORDER BY attnum LIMIT 1""",
        (sql.Identifier(table).as_string(conn),),
    ).fetchone()
    assert row is not None
    return str(row[0])


def write(conn: psycopg.Connection[Any], verb: str, table: str, column: str) -> sql.Composed:
    name, col = sql.Identifier(table), sql.Identifier(column)
    template = WRITES[verb]
    if verb == "UPDATE":
        return sql.SQL(template).format(name, col, col)
    if verb == "CREATE INDEX":
        return sql.SQL(template).format(name, col)
    return sql.SQL(template).format(name)


def test_the_role_cannot_write_anything(analyst: str, admin_conn: psycopg.Connection[Any]) -> None:
    tables = relations(admin_conn, "rp")
    views = relations(admin_conn, "m")
    assert set(REPORTS) <= set(views) and len(tables) >= 15
    refused: list[str] = []
    with connect(analyst) as conn:
        for table in (*tables, *views):
            column = first_column(admin_conn, table)
            for verb in WRITES:
                statement = write(conn, verb, table, column)
                with pytest.raises(errors.ReadOnlySqlTransaction):
                    conn.execute(statement)
                with pytest.raises(psycopg.Error) as caught, conn.transaction():
                    conn.execute("SET TRANSACTION READ WRITE")
                    conn.execute(statement)
                # 42501 for tables; a view's rows are its query's, whoever asks (42809).
                assert caught.value.sqlstate in {"42501", "42809"}, (verb, table, caught.value)
                refused.append(f"{verb} {table}")
            if table in views:
                with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                    conn.execute("SET TRANSACTION READ WRITE")
                    conn.execute(
                        sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(table))
                    )
        for ddl in (
            "CREATE TABLE public.kf_probe (id int)",
            "CREATE VIEW public.kf_probe AS SELECT 1 AS one",
            "CREATE SCHEMA kf_probe",
        ):
            with pytest.raises(errors.ReadOnlySqlTransaction):
                conn.execute(ddl)
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET TRANSACTION READ WRITE")
                conn.execute(ddl)
    assert len(refused) == len(WRITES) * (len(tables) + len(views))


def test_temporary_tables_are_the_sessions_own(
    analyst: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """docs/analytics.md: with `default_transaction_read_only` off a login in the role may make
    temporary tables (PostgreSQL grants TEMP to PUBLIC), in its own session's schema; the
    documented REVOKE, run as the database's owner, takes that away."""
    create = "CREATE TEMP TABLE kf_probe AS SELECT day FROM search_daily_rollups"
    database = sql.Identifier(admin_conn.info.dbname)
    with connect(analyst) as conn:
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute(create)
        with conn.transaction(force_rollback=True):  # no table left on a pooled connection
            conn.execute("SET TRANSACTION READ WRITE")
            conn.execute(create)
            conn.execute("INSERT INTO kf_probe VALUES (current_date)")
            row = conn.execute(
                "SELECT 'kf_probe'::regclass::oid IN "
                "(SELECT oid FROM pg_class WHERE relnamespace = pg_my_temp_schema())"
            ).fetchone()
            assert row == (True,)
        admin_conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database))
        try:
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET TRANSACTION READ WRITE")
                conn.execute(create)
        finally:
            admin_conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO PUBLIC").format(database))


def test_partitions_made_later_are_not_readable_directly(
    analyst: str, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """The prune cron creates partitions after the migration granted the default privileges.
    They live in the schema `partitions`, where the role has no USAGE: their rows (personal
    columns included) are reached only through the public parent and its column grants."""
    later = datetime.now(UTC) + timedelta(days=800)
    engine = create_engine(direct_database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as connection:
            made = [
                name
                for layout in partitions.LAYOUTS.values()
                for name in partitions.create_ahead(Conn(connection), layout, now=later)
            ]
    finally:
        engine.dispose()
    try:
        assert len(made) >= 3
        existing = admin_conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'partitions' AND c.relkind = 'r'"
        ).fetchall()
        assert set(made) <= {name for (name,) in existing}
        with connect(analyst) as conn:
            for (name,) in existing:
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(
                        sql.SQL("SELECT 1 FROM partitions.{} LIMIT 1").format(sql.Identifier(name))
                    )
            conn.execute('SELECT "userId" FROM api_usage LIMIT 1')  # the parent, as granted
    finally:  # other tests of this database count the partitions
        for name in made:
            admin_conn.execute(sql.SQL("DROP TABLE partitions.{}").format(sql.Identifier(name)))


HAND_PARTITION = "kf_hand_partition"  # docs/core.md: a bare CREATE TABLE … PARTITION OF
SCRATCH_COPY = "kf_scratch_users"


def make_tables_by_hand(conn: psycopg.Connection[Any]) -> None:
    """What an operator may do as the migrating role: attach a partition of `search_history` in
    `public` and copy `users` aside, each holding personal columns."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE public.{} PARTITION OF search_history "
            "FOR VALUES FROM ('2190-01-01') TO ('2190-02-01')"
        ).format(sql.Identifier(HAND_PARTITION))
    )
    conn.execute(
        'INSERT INTO search_history (id, keywords, location, language, "matchType", provider,'
        ' "responseTime", "searchedAt", "ipAddress", "userAgent") VALUES (%s, %s, %s, %s,'
        " %s, %s, %s, %s, %s, %s)",
        ("hand-1", ["x"], "US", "en", "phrase", "mock", 1, datetime(2190, 1, 15, tzinfo=UTC),
         "203.0.113.7", "secret-ua"),
    )  # fmt: skip
    conn.execute(
        sql.SQL("CREATE TABLE public.{} AS SELECT id, email FROM users").format(
            sql.Identifier(SCRATCH_COPY)
        )
    )


def drop_tables_by_hand(conn: psycopg.Connection[Any]) -> None:
    for name in (HAND_PARTITION, SCRATCH_COPY):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(name)))


def test_tables_made_later_in_public_are_not_readable(
    analyst: str, admin_conn: psycopg.Connection[Any]
) -> None:
    """No default privileges: a partition attached by hand in `public` and a scratch copy of
    `users` grant the role nothing. The partition's rows are read through the parent, whose
    column grants are all a reader of a partitioned table needs."""
    try:
        make_tables_by_hand(admin_conn)
        assert readable_relations(admin_conn) == GRANTED_RELATIONS
        with connect(analyst) as conn:
            for statement in (
                sql.SQL('SELECT "ipAddress", "userAgent" FROM public.{}').format(
                    sql.Identifier(HAND_PARTITION)
                ),
                sql.SQL("SELECT id FROM public.{}").format(sql.Identifier(HAND_PARTITION)),
                sql.SQL("SELECT email FROM public.{}").format(sql.Identifier(SCRATCH_COPY)),
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(statement)
            rows = conn.execute(
                """SELECT id FROM search_history WHERE "searchedAt" >= '2190-01-01'"""
            ).fetchall()
            assert rows == [("hand-1",)]
    finally:
        drop_tables_by_hand(admin_conn)


def default_grants(conn: psycopg.Connection[Any]) -> list[str]:
    """What `ALTER DEFAULT PRIVILEGES` gives the role in this database."""
    rows = conn.execute(
        """SELECT a.defaclrole::regrole::text || ' ' || a.defaclobjtype::text
             FROM pg_default_acl a, aclexplode(a.defaclacl) x
            WHERE x.grantee = %s::regrole ORDER BY 1""",
        (ROLE,),
    ).fetchall()
    return [grant for (grant,) in rows]


def test_the_upgrade_takes_back_what_the_default_privileges_gave(
    scratch_database: Callable[[], str],
) -> None:
    """Revision 0019 on a database that lived under 0011's default privileges: the role loses
    them and whatever they gave tables made by hand since, and keeps its named grants; the way
    down gives the default privileges back (not the tables' grants)."""
    url = scratch_database()
    config = Config(str(REPO / "alembic.ini"), stdout=io.StringIO())
    config.attributes["url"] = url
    command.upgrade(config, "0018")
    with psycopg.connect(url, autocommit=True) as conn:
        make_tables_by_hand(conn)
        assert readable_relations(conn) == sorted(
            {*GRANTED_RELATIONS, HAND_PARTITION, SCRATCH_COPY}
        )
        assert default_grants(conn) == ["postgres r"]
    command.upgrade(config, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        assert readable_relations(conn) == GRANTED_RELATIONS
        assert default_grants(conn) == []
    command.downgrade(config, "0018")
    with psycopg.connect(url, autocommit=True) as conn:
        assert default_grants(conn) == ["postgres r"]
        assert readable_relations(conn) == GRANTED_RELATIONS


def test_the_upgrade_takes_back_default_privileges_another_role_gave(
    scratch_database: Callable[[], str],
) -> None:
    """0011 may have run as another role than 0019 does: its default grant is revoked FOR
    that role too, not left in place silently."""
    url = scratch_database()
    config = Config(str(REPO / "alembic.ini"), stdout=io.StringIO())
    config.attributes["url"] = url
    command.upgrade(config, "0018")
    other = f"kf_migrator_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(other)))
        try:
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                    "GRANT SELECT ON TABLES TO {}"
                ).format(sql.Identifier(other), sql.Identifier(ROLE))
            )
            assert default_grants(conn) == sorted([f"{other} r", "postgres r"])
            command.upgrade(config, "head")
            assert default_grants(conn) == []
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(other)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(other)))


def memberships(server_url: str) -> list[tuple[str, bool]] | None:
    """(member, admin option) of each membership in the role; None when the role is gone."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        if conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            return None
        rows = conn.execute(
            """SELECT m.member::regrole::text, m.admin_option FROM pg_auth_members m
                WHERE m.roleid = %s::regrole ORDER BY 1""",
            (ROLE,),
        ).fetchall()
    return [(member, admin) for member, admin in rows]


def test_the_downgrade_drops_the_role_its_creator_administers() -> None:
    """Neon's way: a migrating role with CREATEROLE but not superuser. PostgreSQL 16+ makes it
    an ADMIN member of the role it creates, with neither INHERIT nor SET: it may manage the
    role, not use it, so the way down below 0011 still drops the role when that is all; a login
    put in the role as docs/analytics.md says keeps it. On a server of its own, where no other
    database uses the role."""
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-pg-") as tmp,
        LocalPostgres(Path(tmp) / "pgdata", ephemeral=True) as server,
    ):
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("CREATE ROLE kf_owner LOGIN CREATEDB CREATEROLE")
            conn.execute("CREATE DATABASE kf_owned OWNER kf_owner")
        url = with_database(server.url(), "kf_owned").replace("postgres@", "kf_owner@")
        config = Config(str(REPO / "alembic.ini"), stdout=io.StringIO())
        config.attributes["url"] = url

        command.upgrade(config, "head")
        assert memberships(server.url()) == [("kf_owner", True)]
        command.downgrade(config, "0010")
        assert memberships(server.url()) is None

        command.upgrade(config, "head")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE kf_login LOGIN IN ROLE {ROLE}")
        command.downgrade(config, "0010")
        assert memberships(server.url()) == [("kf_login", False), ("kf_owner", True)]
