"""The personal-data export document, and exports stored in object storage.

One document, written one way: the user's rows streamed from one REPEATABLE READ snapshot
(`personal_data.export`, server-side cursors) and serialised row by row exactly as the API
answers JSON (`account.write_export`). Small documents are answered directly (`build`, into
memory; functions/me_export.py); any document can be exported asynchronously: the exports cron
streams it through gzip into a temporary file (`write_compressed`: memory stays one chunk of
rows whatever the account's size) and uploads that file (`store`, multipart when large) to

    s3://BACKUP_BUCKET/EXPORT_PREFIX<userId>/<exportId>.json.gz

(the backups' bucket and boto3 client, beside their prefix), and the owner downloads it through
a short-lived presigned URL. The user's id leads the key so an erasure finds every stored export
of theirs, and every upload of one left incomplete, by listing their prefix (`delete_stored`),
whatever state the rows were in.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO
from urllib.parse import quote

from sqlalchemy.exc import DBAPIError

from shared import db
from shared.clock import utcnow
from shared.config import Settings
from shared.contracts import account
from shared.db import Conn
from shared.repositories import personal_data
from shared.s3 import (
    KeysNotDeleted,
    S3Client,
    abort_uploads,
    delete_keys,
    error_code,
    list_keys,
    list_uploads,
    s3_client,
)
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


class BuildDeadlineError(TimeoutError):
    """The document was not written by the caller's deadline (`write_compressed`)."""


def write_compressed(
    user_id: str, file: BinaryIO, *, deadline: float, at_least: int | None = None
) -> int:
    """Write the export document of `user_id`, gzip-compressed, into `file` (from its start);
    the document's uncompressed size. `build`'s bytes, streamed: rows are read in chunks and
    written as they come, so memory does not grow with the document. `at_least`: a position the
    data must be read at or past (`db.read`): the cron has no token of the user's.

    `deadline` (`time.monotonic()`): checked before each piece is written, and every round trip
    of the build gives up by it (`db.round_trips_by`; the server's statement timeout is the time
    left too, so it stops the statement as well), `BuildDeadlineError` once past: a fetch that
    scans a whole ledger table ends by then too (psycopg's least wait, 2 s, at most later), and
    the caller still has its time to record the attempt and give its lease back."""

    def work(conn: Conn) -> int:
        file.seek(0)  # a retried transaction starts the file again
        file.truncate()
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=file, mtime=0
        ) as compressed:

            def write(piece: bytes) -> None:
                if time.monotonic() >= deadline:
                    raise BuildDeadlineError("the export was not written by the deadline")
                compressed.write(piece)

            if deadline != math.inf:
                left_ms = max(math.ceil((deadline - time.monotonic()) * 1000), 1)
                # SET, not a query: the export's SET TRANSACTION must come before any query.
                conn.connection.exec_driver_sql(f"SET LOCAL statement_timeout = {left_ms}")
            account.write_export(personal_data.export(conn, user_id), write)
            return compressed.tell()

    try:
        with db.round_trips_by(deadline):
            return db.read(work, snapshot=True, at_least=at_least)
    except (db.DatabaseUnavailableError, DBAPIError) as error:
        if time.monotonic() < deadline:
            raise
        raise BuildDeadlineError("the export was not read by the deadline") from error


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


@dataclass(frozen=True, slots=True)
class Link:
    """A presigned download URL and the moment S3 starts refusing it."""

    url: str
    expires_at: datetime


def download_url(settings: Settings, key: str) -> Link:
    """A presigned GET of the stored export, valid EXPORT_URL_TTL_S. S3 counts that from the
    signature's X-Amz-Date, the signing time cut to the second, so the end is counted from the
    clock read just before signing, cut the same way: never later than the real end, at most a
    second (and the signing's few milliseconds) earlier."""
    signed_from = utcnow().replace(microsecond=0)
    url = s3_client().generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.backup_bucket, "Key": key},
        ExpiresIn=settings.export_url_ttl_s,
    )
    return Link(str(url), signed_from + timedelta(seconds=settings.export_url_ttl_s))


@dataclass(frozen=True, slots=True)
class Removed:
    """What an erasure removed from storage: objects, and incomplete multipart uploads."""

    objects: int = 0
    uploads: int = 0


def delete_stored(settings: Settings, user_id: str, deadline: float | None) -> Removed:
    """Erasure's step: delete every stored export of the user (their rows went with the user)
    and abort every incomplete multipart upload under their prefix (a build whose completion
    and abort both failed leaves the whole document there as parts, which no object listing
    shows). Best effort: when storage fails (keys S3 refused in DeleteObjects' 200 answer
    included), or an upload is still there after its abort (AWS: a part still arriving may
    survive one), `export_erasure_deferred` says so and the exports cron's sweep removes what
    is left, since no ready row names it any more. Its calls end by `deadline`
    (`shared.s3.s3_client`): an S3 that does not answer defers it the same way."""
    if not settings.backup_bucket:
        return Removed()
    bucket, prefix = settings.backup_bucket, user_prefix(settings, user_id)
    deleted = 0
    try:
        s3 = s3_client(deadline)
        keys = list_keys(s3, bucket, prefix)
        delete_keys(s3, bucket, keys)
        deleted = len(keys)
        uploads = list_uploads(s3, bucket, prefix)
        abort_uploads(s3, bucket, uploads)
        left = len(list_uploads(s3, bucket, prefix)) if uploads else 0
    except Exception as error:  # storage down: the cron's sweep finishes the job
        log_event("export_erasure_deferred", level=logging.WARNING, error=error_code(error))
        if isinstance(error, KeysNotDeleted):
            deleted = error.deleted
        return Removed(objects=deleted)  # what was deleted before it failed still counts
    if left:
        log_event("export_erasure_deferred", level=logging.WARNING, uploadsLeft=left)
    return Removed(objects=deleted, uploads=len(uploads))
