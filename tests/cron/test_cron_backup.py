"""The backup cron against S3 (moto) and real Postgres: dump → restore round-trips every table
byte for byte, retention keeps the newest N, an interrupted backup leaves nothing behind, and a
restore refuses (changing nothing) whatever it cannot load faithfully."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from devkit import cli
from devkit.migrate import upgrade_head
from shared import s3 as s3_transport
from shared.cron import backup
from shared.cron.runner import LEASE_HELD, run_job
from tests.support.cron import BudgetContext, configure, count, overlapping_runs
from tests.support.s3 import BUCKET, PREFIX, leave_upload, mock_s3, refuse_deletes, uploads

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
ScratchDatabase = Callable[[], str]


@pytest.fixture
def s3(db_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """S3 for tests of the job, which takes its lease through the lane's URL."""
    with mock_s3(monkeypatch) as client:
        yield client


@pytest.fixture
def direct_s3(
    direct_database_url: str, clean_tables: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """S3 for tests of backup and restore themselves: they only ever use the direct URL, so
    one lane is enough."""
    from shared.config import get_settings
    from shared.db import dispose_engine

    configure(
        monkeypatch, DATABASE_URL=direct_database_url, DIRECT_DATABASE_URL=direct_database_url
    )
    dispose_engine()
    with mock_s3(monkeypatch) as client:
        yield client
    dispose_engine()
    get_settings.cache_clear()


@pytest.fixture
def empty_target(scratch_database: ScratchDatabase) -> str:
    """An empty database migrated to head: what a restore loads into."""
    url = scratch_database()
    upgrade_head(url)
    return url


def keys(s3: Any, prefix: str = PREFIX) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


# --------------------------------------------------------------------------- seed data

AWKWARD = "tab\there, newline\nhere, back\\slash, \\N, quote ' \", ünïcødé ☃, \\."


def seed_everything(conn: psycopg.Connection[Any], *, history_rows: int = 2_000) -> None:
    """Rows in every table, with the values COPY text must escape: tabs, newlines,
    backslashes, a literal `\\N` and `\\.`, NULLs, arrays, JSONB, enums, doubles, dates."""
    t0 = datetime(2026, 11, 1, 9, 30, 15, 123000)
    conn.execute(
        """INSERT INTO users (id, email, tier, "keywordSearchesThisMonth", "keywordSearchesTotal",
               "monthlyResetAt", "stripeCustomerId", "subscriptionStatus", "trialEndsAt",
               "createdAt", "updatedAt", "trialStartedAt")
           SELECT 'user' || g, 'u' || g || '@example.com',
                  (ARRAY['FREE','PRO','ENTERPRISE'])[1 + g %% 3]::"UserTier", g, g * 10,
                  %(t)s, CASE WHEN g %% 2 = 0 THEN 'cus_' || g END,
                  CASE WHEN g %% 3 = 1 THEN 'active' END, %(t)s, %(t)s, %(t)s, NULL
           FROM generate_series(1, 50) g""",
        {"t": t0},
    )
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", name, keywords, "updatedAt", description,
               results, "resultCount")
           VALUES ('s1', 'user1', %s, %s, %s, %s, %s, 2),
                  ('s2', 'user2', 'plain', NULL, %s, NULL, NULL, NULL)""",
        (AWKWARD, ["a\tb", "c\nd", "e\\f", "", None], t0, AWKWARD,
         Jsonb([{"keyword": AWKWARD, "volume": 1.5e300}, {"n": None}]), t0),
    )  # fmt: skip
    conn.execute(
        """INSERT INTO organizations (id, name, slug, tier, "stripeCustomerId", "deletedAt",
               "updatedAt")
           VALUES ('org_1', %s, 'team-1', 'PRO', 'cus_org_1', NULL, %s),
                  ('org_2', '', NULL, 'FREE', NULL, %s, %s)""",
        (AWKWARD, t0, t0, t0),
    )
    conn.execute(
        """INSERT INTO organization_members ("organizationId", "userId", role, permissions,
               "updatedAt") VALUES ('org_1', 'user1', 'org:admin', %s, %s),
                                   ('org_1', 'user_not_signed_in', 'org:member', NULL, %s)""",
        (["org:billing:manage", AWKWARD], t0, t0),
    )
    conn.execute(
        """INSERT INTO saved_searches (id, "userId", "organizationId", name, keywords,
               "updatedAt") VALUES ('s3', NULL, 'org_1', 'team, creator erased', '{}', %s)""",
        (t0,),
    )
    conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
               provider, "cacheHit", "responseTime", "keywordCount", "searchedAt", "userAgent",
               "ipAddress")
           SELECT 'h' || g, CASE WHEN g %% 5 <> 0 THEN 'user' || (1 + g %% 50) END,
                  ARRAY[md5(g::text), md5((g * 7)::text), md5((g * 11)::text),
                        md5((g * 13)::text)], 'US', 'en', 'broad',
                  (ARRAY['mock','dataforseo'])[1 + g %% 2], g %% 3 = 0, g %% 997, 2,
                  %(t)s + g * interval '1 second',
                  md5((g * 3)::text) || md5((g * 5)::text) || %(a)s, '203.0.113.0'
           FROM generate_series(1, %(n)s) g""",
        {"t": t0, "n": history_rows, "a": AWKWARD},
    )
    conn.execute(
        """INSERT INTO account_tombstones (key, "trialEndsAt", "keywordsUsed")
           VALUES (md5('a') || md5('b'), %s, 300), (md5('c') || md5('d'), %s, 0)""",
        (t0, t0),
    )
    conn.execute(
        """INSERT INTO api_usage (id, "userId", endpoint, method, "statusCode", duration,
               "ipAddress", "userAgent", timestamp)
           VALUES ('a1', NULL, '/api/keywords', 'POST', 200, 87, NULL, %s, %s)""",
        (AWKWARD, t0),
    )
    conn.execute(
        """INSERT INTO webhook_events (id, type, processed, "processedAt", attempts, error,
               payload, "createdAt")
           VALUES ('evt_1', 'invoice.paid', true, %s, 2, %s, %s, %s),
                  ('evt_2', 'x', false, NULL, 1, NULL, NULL, %s)""",
        (t0, AWKWARD, Jsonb({"id": "evt_1", "nested": {"s": AWKWARD, "n": [1, 2.5, None]}}),
         t0, t0),
    )  # fmt: skip
    conn.execute(
        """INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers",
               description, "updatedAt")
           VALUES ('f1', 'new-ui', true, 37, ARRAY['user1', 'us"er2'], %s, %s)""",
        (AWKWARD, t0),
    )
    conn.execute(
        """INSERT INTO system_metrics (id, metric, value, tags, timestamp)
           VALUES ('m1', 'a', 0.1 + 0.2, '{"k": "v"}', %s), ('m2', 'b', 1e-300, NULL, %s),
                  ('m3', 'c', -0.0, NULL, %s), ('m4', 'd', 'NaN', NULL, %s)""",
        (t0, t0, t0, t0),
    )
    conn.execute(
        """INSERT INTO legacy_repairs (key, kind, "userId", attempts, error, "updatedAt")
           VALUES ('user:user1', 'user', 'user1', 3, %s, %s)""",
        (AWKWARD, t0),
    )
    conn.execute(
        """INSERT INTO data_exports (id, "userId", status, "objectKey", bytes, "gzipBytes",
               attempts, error, "createdAt", "startedAt", "finishedAt", "expiresAt", "updatedAt")
           VALUES ('exp1', 'user1', 'ready', 'keyflash-exports/user1/exp1.json.gz', 12345678,
                   275000, 1, NULL, %s, %s, %s, %s, %s)""",
        (t0, t0, t0, t0, t0),
    )
    conn.execute(
        """INSERT INTO cron_leases (job, holder, "expiresAt", state, "updatedAt")
           VALUES ('rollup', NULL, %s, %s, %s)""",
        (t0, Jsonb({"watermark": "2026-11-01T00:00:00+00:00"}), t0),
    )
    conn.execute(
        """INSERT INTO keyword_reservations (id, "userId", keywords, "reservedAt", "expiresAt")
           VALUES ('hold1', 'user1', 3, %s, %s)""",
        (t0, t0),
    )
    conn.execute(
        """INSERT INTO search_daily_rollups (day, provider, searches, keywords, "cacheHits",
               "responseTimeTotal", "avgResponseTime", "updatedAt")
           VALUES ('2026-11-01', 'mock', 3, 6, 1, 10, 3.3333333333333335, %s)""",
        (t0,),
    )
    conn.execute(
        """INSERT INTO erased_billing_customers ("customerHash", "erasedAt") VALUES (%s, %s)""",
        (hashlib.sha256(b"cus_erased").hexdigest(), t0),
    )
    conn.execute(
        """INSERT INTO legacy_counter_deltas (id, key, "userId", delta, "expiresAt", attempts,
               error, "updatedAt")
           VALUES ('d1', 'usage:user1:2026-11', 'user1', -3, %s, 2, %s, %s)""",
        (t0, AWKWARD, t0),
    )


