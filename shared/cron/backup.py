"""Logical backups to S3 with no PostgreSQL client binaries: `COPY … TO STDOUT` via psycopg.

Where crons run (Lambda, Vercel) there is no `pg_dump`, so a backup is the data of the
schema's tables (those of `shared.models`, which `alembic check` holds equal to the migrations:
what a restore's target, built by them, has), read in ONE `REPEATABLE READ READ ONLY`
transaction over the direct URL (one snapshot: the tables agree with each other, as with
pg_dump), each table streamed as gzip-compressed COPY text to its own S3 object (multipart,
8 MiB parts, never whole in memory):

    s3://BACKUP_BUCKET/BACKUP_PREFIX<20261128T020000123Z>/<table>.tsv.gz  … one per table
    s3://BACKUP_BUCKET/BACKUP_PREFIX<20261128T020000123Z>/manifest.json   written last

The manifest is the commit marker: it records the Alembic revision (the schema the data fits),
the tables in foreign-key order with their columns, row counts and SHA-256 of the data, and
under `skipped` the tables and columns in `public` the schema does not have (a scratch table, a
column added by hand), which a restore could not load. A folder without one is an interrupted
backup, deleted once it is a day old (younger, it may be another deployment's run still
writing); of the restorable ones the newest BACKUP_KEEP are kept; whatever else is under the
prefix is not ours and is left alone (`prune_backups`). The schema itself is not in
the backup: Alembic rebuilds it.

Restore (`restore_backup`, or `python -m functions.cron.backup restore s3://…`) loads a backup
into an EMPTY database migrated to the same revision, in one transaction, checking each table's
row count and checksum, and releases every cron lease it loaded (`release_leases`): the runs
that held them belong to the database the backup was taken from. The schema has no sequences
(ids are client-side cuids/UUIDs); a table with one would also need `setval` after loading.

The S3 transport (the gzip multipart stream, listing, deleting) is `shared.s3`'s; boto3 is
imported on first use there, so the cron's cold start does not pay for it.
"""

from __future__ import annotations

import argparse
import graphlib
import hashlib
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from shared.app_tables import APP_TABLES
from shared.clock import iso_ms
from shared.config import ConfigurationError, get_settings, read_variable
from shared.cron.runner import Job, Run, run_job
from shared.db_url import parse_database_url, redact_url
from shared.s3 import (
    GzipUpload,
    KeysNotDeleted,
    S3Client,
    abort_uploads,
    delete_keys,
    error_code,
    list_keys,
    list_objects,
    list_uploads,
    s3_client,
)
from shared.telemetry import log_event

FORMAT = "keyflash-backup/1"
MANIFEST = "manifest.json"
# A folder without a manifest is deleted only this long after its name's time. Every
# deployment backs up at 02:00 UTC, each under its own lease, so one sharing the prefix may be
# writing a folder now; a day is far beyond the longest run (CRON_MAX_DURATION_S ≤ 1 hour, 15
# minutes on Lambda) and clock skew, and the next day's backup still deletes it.
INTERRUPTED_AFTER = timedelta(days=1)


class BackupError(RuntimeError):
    """The backup cannot be made; the message says what to fix."""


class RestoreError(RuntimeError):
    """The backup cannot be restored here; the message says why and what to do."""


class OutOfTimeError(Exception):
    """The invocation's budget ran out mid-backup; what was uploaded has been removed."""


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: list[str]


# --------------------------------------------------------------------------- connections


def libpq_url(url: str) -> str:
    """The direct URL for psycopg (TLS rules applied); a pooler URL is refused."""
    target = parse_database_url(url, variable="DIRECT_DATABASE_URL")
    if target.is_pooler:
        raise BackupError(
            f"DIRECT_DATABASE_URL points at a transaction pooler ({target.host}); backups hold "
            "one snapshot for the whole dump: use the direct host (without -pooler)"
        )
    return "postgresql" + target.sqlalchemy_url.removeprefix("postgresql+psycopg")


