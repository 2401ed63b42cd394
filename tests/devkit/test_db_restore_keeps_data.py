"""`keyflash db restore-from-s3` and `keyflash db restore FILE` replace the local database only
once the new one is complete: a backup that turns out damaged, or made at a revision this code
does not know, leaves the database as it was. Real PostgreSQL (the suite's server), moto's S3,
the commands run in-process on a database given by DATABASE_URL."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devkit import cli, dbtools
from devkit.migrate import upgrade_head
from devkit.stack import Database
from shared.cron import backup
from tests.support.cron import configure
from tests.support.s3 import BUCKET, PREFIX, mock_s3

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
HELD_LEASE = """INSERT INTO cron_leases (job, holder, "acquiredAt", "expiresAt", "updatedAt")
                VALUES ('backup', 'a-run-of-the-old-database', now(), now() + interval '1 hour',
                        now())"""


@pytest.fixture
def migrated(scratch_database: Callable[[], str]) -> Callable[[str], str]:
    """Factory: a database at head holding one user, `user_id`; its URL."""

    def make(user_id: str) -> str:
        url = scratch_database()
        upgrade_head(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
                (user_id, f"{user_id}@example.com"),
            )
            conn.execute(HELD_LEASE)
        return url

    return make


@pytest.fixture
def local(migrated: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The developer's database, with data of its own: what the commands replace."""
    url = migrated("local_only")
    configure(monkeypatch, DATABASE_URL=url, DIRECT_DATABASE_URL=url)
    return url


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with mock_s3(monkeypatch) as client:
        yield client


def keyflash(tmp_path: Path, *args: str) -> int:
    return cli.main(["--state-dir", str(tmp_path), "db", *args, "--yes"])


def users(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM users ORDER BY id")]


def lease_holders(url: str) -> list[str | None]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT holder FROM cron_leases ORDER BY job")]


def leftovers(url: str) -> list[str]:
    """Databases a restore staged and did not clean up."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE '%\\_restoring'")
        return [row[0] for row in rows]


def copy_backup(s3: Any, folder: str, to: str, **manifest: Any) -> str:
    """A copy of the backup in `folder` at `to`, its manifest's fields replaced by `manifest`."""
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=folder)["Contents"]:
        name = item["Key"].removeprefix(folder)
        s3.copy_object(
            Bucket=BUCKET, Key=to + name, CopySource={"Bucket": BUCKET, "Key": item["Key"]}
        )
    original = json.loads(s3.get_object(Bucket=BUCKET, Key=folder + "manifest.json")["Body"].read())
    s3.put_object(
        Bucket=BUCKET, Key=to + "manifest.json", Body=json.dumps(original | manifest).encode()
    )
    return to


def test_restore_from_s3_keeps_the_database_when_the_backup_is_bad(
    s3: Any, migrated: Callable[[str], str], local: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    made = backup.create_backup(
        migrated("from_backup"), s3=s3, bucket=BUCKET, prefix=PREFIX, now=NOW
    )
    good = made.key.removesuffix("manifest.json")

    damaged = copy_backup(s3, good, "damaged/")
    users_file = s3.get_object(Bucket=BUCKET, Key=damaged + "users.tsv.gz")["Body"].read()
    altered = gzip.decompress(users_file).replace(b"from_backup@", b"FROM_BACKUP@")
    s3.put_object(Bucket=BUCKET, Key=damaged + "users.tsv.gz", Body=gzip.compress(altered))
    newer = copy_backup(s3, good, "newer/", alembicRevision="ffff9999")

    assert keyflash(tmp_path, "restore-from-s3", damaged) == 1
    assert "the backup is damaged" in capsys.readouterr().err
    assert users(local) == ["local_only"] and leftovers(local) == []
    assert keyflash(tmp_path, "restore-from-s3", newer) == 1
    assert "'ffff9999', which this code's migrations do not have" in capsys.readouterr().err
    assert users(local) == ["local_only"] and leftovers(local) == []

    assert keyflash(tmp_path, "restore-from-s3", good) == 0, capsys.readouterr().err
    assert users(local) == ["from_backup"] and leftovers(local) == []
    assert lease_holders(local) == [None]  # the run that held it is not this database's
    assert dbtools.revisions(local)[0] == dbtools.revisions(local)[1]  # at head


def test_db_restore_keeps_the_database_when_the_archive_is_damaged(
    migrated: Callable[[str], str], local: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    source = migrated("from_archive")
    with psycopg.connect(source, autocommit=True) as conn:  # data that barely compresses
        conn.execute(
            'INSERT INTO users (id, email, "updatedAt") SELECT %s || g, '
            "md5(g::text) || md5((g * 7)::text) || '@example.com', now() "
            "FROM generate_series(1, 20000) g",
            ("bulk_",),
        )
    archive = tmp_path / "backup.dump"
    dbtools.backup(Database(source, source, "test", "test"), archive)
    whole = archive.read_bytes()
    damaged = tmp_path / "damaged.dump"  # its table of contents whole, its data zeroed mid-way
    damaged.write_bytes(whole[: len(whole) // 2] + bytes(len(whole) - len(whole) // 2))

    assert keyflash(tmp_path, "restore", str(damaged)) == 1
    assert "pg_restore failed: pg_restore: error: could not uncompress data" in (
        capsys.readouterr().err
    )
    assert users(local) == ["local_only"] and leftovers(local) == []

    assert keyflash(tmp_path, "restore", str(archive)) == 0, capsys.readouterr().err
    assert users(local) == users(source) and leftovers(local) == []
    assert lease_holders(local) == [None]


def test_restore_from_s3_refuses_a_manifest_that_leaves_out_a_table(
    s3: Any, migrated: Callable[[str], str], local: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A manifest edited to drop a table its revision has (the table's file still there) would
    restore that table empty: refused, the database unchanged; `db backups` marks it."""
    made = backup.create_backup(
        migrated("from_backup"), s3=s3, bucket=BUCKET, prefix=PREFIX, now=NOW
    )
    good = made.key.removesuffix("manifest.json")
    tables = [entry for entry in made.manifest["tables"] if entry["table"] != "saved_searches"]
    assert len(tables) == len(made.manifest["tables"]) - 1
    partial = copy_backup(s3, good, f"{PREFIX}20261129T020000000Z/", tables=tables)

    assert keyflash(tmp_path, "restore-from-s3", partial) == 1
    failure = capsys.readouterr().err.splitlines()[-1]  # after the line naming the database
    assert failure.startswith("keyflash: the manifest does not list table saved_searches")
    assert users(local) == ["local_only"] and leftovers(local) == []

    assert cli.main(["--state-dir", str(tmp_path), "db", "backups"]) == 0
    listing = capsys.readouterr().out
    assert f"{partial}  " in listing
    assert "damaged: the manifest leaves out saved_searches.tsv.gz" in listing


@pytest.mark.parametrize("key", ["", "  "])
def test_restore_from_s3_with_an_empty_key_is_a_usage_error(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keyflash(tmp_path, "restore-from-s3", key) == 2
    assert "KEY is empty" in capsys.readouterr().err