def dump(url: str) -> dict[str, bytes]:
    """Every public table's full content as COPY text, in a stable order."""
    out: dict[str, bytes] = {}
    with psycopg.connect(url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        for table in tables:
            buffer = io.BytesIO()
            query = sql.SQL("COPY (SELECT * FROM {t} ORDER BY {t}::text) TO STDOUT").format(
                t=sql.Identifier(table)
            )
            with conn.cursor().copy(query) as copy:
                for data in copy:
                    buffer.write(data)
            out[table] = buffer.getvalue()
    return out


# --------------------------------------------------------------------------- round trip


def test_backup_then_restore_round_trips_every_table_exactly(
    direct_s3: Any,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
    empty_target: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Big enough for a multipart upload with 5 MiB parts (random md5 text barely compresses).
    monkeypatch.setattr(s3_transport, "PART_SIZE", 5 * 1024 * 1024)
    seed_everything(admin_conn, history_rows=60_000)
    source = dump(direct_database_url)
    assert all(source[table] for table in source if table != "alembic_version"), (
        "every table must have rows for the round trip to mean something"
    )

    result = backup.create_backup(
        direct_database_url, s3=direct_s3, bucket=BUCKET, prefix=PREFIX, now=NOW
    )
    manifest = result.manifest
    assert result.key == f"{PREFIX}20261128T020000000Z/manifest.json"
    revision = admin_conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision is not None and manifest["alembicRevision"] == revision[0]
    order = [entry["table"] for entry in manifest["tables"]]
    assert set(order) == set(source) - {"alembic_version"}
    assert order.index("users") < order.index("saved_searches")  # FK order for loading
    assert order.index("users") < order.index("search_history")
    history = next(e for e in manifest["tables"] if e["table"] == "search_history")
    assert history["rows"] == 60_000
    etag = direct_s3.head_object(
        Bucket=BUCKET, Key=f"{PREFIX}20261128T020000000Z/search_history.tsv.gz"
    )
    assert etag["ETag"].endswith('-2"'), "the large table should have gone up in two parts"
    users_file = direct_s3.get_object(
        Bucket=BUCKET, Key=f"{PREFIX}20261128T020000000Z/users.tsv.gz"
    )
    assert gzip.decompress(users_file["Body"].read()).count(b"\n") == 50

    summary = backup.restore_backup(f"s3://{BUCKET}/{result.key}", empty_target, s3=direct_s3)
    assert summary["rows"] == sum(entry["rows"] for entry in manifest["tables"])
    assert dump(empty_target) == source


def test_a_partition_attached_by_hand_in_public_goes_once_with_its_table(
    direct_s3: Any, scratch_database: ScratchDatabase, empty_target: str
) -> None:
    """A partition an operator made with a bare CREATE TABLE lives in `public`; its rows are
    its parent's, dumped once with it: not a table of their own that no restore target has."""
    source = scratch_database()
    upgrade_head(source)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE search_history_2031q1 PARTITION OF search_history "
            "FOR VALUES FROM ('2031-01-01') TO ('2031-04-01')"
        )
        conn.execute(
            'INSERT INTO search_history (id, keywords, location, language, "matchType", '
            'provider, "responseTime", "searchedAt") '
            "VALUES ('by-hand', ARRAY['kw'], 'US', 'en', 'broad', 'mock', 10, '2031-02-01')"
        )
    result = backup.create_backup(source, s3=direct_s3, bucket=BUCKET, prefix=PREFIX, now=NOW)
    tables = {entry["table"]: entry["rows"] for entry in result.manifest["tables"]}
    assert "search_history_2031q1" not in tables and tables["search_history"] == 1
    backup.restore_backup(f"s3://{BUCKET}/{result.key}", empty_target, s3=direct_s3)
    with psycopg.connect(empty_target) as conn:
        assert count(conn, "SELECT count(*) FROM search_history WHERE id = 'by-hand'") == 1


def test_what_the_migrations_do_not_make_is_left_out_and_named(
    direct_s3: Any, scratch_database: ScratchDatabase, empty_target: str
) -> None:
    """A restore loads into a database the migrations built, so a table or a column they do
    not make (an analyst's scratch copy, a column added by hand) could never be loaded: the
    backup holds the schema's tables and columns only, and its manifest names the rest."""
    source = scratch_database()
    upgrade_head(source)
    with psycopg.connect(source, autocommit=True) as conn:
        seed_everything(conn, history_rows=10)
        conn.execute("CREATE TABLE zz_users_before AS SELECT * FROM users")
        conn.execute("ALTER TABLE feature_flags ADD COLUMN scratch text DEFAULT 'by hand'")
    result = backup.create_backup(source, s3=direct_s3, bucket=BUCKET, prefix=PREFIX, now=NOW)
    assert result.manifest["skipped"] == {
        "tables": ["zz_users_before"],
        "columns": {"feature_flags": ["scratch"]},
    }
    assert "zz_users_before" not in [entry["table"] for entry in result.manifest["tables"]]

    # A backup made before, which holds such a table, is refused before anything is loaded.
    scratch = {"table": "zz_users_before", "file": "zz_users_before.tsv.gz", "columns": ["id"]}
    older = dict(result.manifest, tables=[*result.manifest["tables"], scratch])
    direct_s3.put_object(Bucket=BUCKET, Key="older/manifest.json", Body=json.dumps(older))
    with pytest.raises(backup.RestoreError, match="table zz_users_before is not in a database"):
        backup.restore_backup(f"s3://{BUCKET}/older/", empty_target, s3=direct_s3)

    backup.restore_backup(f"s3://{BUCKET}/{result.key}", empty_target, s3=direct_s3)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("DROP TABLE zz_users_before")
        conn.execute("ALTER TABLE feature_flags DROP COLUMN scratch")
    assert dump(empty_target) == dump(source)


# --------------------------------------------------------------------------- the job


def test_the_backup_job_uploads_skips_a_second_run_and_keeps_the_newest(
    s3: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_everything(admin_conn, history_rows=10)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}20200101T000000000Z/users.tsv.gz", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="elsewhere/keep.txt", Body=b"not ours")

    first = run_job(backup.JOB, now=NOW)
    assert first["complete"] is True and first["tables"] >= 10
    assert first["key"] == f"s3://{BUCKET}/{PREFIX}20261128T020000000Z/manifest.json"
    assert first["processed"] == sum(
        count(admin_conn, f'SELECT count(*) FROM "{t}"')
        for t in ("users", "saved_searches", "search_history", "api_usage", "webhook_events",
                  "feature_flags", "system_metrics", "legacy_repairs", "search_daily_rollups",
                  "keyword_reservations", "erased_billing_customers", "legacy_counter_deltas",
                  "account_tombstones", "data_exports", "organizations", "organization_members")
    ) + 2  # and cron_leases in the snapshot: rollup's row and this run's own lease  # fmt: skip
    assert first["deletedBackups"] == ["20200101T000000000Z"]  # interrupted: no manifest
    stored = keys(s3)

    again = run_job(backup.JOB, now=NOW + timedelta(hours=3))
    assert again["skipped"].startswith("already backed up today") and again["processed"] == 0
    assert keys(s3) == stored

    for day in (1, 2):
        run_job(backup.JOB, now=NOW + timedelta(days=day))
    complete, interrupted, _ = backup.list_backups(s3, BUCKET, PREFIX)
    assert complete == ["20261129T020000000Z", "20261130T020000000Z"] and interrupted == []
    assert keys(s3, "elsewhere/") == ["elsewhere/keep.txt"]

    forced = run_job(backup.JOB, now=NOW + timedelta(days=2, hours=1), options={"force": True})
    assert forced["complete"] is True
    assert backup.list_backups(s3, BUCKET, PREFIX)[0] == [
        "20261130T020000000Z",
        "20261130T030000000Z",
    ]


class FaultyS3:
    """The real (moto) client, but the S3 operations named in `failing` answer InternalError,
    as S3 does in a hiccup (or with a right missing from the role)."""

    def __init__(self, client: Any, *failing: str) -> None:
        self.client = client
        self.failing = set(failing)

    def _check(self, method: str) -> None:
        from botocore.exceptions import ClientError

        operation = self.client.meta.method_to_api_mapping.get(method, method)
        if operation in self.failing:
            error = {"Error": {"Code": "InternalError", "Message": "We encountered an error"}}
            raise ClientError(error, operation)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute) or name not in self.client.meta.method_to_api_mapping:
            return attribute

        def call(**kwargs: Any) -> Any:
            self._check(name)
            return attribute(**kwargs)

        return call

    def get_paginator(self, name: str) -> Any:
        self._check(name)
        return self.client.get_paginator(name)


