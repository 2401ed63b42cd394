"""The personal-data export document, and exports stored in object storage.

One document, written one way: the user's rows streamed from one REPEATABLE READ snapshot
(`personal_data.export`, server-side cursors) and serialised row by row exactly as the API
answers JSON (`account.write_export`). Small documents are answered directly (`build`, into
memory; functions/me_export.py); any document can be exported asynchronously: the exports cron
streams it through gzip into a temporary file (`write_compressed`: memory stays one chunk of
rows whatever the account's size) and uploads that file (`store`, multipart when large) to

    s3://BACKUP_BUCKET/EXPORT_PREFIX<userId>/<exportId>.json.gz

(the backups' bucket and boto3 client, beside their prefix), and the owner downloads it through
a short-lived presigned URL. The user's id leads the key so an erasure deletes every stored
export of theirs with one listing (`delete_stored`), whatever state the rows were in.
"""

from __future__ import annotations

import gzip
import io
import logging
from typing import BinaryIO
from urllib.parse import quote

from shared import db
from shared.config import Settings
from shared.contracts import account
from shared.db import Conn
from shared.repositories import personal_data
from shared.s3 import S3Client, delete_keys, s3_client
from shared.telemetry import log_event

FILENAME = "keyflash-export.json"
GZIP_LEVEL = 6  # ~40x on an export, at a fraction of level 9's time


def build(user_id: str) -> bytes:
    """The export document of `user_id` as UTF-8 JSON, serialised as the API serialises JSON
    (compact separators, non-ASCII kept), in memory: for documents small enough to answer."""

    def work(conn: Conn) -> bytes:
        out = io.BytesIO()
        account.write_export(personal_data.export(conn, user_id), out.write)
        return out.getvalue()

    return db.read(work, snapshot=True)


def write_compressed(user_id: str, file: BinaryIO) -> int:
    """Write the export document of `user_id`, gzip-compressed, into `file` (from its start);
    the document's uncompressed size. `build`'s bytes, streamed: rows are read in chunks and
    written as they come, so memory does not grow with the document."""

    def work(conn: Conn) -> int:
        file.seek(0)  # a retried transaction starts the file again
        file.truncate()
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=file, mtime=0
        ) as compressed:
            account.write_export(personal_data.export(conn, user_id), compressed.write)
            return compressed.tell()

    return db.read(work, snapshot=True)


def compress(document: bytes) -> bytes:
    return gzip.compress(document, compresslevel=GZIP_LEVEL, mtime=0)


def user_prefix(settings: Settings, user_id: str) -> str:
    """The user's folder; the id percent-encoded (Clerk's `user_…` ids are unchanged), so no id
    holding `/` lands inside another user's folder, which that user's erasure empties."""
    return f"{settings.export_prefix}{quote(user_id, safe='')}/"


def object_key(settings: Settings, user_id: str, export_id: str) -> str:
    return f"{user_prefix(settings, user_id)}{export_id}.json.gz"


def store(s3: S3Client, bucket: str, key: str, compressed: BinaryIO) -> None:
    """Upload the gzip file from its start; boto3 switches to a multipart upload above 8 MB,
    reading the file a part at a time."""
    compressed.seek(0)
    s3.upload_fileobj(
        compressed,
        bucket,
        key,
        ExtraArgs={
            "ContentType": "application/gzip",
            "ContentDisposition": f'attachment; filename="{FILENAME}.gz"',
        },
    )


def download_url(settings: Settings, key: str) -> str:
    """A presigned GET of the stored export, valid EXPORT_URL_TTL_S."""
    return str(
        s3_client().generate_presigned_url(
            "get_object",
            Params={"Bucket": settings.backup_bucket, "Key": key},
            ExpiresIn=settings.export_url_ttl_s,
        )
    )


def delete_stored(settings: Settings, user_id: str) -> int:
    """Erasure's step: delete every stored export of the user (their rows went with the user).
    Best effort: when storage fails, the exports cron removes the objects on its next sweep,
    since no ready row names them any more. The number of objects deleted."""
    if not settings.backup_bucket:
        return 0
    try:
        s3 = s3_client()
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=settings.backup_bucket, Prefix=user_prefix(settings, user_id)
            )
            for item in page.get("Contents", [])
        ]
        delete_keys(s3, settings.backup_bucket, keys)
    except Exception as error:  # storage down: the cron's sweep finishes the job
        log_event("export_erasure_deferred", level=logging.WARNING, error=type(error).__name__)
        return 0
    return len(keys)