def _connect(url: str) -> psycopg.Connection[Any]:
    settings = get_settings()
    return psycopg.connect(
        libpq_url(url),
        connect_timeout=settings.db_connect_timeout_s,
        application_name=f"{settings.db_application_name}-backup",
        prepare_threshold=None,
    )


# --------------------------------------------------------------------------- the schema


_TABLES = f"""
    SELECT t.relname, array_agg(a.attname::text ORDER BY a.attnum)
      FROM ({APP_TABLES}) t
      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = ''
     GROUP BY t.relname
"""
_FOREIGN_KEYS = """
    SELECT child.relname, parent.relname
      FROM pg_constraint c
      JOIN pg_class child ON child.oid = c.conrelid
      JOIN pg_class parent ON parent.oid = c.confrelid
     WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
"""


@dataclass(frozen=True, slots=True)
class Selection:
    """What a backup copies, and what in `public` it leaves out because the schema lacks it."""

    tables: list[Table]  # referenced tables before referencing ones
    skipped: dict[str, Any]  # {"tables": [name…], "columns": {table: [column…]}}


def schema_columns() -> dict[str, set[str]]:
    """The schema's tables and their columns: `shared.models`, which `alembic check` holds equal
    to the migrations, so what a database they built (a restore's target) has."""
    from shared.models.schema import metadata  # the whole schema: imported by backups only

    return {
        name: {column.name for column in table.columns} for name, table in metadata.tables.items()
    }


def tables_in_load_order(cursor: psycopg.Cursor[Any]) -> Selection:
    """The schema's tables as the database has them, in foreign-key order; the rest skipped."""
    schema = schema_columns()
    found = {name: list(cols) for name, cols in cursor.execute(_TABLES).fetchall()}
    owned = {name: cols for name, cols in found.items() if name in schema}
    columns = {name: [c for c in cols if c in schema[name]] for name, cols in owned.items()}
    extra = {name: sorted(set(cols) - schema[name]) for name, cols in sorted(owned.items())}
    skipped = {
        "tables": sorted(set(found) - set(owned)),
        "columns": {name: cols for name, cols in extra.items() if cols},
    }
    graph: dict[str, set[str]] = {name: set() for name in sorted(columns)}
    for child, parent in cursor.execute(_FOREIGN_KEYS).fetchall():
        if child in graph and parent in graph and child != parent:
            graph[child].add(parent)
    order = graphlib.TopologicalSorter(graph).static_order()
    return Selection([Table(name, columns[name]) for name in order], skipped)


def _revision(cursor: psycopg.Cursor[Any]) -> str | None:
    exists = cursor.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = cursor.execute("SELECT version_num FROM public.alembic_version").fetchone()
    return None if row is None else str(row[0])


# --------------------------------------------------------------------------- backup