def test_a_backup_whose_prune_fails_is_recorded_and_not_made_again(
    s3: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup is complete before pruning: a listing that fails leaves it recorded, so
    Lambda's retries (or the next run that day) make no second one; the next backup prunes."""
    seed_everything(admin_conn, history_rows=10)
    faulty = FaultyS3(s3, "ListObjectsV2")
    monkeypatch.setattr(backup, "s3_client", lambda _deadline: faulty)

    made = run_job(backup.JOB, now=NOW)
    assert made["complete"] is False and made["pruneFailed"] == "InternalError"
    assert made["key"] == f"s3://{BUCKET}/{PREFIX}20261128T020000000Z/manifest.json"
    for minutes in (1, 3):  # Lambda's two retries of the same invocation
        retry = run_job(backup.JOB, now=NOW + timedelta(minutes=minutes))
        assert retry["skipped"].startswith("already backed up today"), retry
    faulty.failing.clear()
    assert backup.list_backups(s3, BUCKET, PREFIX)[0] == ["20261128T020000000Z"]

    for day in (1, 2):
        run_job(backup.JOB, now=NOW + timedelta(days=day))
    assert backup.list_backups(s3, BUCKET, PREFIX)[0] == [
        "20261129T020000000Z",
        "20261130T020000000Z",
    ]


def test_a_prune_whose_deletes_s3_refused_per_key_is_a_failed_prune(
    s3: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 refusing keys in its 200 answer to DeleteObjects (no s3:DeleteObject, a locked
    object) left the backup stored: not pruned, and said so as a refused listing is."""
    seed_everything(admin_conn, history_rows=10)
    old = f"{PREFIX}20200101T000000000Z/users.tsv.gz"
    s3.put_object(Bucket=BUCKET, Key=old, Body=b"x")  # interrupted, years old
    refusing = s3_transport.s3_client()
    refuse_deletes(refusing, lambda key: True)
    monkeypatch.setattr(backup, "s3_client", lambda _deadline: refusing)

    made = run_job(backup.JOB, now=NOW)
    assert made["complete"] is False and made["pruneFailed"] == "AccessDenied", made
    assert "deletedBackups" not in made
    assert keys(s3, f"{PREFIX}20200101T000000000Z/") == [old]


def test_a_prune_s3_never_answers_ends_by_the_runs_deadline_with_the_backup_recorded(
    s3: Any,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listing S3 never answers held the run 3 x 60 s past its limit: it now fails at the
    run's deadline as any S3 failure of the prune does (`pruneFailed`), the backup recorded and
    the lease given back."""
    seed_everything(admin_conn, history_rows=10)
    configure(monkeypatch, PROVIDER_DEADLINE_MARGIN_S=1)
    answered = threading.Event()  # set when the test ends: the abandoned call may end then

    def unanswered_listing(deadline: float) -> Any:
        client = s3_transport.s3_client(deadline)
        client.meta.events.register(
            "before-call.s3.ListObjectsV2", lambda **_: answered.wait(120) and None
        )
        return client

    monkeypatch.setattr(backup, "s3_client", unanswered_listing)
    # 15 s less the database's 3 s and the 1 s margin: S3 gets until 11 s into the run.
    try:
        made = run_job(backup.JOB, now=NOW, context=BudgetContext(checks=1000, first_ms=15_000))
    finally:
        answered.set()
    assert made["pruneFailed"] == "S3DeadlineError" and made["complete"] is False, made
    assert made["key"] == f"s3://{BUCKET}/{PREFIX}20261128T020000000Z/manifest.json"
    holder = admin_conn.execute("SELECT holder FROM cron_leases WHERE job = 'backup'").fetchone()
    assert holder == (None,)
    assert made["durationMs"] < 15_000  # a guard: the limit, not botocore's three minutes


def test_a_day_whose_backup_is_gone_from_the_bucket_backs_up_again(
    s3: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip HEADs the manifest the database recorded: deleted by hand or a lifecycle rule,
    or BACKUP_BUCKET switched that day, the day gets its backup after all."""
    seed_everything(admin_conn, history_rows=10)
    made = run_job(backup.JOB, now=NOW)
    folder = f"{PREFIX}20261128T020000000Z/"
    s3_transport.delete_keys(s3, BUCKET, keys(s3, folder))

    again = run_job(backup.JOB, now=NOW + timedelta(hours=1))
    assert "skipped" not in again and again["complete"] is True, again
    assert again["key"] != made["key"]
    assert backup.list_backups(s3, BUCKET, PREFIX)[0] == ["20261128T030000000Z"]
    later = run_job(backup.JOB, now=NOW + timedelta(hours=2))
    recorded = f"{PREFIX}20261128T030000000Z/manifest.json"
    assert later["skipped"] == f"already backed up today ({recorded})"

    # S3 that cannot answer the HEAD is no proof either way: the run fails, as a backup would.
    monkeypatch.setattr(backup, "s3_client", lambda _deadline: FaultyS3(s3, "HeadObject"))
    with pytest.raises(Exception, match="InternalError"):
        run_job(backup.JOB, now=NOW + timedelta(hours=3))
    assert backup.list_backups(s3, BUCKET, PREFIX)[0] == ["20261128T030000000Z"]


def test_only_restorable_backups_count_toward_the_kept_and_what_is_not_ours_stays(
    s3: Any, admin_conn: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A zero-byte or another project's manifest is no backup: it neither counts toward
    BACKUP_KEEP (2 here) nor gets deleted, and neither does a folder not named as ours."""
    seed_everything(admin_conn, history_rows=10)
    garbage = {
        f"{PREFIX}20261201T000000000Z/manifest.json": b"",
        f"{PREFIX}20261202T000000000Z/manifest.json": json.dumps({"version": 1, "files": []}),
        f"{PREFIX}20261202T000000000Z/db.dump": b"theirs",
        f"{PREFIX}backups/2026-12-01/db.dump": b"theirs",
        f"{PREFIX}notes.txt": b"theirs",
    }
    for key, body in garbage.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    for day in (0, 1, 2):
        run_job(backup.JOB, now=NOW + timedelta(days=day))
    assert backup.list_backups(s3, BUCKET, PREFIX) == (
        ["20261129T020000000Z", "20261130T020000000Z"],
        [],
        ["20261201T000000000Z", "20261202T000000000Z", "backups"],
    )
    assert set(garbage) <= set(keys(s3))
    described = {item.key: item for item in backup.describe_backups(s3, BUCKET, PREFIX)}
    assert described[f"{PREFIX}20261130T020000000Z/"].restorable
    for folder in ("20261201T000000000Z/", "20261202T000000000Z/", "backups/"):
        assert not described[PREFIX + folder].restorable

    assert cli.main(["db", "backups"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "not a keyflash backup" not in listed[f"{PREFIX}20261130T020000000Z/"]
    for folder in ("20261201T000000000Z/", "20261202T000000000Z/", "backups/"):
        assert listed[PREFIX + folder].endswith("not a keyflash backup (left alone; not "
                                                 "counted toward BACKUP_KEEP)")  # fmt: skip


def test_an_interrupted_folder_younger_than_a_day_may_be_another_deployment_s_run(
    s3: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    """Deployments sharing a prefix back up at the same hour under their own leases: a folder
    without a manifest that is less than a day old may be one still being written, so only
    older ones are deleted as interrupted."""
    seed_everything(admin_conn, history_rows=10)
    running = f"{PREFIX}20261128T015959000Z/users.tsv.gz"  # staging's, a second earlier
    dead = f"{PREFIX}20261127T015959000Z/users.tsv.gz"  # a day and a second old
    for key in (running, dead):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    made = run_job(backup.JOB, now=NOW)
    assert made["deletedBackups"] == ["20261127T015959000Z"]
    assert running in keys(s3) and dead not in keys(s3)
    assert backup.list_backups(s3, BUCKET, PREFIX)[1] == ["20261128T015959000Z"]


def test_an_upload_a_cut_off_backup_left_is_aborted_once_a_day_old(
    s3: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    """A run stopped at its deadline sends nothing more, its abort included: the parts of its
    incomplete upload stay stored and billed, shown by no listing. The next backups abort
    those in folders named as ours once a day old, as interrupted folders are deleted."""
    seed_everything(admin_conn, history_rows=10)
    dead = f"{PREFIX}20261127T015959000Z/search_history.tsv.gz"  # a day and a second old
    running = f"{PREFIX}20261128T015959000Z/users.tsv.gz"  # maybe staging's, being written
    foreign = f"{PREFIX}by-hand/upload.bin"  # not ours: left alone
    for key in (dead, running, foreign):
        leave_upload(s3, key, b"x")

    made = run_job(backup.JOB, now=NOW)
    assert made["uploadsAborted"] == 1
    assert sorted(uploads(s3)) == sorted([running, foreign])


def test_a_backup_missing_a_table_file_is_not_counted_as_restorable(
    direct_s3: Any, direct_database_url: str, admin_conn: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Restorable is every file the manifest names being listed, not the manifest alone: a
    backup whose table file was deleted does not take a kept place, so the older, whole
    backup stays."""
    seed_everything(admin_conn, history_rows=10)
    for day in (0, 1):
        backup.create_backup(
            direct_database_url, s3=direct_s3, bucket=BUCKET, prefix=PREFIX,
            now=NOW + timedelta(days=day),
        )  # fmt: skip
    direct_s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}20261129T020000000Z/users.tsv.gz")

    assert backup.prune_backups(direct_s3, BUCKET, PREFIX, keep=1, now=NOW) == []
    assert backup.list_backups(direct_s3, BUCKET, PREFIX) == (
        ["20261128T020000000Z"],
        [],
        ["20261129T020000000Z"],
    )
    damaged = backup.describe_backups(direct_s3, BUCKET, PREFIX)[1]
    assert damaged.missing == ("users.tsv.gz",) and not damaged.restorable
    assert cli.main(["db", "backups"]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[3]
        .endswith("damaged: users.tsv.gz missing (left alone; not counted toward BACKUP_KEEP)")
    )


def test_a_programming_error_while_pruning_fails_the_run(
    s3: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only S3's errors are the prune's housekeeping hiccups; a bug in it is not hidden as a
    one-word warning but fails the run (the day's backup is recorded already)."""
    seed_everything(admin_conn, history_rows=10)

    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise KeyError("tables")

    monkeypatch.setattr(backup, "prune_backups", broken)
    with pytest.raises(KeyError, match="tables"):
        run_job(backup.JOB, now=NOW)
    retry = run_job(backup.JOB, now=NOW + timedelta(minutes=1))
    assert retry["skipped"].startswith("already backed up today"), retry


def test_a_restored_database_backs_up_at_once(
    s3: Any, admin_conn: psycopg.Connection[Any], empty_target: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The snapshot holds the backup's own live lease (and any other job's running then): a
    restored database has no such run, so its leases come back released."""
    from shared.db import dispose_engine

    seed_everything(admin_conn, history_rows=10)
    made = run_job(backup.JOB, now=NOW)
    snapshot = backup.load_manifest(made["key"], s3=s3)[2]
    assert next(e for e in snapshot["tables"] if e["table"] == "cron_leases")["rows"] == 2

    backup.restore_backup(made["key"], empty_target, s3=s3)
    with psycopg.connect(empty_target) as conn:
        leases = conn.execute("SELECT job, holder FROM cron_leases ORDER BY job").fetchall()
    assert leases == [("backup", None), ("rollup", None)]
    configure(monkeypatch, DATABASE_URL=empty_target, DIRECT_DATABASE_URL=empty_target)
    dispose_engine()
    again = run_job(backup.JOB, now=NOW + timedelta(days=1))
    assert "skipped" not in again and again["complete"] is True, again


def test_a_backup_out_of_time_leaves_nothing_and_the_next_run_finishes(
    s3: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_everything(admin_conn, history_rows=10)
    # One check for the run's batch, two tables, then the time is up.
    partial = run_job(backup.JOB, now=NOW, context=BudgetContext(checks=3))
    assert partial["complete"] is False and "out of time" in partial["stopped"]
    assert keys(s3) == []
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    done = run_job(backup.JOB, now=NOW + timedelta(minutes=1))
    assert done["complete"] is True and len(backup.list_backups(s3, BUCKET, PREFIX)[0]) == 1


def test_a_large_table_out_of_time_aborts_its_multipart_upload(
    direct_s3: Any, direct_database_url: str, admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(s3_transport, "PART_SIZE", 5 * 1024 * 1024)
    monkeypatch.setattr(s3_transport, "CHECK_TIME_EVERY", 1024 * 1024)
    seed_everything(admin_conn, history_rows=60_000)

    class Spy:
        """The real client; notes when a multipart upload has begun."""

        started = False

        def __getattr__(self, name: str) -> Any:
            return getattr(direct_s3, name)

        def create_multipart_upload(self, **kwargs: Any) -> Any:
            self.started = True
            return direct_s3.create_multipart_upload(**kwargs)

    spy = Spy()
    with pytest.raises(backup.OutOfTimeError):  # time runs out right after the first part
        backup.create_backup(
            direct_database_url, s3=spy, bucket=BUCKET, prefix=PREFIX, now=NOW,
            has_time=lambda: not spy.started,
        )  # fmt: skip
    assert spy.started
    assert keys(direct_s3) == []
    assert direct_s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_overlapping_backups_make_one(s3: Any, admin_conn: psycopg.Connection[Any]) -> None:
    first, second = overlapping_runs(backup.JOB, now=NOW)
    assert second["skipped"] == LEASE_HELD and first["complete"] is True
    assert len(backup.list_backups(s3, BUCKET, PREFIX)[0]) == 1


def test_an_s3_failure_mid_backup_removes_what_was_uploaded(
    direct_s3: Any, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> None:
    seed_everything(admin_conn, history_rows=10)

    class FailingS3:
        """The real client, but the fourth PUT fails (as a network error would)."""

        def __init__(self) -> None:
            self.puts = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(direct_s3, name)

        def put_object(self, **kwargs: Any) -> Any:
            self.puts += 1
            if self.puts == 4:
                raise ConnectionError("connection reset by peer")
            return direct_s3.put_object(**kwargs)

    with pytest.raises(ConnectionError):
        backup.create_backup(
            direct_database_url, s3=FailingS3(), bucket=BUCKET, prefix=PREFIX, now=NOW
        )
    assert keys(direct_s3) == []


def test_the_backup_job_needs_a_bucket_and_a_direct_url(
    db_env: str, monkeypatch: pytest.MonkeyPatch, admin_conn: psycopg.Connection[Any]
) -> None:
    configure(monkeypatch, BACKUP_BUCKET=None)
    with pytest.raises(backup.BackupError, match="BACKUP_BUCKET"):
        run_job(backup.JOB, now=NOW)
    configure(monkeypatch, BACKUP_BUCKET=BUCKET, DIRECT_DATABASE_URL=None)
    with pytest.raises(backup.BackupError, match="DIRECT_DATABASE_URL"):
        run_job(backup.JOB, now=NOW)
    holder = admin_conn.execute("SELECT holder FROM cron_leases WHERE job = 'backup'").fetchone()
    assert holder == (None,)  # the failed runs gave the lease back
    with pytest.raises(backup.BackupError, match="pooler"):
        backup.libpq_url("postgresql://u:p@127.0.0.1:6432/db?pgbouncer=true")
    with pytest.raises(backup.BackupError, match="pooler"):
        backup.libpq_url("postgresql://u:p@ep-x-123-pooler.eu-central-1.aws.neon.tech/db")


# --------------------------------------------------------------------------- restore refusals


@pytest.fixture
def made_backup(
    direct_s3: Any, direct_database_url: str, admin_conn: psycopg.Connection[Any]
) -> str:
    seed_everything(admin_conn, history_rows=10)
    result = backup.create_backup(
        direct_database_url, s3=direct_s3, bucket=BUCKET, prefix=PREFIX, now=NOW
    )
    return f"s3://{BUCKET}/{result.key.removesuffix('manifest.json')}"


def test_restore_refuses_a_database_that_is_not_empty(
    made_backup: str, direct_s3: Any, empty_target: str
) -> None:
    with psycopg.connect(empty_target, autocommit=True) as conn:
        conn.execute("INSERT INTO feature_flags (id, key, \"updatedAt\") VALUES ('x', 'x', now())")
    with pytest.raises(backup.RestoreError, match="feature_flags is not empty"):
        backup.restore_backup(made_backup, empty_target, s3=direct_s3)
    with psycopg.connect(empty_target) as conn:
        assert count(conn, "SELECT count(*) FROM users") == 0


def test_restore_refuses_a_database_at_another_revision(
    made_backup: str, direct_s3: Any, scratch_database: ScratchDatabase
) -> None:
    unmigrated = scratch_database()
    with pytest.raises(backup.RestoreError, match="alembic upgrade"):
        backup.restore_backup(made_backup, unmigrated, s3=direct_s3)


def test_restore_of_a_damaged_backup_changes_nothing(
    made_backup: str, direct_s3: Any, empty_target: str
) -> None:
    key = made_backup.removeprefix(f"s3://{BUCKET}/") + "system_metrics.tsv.gz"
    good = gzip.decompress(direct_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    direct_s3.put_object(
        Bucket=BUCKET, Key=key, Body=gzip.compress(good.replace(b"\t0.3", b"\t0.4"))
    )
    with pytest.raises(backup.RestoreError, match="damaged"):
        backup.restore_backup(made_backup, empty_target, s3=direct_s3)
    with psycopg.connect(empty_target) as conn:
        assert count(conn, "SELECT count(*) FROM users") == 0  # all or nothing


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("corrupted", "is not valid gzip"),
        ("truncated", "ends before its gzip stream does (truncated)"),
        ("bad rows", "has rows PostgreSQL refuses (InvalidTextRepresentation)"),
    ],
)
def test_a_damaged_table_file_is_named_in_one_line_that_quotes_no_row(
    made_backup: str, direct_s3: Any, empty_target: str, caplog: pytest.LogCaptureFixture,
    damage: str, said: str,
) -> None:  # fmt: skip
    key = made_backup.removeprefix(f"s3://{BUCKET}/") + "saved_searches.tsv.gz"
    stored = direct_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    raw = gzip.decompress(stored)
    if damage == "corrupted":
        body = stored[:20] + bytes([stored[20] ^ 0xFF]) + stored[21:]
    elif damage == "truncated":
        body = stored[: len(stored) // 2]
    else:  # valid gzip, but a keywords array PostgreSQL cannot read
        body = gzip.compress(raw.replace(b"{", b'{"', 1))
    direct_s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    with pytest.raises(backup.RestoreError) as refused:
        backup.restore_backup(made_backup, empty_target, s3=direct_s3)
    assert str(refused.value) == f"{key} {said}: the backup is damaged"
    assert [r for r in caplog.records if r.name.startswith("psycopg")] == []
    with psycopg.connect(empty_target) as conn:
        assert count(conn, "SELECT count(*) FROM users") == 0  # all or nothing


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("deleted", "is missing: the backup is damaged"),
        ("stream", "could not be read from S3 (ResponseStreamingError): nothing was restored"),
    ],
)
def test_a_table_file_s3_cannot_give_is_one_restore_error(
    made_backup: str, direct_s3: Any, empty_target: str, fault: str, said: str
) -> None:
    """A table file deleted since (NoSuchKey) or a stream cut mid-read is a RestoreError, the
    one line the CLIs print, not botocore's traceback."""
    from botocore.exceptions import ResponseStreamingError

    key = made_backup.removeprefix(f"s3://{BUCKET}/") + "saved_searches.tsv.gz"

    class CutStream:
        """The real client; the table file's stream fails after its first chunk."""

        def __getattr__(self, name: str) -> Any:
            return getattr(direct_s3, name)

        def get_object(self, **kwargs: Any) -> Any:
            answer = direct_s3.get_object(**kwargs)
            if kwargs["Key"] != key:
                return answer
            body = answer["Body"]

            class Body:
                def iter_chunks(self, size: int) -> Iterator[bytes]:
                    yield body.read(10)
                    raise ResponseStreamingError(error="connection reset")

            return {**answer, "Body": Body()}

    client: Any = direct_s3
    if fault == "deleted":
        direct_s3.delete_object(Bucket=BUCKET, Key=key)
    else:
        client = CutStream()
    with pytest.raises(backup.RestoreError) as refused:
        backup.restore_backup(made_backup, empty_target, s3=client)
    assert str(refused.value) == f"{key} {said}"
    with psycopg.connect(empty_target) as conn:
        assert count(conn, "SELECT count(*) FROM users") == 0  # all or nothing


def test_restore_names_what_is_missing(direct_s3: Any, empty_target: str) -> None:
    with pytest.raises(backup.RestoreError, match="does not exist"):
        backup.restore_backup(
            f"s3://{BUCKET}/{PREFIX}20990101T000000000Z/", empty_target, s3=direct_s3
        )
    direct_s3.put_object(
        Bucket=BUCKET, Key="other/manifest.json", Body=json.dumps({"format": "zip"})
    )
    with pytest.raises(backup.RestoreError, match="not a keyflash-backup"):
        backup.restore_backup(f"s3://{BUCKET}/other/", empty_target, s3=direct_s3)
    with pytest.raises(backup.RestoreError, match="names no backup"):
        backup.parse_location("s3://bucket-only", None)
    assert backup.parse_location("kf/x/", "b") == ("b", "kf/x/manifest.json")
    assert backup.parse_location("s3://b/kf/x/manifest.json", None) == ("b", "kf/x/manifest.json")


def test_the_cli_lists_and_restores(
    made_backup: str,
    direct_s3: Any,
    empty_target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    direct_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}by-hand/db.dump", Body=b"theirs")
    assert backup.main(["list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing == {
        "restorable": [made_backup],
        "interrupted": [],
        "leftAlone": [f"s3://{BUCKET}/{PREFIX}by-hand/"],
    }
    assert backup.main(["restore", made_backup, "--database-url", empty_target]) == 0
    assert json.loads(capsys.readouterr().out)["tables"] >= 10
    assert backup.main(["restore", made_backup, "--database-url", empty_target]) == 1
    assert "is not empty" in capsys.readouterr().err
    # Neon's Vercel integration names the direct URL DATABASE_URL_UNPOOLED: the default too.
    configure(monkeypatch, DIRECT_DATABASE_URL=None, DATABASE_URL_UNPOOLED=empty_target)
    assert backup.main(["restore", made_backup]) == 1
    assert "is not empty" in capsys.readouterr().err


def test_load_manifest_says_why_a_key_is_no_backup(direct_s3: Any) -> None:
    with pytest.raises(backup.RestoreError, match="the bucket no-such-bucket does not exist"):
        backup.load_manifest("s3://no-such-bucket/kf/x/", s3=direct_s3)
    direct_s3.put_object(Bucket=BUCKET, Key="junk/manifest.json", Body=b"not json {")
    with pytest.raises(backup.RestoreError, match="is not JSON"):
        backup.load_manifest("junk/", s3=direct_s3, bucket=BUCKET)
    direct_s3.put_object(Bucket=BUCKET, Key="list/manifest.json", Body=b"[1, 2]")
    with pytest.raises(backup.RestoreError, match="not a keyflash-backup/1 manifest"):
        backup.load_manifest("list/", s3=direct_s3, bucket=BUCKET)


def test_describe_backups_gives_each_folder_its_size_time_and_state(
    made_backup: str, direct_s3: Any
) -> None:
    direct_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}20261129T020000000Z/users.tsv.gz", Body=b"x")
    direct_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}loose.txt", Body=b"not a backup")
    direct_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}by-hand/manifest.json", Body=b"{}")
    complete, interrupted, by_hand = backup.describe_backups(direct_s3, BUCKET, PREFIX)
    assert (by_hand.key, by_hand.created, by_hand.complete) == (f"{PREFIX}by-hand/", None, True)
    assert complete.key == made_backup.removeprefix(f"s3://{BUCKET}/")
    assert complete.complete and complete.created == NOW
    stored = s3_transport.list_objects(direct_s3, BUCKET, complete.key)
    assert complete.bytes == sum(item["Size"] for item in stored) > 0
    assert interrupted == backup.BackupInfo(
        f"{PREFIX}20261129T020000000Z/", 1, datetime(2026, 11, 29, 2, tzinfo=UTC), False
    )