def backup_name(moment: datetime) -> str:
    """A folder name that sorts by time: `20261128T020000123Z`."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class BackupResult:
    key: str  # the manifest's key
    manifest: dict[str, Any] = field(default_factory=dict)


def create_backup(
    direct_url: str,
    *,
    s3: S3Client,
    bucket: str,
    prefix: str,
    now: datetime,
    has_time: Callable[[], bool] = lambda: True,
) -> BackupResult:
    """Dump every table in one snapshot to `s3://bucket/prefix<name>/`; manifest last.

    `has_time` is asked between tables and every few MiB; when it says no, the partial upload
    is removed and `OutOfTimeError` raised. Any failure removes what was uploaded.
    """
    base = f"{prefix}{backup_name(now)}/"
    uploaded: list[str] = []
    upload: GzipUpload | None = None

    def check_time() -> None:
        if not has_time():
            raise OutOfTimeError(base)

    try:
        with _connect(direct_url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.cursor() as cursor:
                revision = _revision(cursor)  # the first statement takes the snapshot
                cursor.execute("SET LOCAL statement_timeout = 0")  # the time budget bounds it
                cursor.execute("SET LOCAL lock_timeout = '30s'")  # do not queue behind DDL
                selection = tables_in_load_order(cursor)
                entries = []
                for table in selection.tables:
                    check_time()
                    key = f"{base}{table.name}.tsv.gz"
                    upload = GzipUpload(s3, bucket, key, check_time)
                    # A query, not the table: COPY cannot read a partitioned table directly
                    # (the time-partitioned logs); their partitions come through the parent.
                    copy_sql = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in table.columns),
                        sql.Identifier("public", table.name),
                    )
                    with cursor.copy(copy_sql) as copy:
                        for data in copy:
                            upload.write(data)
                    written = upload.close()
                    uploaded.append(key)
                    upload = None
                    entries.append(
                        {
                            "table": table.name,
                            "file": key.removeprefix(base),
                            "columns": table.columns,
                            "rows": written.rows,
                            "bytes": written.raw_bytes,
                            "gzipBytes": written.gzip_bytes,
                            "sha256": written.sha256,
                        }
                    )
            conn.rollback()  # read only: nothing to commit
            server_version = conn.info.server_version
        manifest = {
            "format": FORMAT,
            "createdAt": iso_ms(now),
            "alembicRevision": revision,
            "serverVersion": server_version,
            "snapshot": "REPEATABLE READ READ ONLY",
            "tables": entries,
            "skipped": selection.skipped,
        }
        s3.put_object(
            Bucket=bucket, Key=base + MANIFEST, ContentType="application/json",
            Body=json.dumps(manifest, indent=2).encode(),
        )  # fmt: skip
    except BaseException:
        if upload is not None:
            _quietly(upload.abort)
        _quietly(lambda: delete_keys(s3, bucket, uploaded))
        raise
    return BackupResult(key=base + MANIFEST, manifest=manifest)


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as error:  # cleanup after a failure must not hide the failure
        log_event("backup_cleanup_failed", level=logging.WARNING, error=type(error).__name__)


def list_backups(s3: S3Client, bucket: str, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """(restorable, interrupted, left alone) folders under `prefix`, oldest first; the last
    are those pruning neither counts nor deletes (not ours, or damaged)."""
    described = describe_backups(s3, bucket, prefix)
    return (
        [_folder(item, prefix) for item in described if item.restorable],
        [_folder(item, prefix) for item in described if item.interrupted],
        [
            _folder(item, prefix)
            for item in described
            if not item.restorable and not item.interrupted
        ],
    )


def _folder(item: BackupInfo, prefix: str) -> str:
    return item.key.removeprefix(prefix).removesuffix("/")


@dataclass(frozen=True, slots=True)
class BackupInfo:
    key: str  # the folder, `<prefix><name>/`: what restore takes
    bytes: int  # every object of the backup, as stored (gzipped)
    created: datetime | None  # from the name; None for a folder not named by backup_name
    complete: bool  # has a manifest
    restorable: bool = False  # named by backup_name, our FORMAT's manifest, every file listed
    missing: tuple[str, ...] = ()  # files our manifest names that the folder lacks
    unlisted: tuple[str, ...] = ()  # table files in the folder our manifest leaves out

    @property
    def interrupted(self) -> bool:
        """A folder named as ours with no manifest: pruning deletes it once a day old."""
        return self.created is not None and not self.complete


def describe_backups(s3: S3Client, bucket: str, prefix: str) -> list[BackupInfo]:
    """Every folder under `prefix` with its size and time, oldest first. Whether a manifest is
    ours is read from it (a GET each): a zero-byte or another project's manifest is none; ours
    is a backup only when every table file it names is listed too (none deleted since), and it
    names every table file the folder holds (a manifest replaced or edited since would restore
    that table empty)."""
    sizes: dict[str, int] = {}
    names: dict[str, set[str]] = {}
    for item in list_objects(s3, bucket, prefix):
        folder, _, name = str(item["Key"]).removeprefix(prefix).partition("/")
        if not name:
            continue
        sizes[folder] = sizes.get(folder, 0) + int(item.get("Size", 0))
        names.setdefault(folder, set()).add(name)
    described = []
    for folder in sorted(sizes):
        key, created = f"{prefix}{folder}/", _backup_time(folder)
        complete = MANIFEST in names[folder]
        files = _manifest_files(s3, bucket, key) if created and complete else None
        missing = tuple(sorted(set(files) - names[folder])) if files is not None else ()
        unlisted = (
            tuple(sorted({n for n in names[folder] if n.endswith(".tsv.gz")} - set(files)))
            if files is not None
            else ()
        )
        restorable = files is not None and not missing and not unlisted
        described.append(
            BackupInfo(key, sizes[folder], created, complete, restorable, missing, unlisted)
        )
    return described


def _manifest_files(s3: S3Client, bucket: str, folder: str) -> list[str] | None:
    """The table files the folder's manifest names; None when the manifest is not ours."""
    try:
        manifest = load_manifest(folder, s3=s3, bucket=bucket)[2]
        return [str(entry["file"]) for entry in manifest["tables"]]
    except (RestoreError, KeyError, TypeError):
        return None


_BACKUP_NAME = re.compile(r"\d{8}T\d{9}Z")


def _backup_time(name: str) -> datetime | None:
    if not _BACKUP_NAME.fullmatch(name):
        return None
    try:
        moment = datetime.strptime(name[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.replace(microsecond=int(name[15:18]) * 1000)


def prune_backups(s3: S3Client, bucket: str, prefix: str, keep: int, now: datetime) -> list[str]:
    """Delete all but the newest `keep` restorable backups, and every interrupted one at least
    INTERRUPTED_AFTER old at `now`. Only what is ours counts and goes: a folder not named by
    `backup_name`, or whose manifest is not ours (zero bytes, another project's), is left alone
    and does not take a kept place."""
    described = describe_backups(s3, bucket, prefix)
    restorable = [item for item in described if item.restorable]
    doomed = restorable[: max(0, len(restorable) - keep)]
    doomed += [
        item
        for item in described
        if item.interrupted and item.created and item.created <= now - INTERRUPTED_AFTER
    ]
    for item in doomed:
        delete_keys(s3, bucket, list_keys(s3, bucket, item.key))
    return [_folder(item, prefix) for item in doomed]


def abort_interrupted_uploads(s3: S3Client, bucket: str, prefix: str, now: datetime) -> int:
    """Abort the incomplete multipart uploads a cut-off backup left in a folder named as ours,
    once the folder is INTERRUPTED_AFTER old (as interrupted folders are pruned): a run stopped
    at its deadline sends nothing more, its own abort included, and S3 keeps and bills the
    parts while no object listing shows them. How many were aborted."""
    doomed = []
    for upload in list_uploads(s3, bucket, prefix):
        folder, _, name = str(upload["Key"]).removeprefix(prefix).partition("/")
        created = _backup_time(folder) if name else None
        if created is not None and created <= now - INTERRUPTED_AFTER:
            doomed.append(upload)
    abort_uploads(s3, bucket, doomed)
    return len(doomed)


# --------------------------------------------------------------------------- restore


def parse_location(location: str, default_bucket: str | None) -> tuple[str, str]:
    """`s3://bucket/key`, or a key in `default_bucket`, → (bucket, the manifest's key)."""
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
    elif default_bucket:
        bucket, key = default_bucket, location
    else:
        raise RestoreError(f"{location!r}: give s3://bucket/… or set BACKUP_BUCKET")
    if not bucket or not key:
        raise RestoreError(f"{location!r} names no backup: s3://bucket/<prefix><name>/")
    if not key.endswith("/" + MANIFEST) and key != MANIFEST:
        key = key.rstrip("/") + "/" + MANIFEST
    return bucket, key


def load_manifest(
    key: str, *, s3: S3Client, bucket: str | None = None
) -> tuple[str, str, dict[str, Any]]:
    """(bucket, the manifest's key, the manifest) of the backup at `key` (`s3://bucket/…`, or
    a key in `bucket`, else in BACKUP_BUCKET); RestoreError when there is no such backup."""
    if bucket is None:
        try:
            bucket = get_settings().backup_bucket
        except ConfigurationError:
            bucket = os.environ.get("BACKUP_BUCKET")
    bucket, manifest_key = parse_location(key, bucket)
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    try:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        raise RestoreError(
            f"s3://{bucket}/{manifest_key} does not exist (an interrupted backup has no "
            "manifest); `python -m functions.cron.backup list` shows the restorable ones"
        ) from None
    except s3.exceptions.NoSuchBucket:
        raise RestoreError(f"the bucket {bucket} does not exist") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "an S3 error")
        raise RestoreError(f"s3://{bucket}/{manifest_key} cannot be read: {code}") from None
    except ValueError:
        raise RestoreError(f"s3://{bucket}/{manifest_key} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RestoreError(f"s3://{bucket}/{manifest_key} is not a {FORMAT} manifest")
    return bucket, manifest_key, manifest


def restore_backup(
    key: str, direct_url: str, *, s3: S3Client | None = None, bucket: str | None = None
) -> dict[str, Any]:
    """Load the backup at `key` (`s3://bucket/…/<name>/` or its manifest) into the empty
    database at `direct_url`, migrated to the backup's Alembic revision. All or nothing."""
    s3 = s3 if s3 is not None else s3_client()
    bucket, manifest_key, manifest = load_manifest(key, s3=s3, bucket=bucket)
    base = manifest_key.removesuffix(MANIFEST)
    rows = 0
    with psycopg.connect(libpq_url(direct_url), prepare_threshold=None) as conn:
        cursor = conn.cursor()
        wanted = manifest.get("alembicRevision")
        found = _revision(cursor)
        if found != wanted:
            raise RestoreError(
                f"the target database is at Alembic revision {found or 'none'}, the backup at "
                f"{wanted}: run `DIRECT_DATABASE_URL=… alembic upgrade {wanted}` on an empty "
                "database first"
            )
        target = {name: set(cols) for name, cols in cursor.execute(_TABLES).fetchall()}
        listed = {entry["table"] for entry in manifest["tables"]}
        # The backup job's own rule for what it copies (tables_in_load_order), on this target
        # at the backup's revision: a table it leaves out would be restored empty.
        for table in tables_in_load_order(cursor).tables:
            if table.name not in listed:
                raise RestoreError(
                    f"the manifest does not list table {table.name}, which a backup at {wanted} "
                    "has: the backup is damaged (loaded, that table would be empty)"
                )
        for entry in manifest["tables"]:
            missing = ", ".join(sorted(set(entry["columns"]) - target.get(entry["table"], set())))
            if missing:
                what = (
                    f"table {entry['table']} is" if entry["table"] not in target
                    else f"columns of {entry['table']} ({missing}) are"
                )  # fmt: skip
                raise RestoreError(
                    f"the backup's {what} not in a database migrated to {wanted}: the "
                    "migrations do not make them, so this backup cannot be restored"
                )
            present = cursor.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                    sql.Identifier("public", entry["table"])
                )
            ).fetchone()
            if present and present[0]:
                raise RestoreError(
                    f"table {entry['table']} is not empty: restore into an empty database"
                )
        cursor.execute("SET LOCAL statement_timeout = 0")
        for entry in manifest["tables"]:
            rows += _load_table(cursor, s3, bucket, base + entry["file"], entry)
        release_leases(cursor)
    log_event("backup_restored", key=f"s3://{bucket}/{manifest_key}", rows=rows)
    return {"restored": f"s3://{bucket}/{manifest_key}", "tables": len(manifest["tables"]),
            "rows": rows}  # fmt: skip


def release_leases(cursor: psycopg.Cursor[Any]) -> None:
    """Give back every cron lease in a restored database: a backup's snapshot holds its own
    live lease (and any other job's running then), and those runs are not this database's, so
    a lease left held would refuse the job until it expired."""
    exists = cursor.execute("SELECT to_regclass('public.cron_leases') IS NOT NULL").fetchone()
    if exists and exists[0]:
        cursor.execute("UPDATE public.cron_leases SET holder = NULL WHERE holder IS NOT NULL")


def _load_table(
    cursor: psycopg.Cursor[Any], s3: S3Client, bucket: str, key: str, entry: dict[str, Any]
) -> int:
    """COPY one table file in; a damaged one is a RestoreError naming the file only: what
    zlib or PostgreSQL says about it quotes the rows (a user's keywords, saved results). So is
    one S3 cannot give (deleted, or its stream cut): the CLIs print one line, not botocore's."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        raise RestoreError(f"{key} is missing: the backup is damaged") from None
    except (ClientError, BotoCoreError) as error:
        raise _unreadable(key, error) from None
    inflate = zlib.decompressobj(31)
    sha = hashlib.sha256()
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier("public", entry["table"]),
        sql.SQL(", ").join(sql.Identifier(c) for c in entry["columns"]),
    )
    damage = None
    s3_error: Exception | None = None
    try:
        # Nothing raised inside the block: psycopg would log, as a warning, the server's own
        # error about the rows sent so far while ending the COPY.
        with cursor.copy(copy_sql) as copy:
            chunks = body.iter_chunks(1024 * 1024)
            while True:
                try:
                    chunk = next(chunks, None)
                except (ClientError, BotoCoreError) as error:
                    s3_error = error
                    break
                if chunk is None:
                    if not inflate.eof:
                        damage = "ends before its gzip stream does (truncated)"
                    break
                try:
                    data = inflate.decompress(chunk)
                except zlib.error:
                    damage = "is not valid gzip"
                    break
                sha.update(data)
                copy.write(data)
    except (psycopg.DataError, psycopg.IntegrityError) as error:
        damage = damage or f"has rows PostgreSQL refuses ({type(error).__name__})"
    if s3_error is not None:
        raise _unreadable(key, s3_error)
    if damage is None and (cursor.rowcount != entry["rows"] or sha.hexdigest() != entry["sha256"]):
        damage = (
            f"holds {cursor.rowcount} rows (checksum {sha.hexdigest()[:12]}), the manifest "
            f"says {entry['rows']} ({entry['sha256'][:12]})"
        )
    if damage is not None:
        raise RestoreError(f"{key} {damage}: the backup is damaged")
    return int(cursor.rowcount)


def _unreadable(key: str, error: Exception) -> RestoreError:
    return RestoreError(
        f"{key} could not be read from S3 ({error_code(error)}): nothing was restored"
    )


# --------------------------------------------------------------------------- the job


def backup(run: Run) -> None:
    settings = run.settings
    if not settings.backup_bucket:
        raise BackupError("BACKUP_BUCKET is not set: name the S3 bucket backups go to")
    if not settings.direct_database_url:
        raise BackupError("DIRECT_DATABASE_URL is not set: backups read over the direct host")
    day = run.now.date().isoformat()
    s3 = s3_client(run.deadline)
    recorded = run.state.get("lastBackup")
    if run.state.get("lastBackupDay") == day and not run.flag("force"):
        if _still_stored(s3, settings.backup_bucket, settings.backup_prefix, recorded):
            run.extra["skipped"] = f"already backed up today ({recorded})"
            return
        log_event("backup_gone", level=logging.WARNING, key=recorded)
    if not run.has_time(calls_out=True):
        return
    try:
        with run.batch():
            result = create_backup(
                settings.direct_database_url,
                s3=s3,
                bucket=settings.backup_bucket,
                prefix=settings.backup_prefix,
                now=run.now,
                has_time=lambda: run.has_time(calls_out=True),
            )
    except OutOfTimeError:
        run.complete = False
        run.extra["stopped"] = "out of time; the partial backup was removed"
        return
    tables = result.manifest["tables"]
    run.processed = sum(entry["rows"] for entry in tables)
    # Recorded before pruning: the day's backup is made, so a prune that fails (or a run killed
    # while pruning) must not make a retry back it up again.
    run.state.update(lastBackupDay=day, lastBackup=result.key)
    run.save_state()
    run.extra.update(
        key=f"s3://{settings.backup_bucket}/{result.key}",
        tables=len(tables),
        bytes=sum(entry["bytes"] for entry in tables),
        gzipBytes=sum(entry["gzipBytes"] for entry in tables),
    )
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        run.extra["deletedBackups"] = prune_backups(
            s3, settings.backup_bucket, settings.backup_prefix, settings.backup_keep, run.now
        )
        run.extra["uploadsAborted"] = abort_interrupted_uploads(
            s3, settings.backup_bucket, settings.backup_prefix, run.now
        )
    except (ClientError, BotoCoreError, KeysNotDeleted) as error:  # the next backup prunes again
        run.complete = False
        run.extra["pruneFailed"] = error_code(error)
        log_event("backup_prune_failed", level=logging.WARNING, error=error_code(error))


def _still_stored(s3: S3Client, bucket: str, prefix: str, manifest: object) -> bool:
    """Whether the day's recorded backup is still where backups go: its manifest under
    BACKUP_PREFIX answers a HEAD (one cheap request). A backup deleted since, or BACKUP_BUCKET
    or BACKUP_PREFIX changed that day, leaves the day without one. Only a 404 says no: any
    other error propagates (S3 that cannot answer could not take a backup either)."""
    from botocore.exceptions import ClientError

    if not isinstance(manifest, str) or not manifest.startswith(prefix):
        return False
    try:
        s3.head_object(Bucket=bucket, Key=manifest)
    except ClientError as error:
        if error_code(error) in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


JOB = Job("backup", backup)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m functions.cron.backup {run,list,restore}`."""
    parser = argparse.ArgumentParser(
        prog="python -m functions.cron.backup", description="Logical backups on S3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="make a backup now (under the cron's lease)")
    commands.add_parser(
        "list", help="list restorable and interrupted backups, and folders pruning leaves alone"
    )
    restore = commands.add_parser("restore", help="load a backup into an empty database")
    restore.add_argument("location", help="s3://bucket/<prefix><name>/ (or its manifest.json)")
    restore.add_argument(
        "--database-url",
        help="direct URL of the empty, migrated target (default: DIRECT_DATABASE_URL, or "
        "DATABASE_URL_UNPOOLED)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            print(json.dumps(run_job(JOB, options={"force": True}), default=str))
        elif args.command == "list":
            settings = get_settings()
            if not settings.backup_bucket:
                raise BackupError("BACKUP_BUCKET is not set")
            found = list_backups(s3_client(), settings.backup_bucket, settings.backup_prefix)
            location = f"s3://{settings.backup_bucket}/{settings.backup_prefix}"
            listing = {
                label: [f"{location}{name}/" for name in names]
                for label, names in zip(
                    ("restorable", "interrupted", "leftAlone"), found, strict=True
                )
            }
            print(json.dumps(listing))
        else:
            target = args.database_url or (read_variable("DIRECT_DATABASE_URL") or ("", ""))[1]
            if not target:
                raise RestoreError("give --database-url or set DIRECT_DATABASE_URL")
            print(json.dumps(restore_backup(args.location, target)))
    except (BackupError, RestoreError, ConfigurationError) as error:
        print(f"error: {redact_url(str(error))}", file=sys.stderr)
        return 1
    return 0
