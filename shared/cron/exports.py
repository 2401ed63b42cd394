"""Data exports (every 5 minutes): build what users asked for, expire the old, sweep the rest.

Each run, while the budget allows:
1. claims the pending export tried least, oldest first (or one whose runner died: running for
   longer than a cron invocation can live), streams the user's document from one snapshot
   through gzip into a temporary file (`shared.exports.write_compressed`: memory stays bounded
   whatever the account's size), uploads it to BACKUP_BUCKET under EXPORT_PREFIX, then marks
   it ready for EXPORT_TTL_DAYS; the build and the upload end by the run's deadline. A failed
   attempt (S3 refusing, a build still writing at the deadline, say) goes back to pending with
   its error and ends the run's builds, so the next run tries again, after the exports tried
   fewer times (one that keeps failing holds up no other); the MAX_ATTEMPTS-th failed
   attempt, or a take after MAX_ATTEMPTS runs that died, marks it failed;
2. deletes expired export rows, then every object under EXPORT_PREFIX that no ready export
   names and that is older than an hour (expired exports, exports of erased users whose
   immediate deletion failed, leftovers of a crashed run), and aborts every incomplete
   multipart upload there older than an hour (a build that failed to complete and to abort
   it, or never learned its id; an erased user's the erasure could not abort). S3 failing
   either step is a WARNING, never a failed run: the next run sweeps again.

An erasure during a build deletes the row (ON DELETE CASCADE); `finish` then finds nothing to
mark and the job deletes the object it just stored.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import datetime, timedelta

from shared import db, exports
from shared.clock import utcnow
from shared.cron.runner import Job, Run
from shared.models.data_exports import DataExport
from shared.repositories import data_exports
from shared.s3 import (
    KeysNotDeleted,
    S3Client,
    abort_uploads,
    delete_keys,
    error_code,
    list_objects,
    list_uploads,
    s3_client,
)
from shared.telemetry import log_event

MAX_ATTEMPTS = 3
STALE_AFTER = timedelta(minutes=20)  # longer than a cron invocation may run (15 min)
SWEEP_GRACE = timedelta(hours=1)  # an object younger than this may belong to a running build


class ExportError(RuntimeError):
    """The exports cron cannot run; the message says what to configure."""


def export_one(run: Run, s3: S3Client) -> bool:
    """Claim and build one export; False when none is waiting or the attempt failed (this run
    stops there: the next one, five minutes later, tries again)."""
    claim = db.run(lambda conn: data_exports.claim(conn, now=utcnow(), stale_after=STALE_AFTER))
    if claim is None:
        return False
    claimed = claim.export
    started_at = claimed.started_at
    assert started_at is not None  # claim sets it
    ttl = timedelta(days=run.settings.export_ttl_days)
    if claimed.attempts > MAX_ATTEMPTS:  # its last runs died, saying nothing
        db.run(
            lambda conn: data_exports.fail(
                conn, claimed.id, started_at=started_at, error="attempts", now=utcnow(), ttl=ttl
            )
        )
        run.extra["failed"] = run.extra.get("failed", 0) + 1
        return True
    try:
        build(run, s3, claim, started_at, ttl)
    except db.DatabaseUnavailableError:
        raise  # the claim stays running, taken again once stale
    except Exception as error:  # S3 refusing, a fault in one document: the others go on later
        attempt_failed(run, claimed, started_at, error, ttl)
        return False
    return True


def build(
    run: Run, s3: S3Client, claim: data_exports.Claimed, started_at: datetime, ttl: timedelta
) -> None:
    """Stream the claimed export's document through gzip to storage and mark it ready; read
    where everything written before the request is (the claim's position: a replica that has
    replayed it, else the primary)."""
    claimed = claim.export
    bucket = str(run.settings.backup_bucket)
    key = exports.object_key(run.settings, claimed.user_id, claimed.id)
    with tempfile.TemporaryFile() as compressed:
        raw_bytes = exports.write_compressed(
            claimed.user_id, compressed, deadline=run.deadline, at_least=claim.position
        )
        gzip_bytes = compressed.tell()
        exports.store(s3, bucket, key, compressed)
    finished = db.run(
        lambda conn: data_exports.finish(
            conn, claimed.id, started_at=started_at, object_key=key, raw_bytes=raw_bytes,
            gzip_bytes=gzip_bytes, now=utcnow(), ttl=ttl,
        )
    )  # fmt: skip
    if not finished:  # erased (or taken for dead) meanwhile: keep nothing of it
        delete_keys(s3, bucket, [key])
        run.extra["discarded"] = run.extra.get("discarded", 0) + 1
    run.processed += 1
    run.extra["bytes"] = run.extra.get("bytes", 0) + raw_bytes
    run.extra["gzipBytes"] = run.extra.get("gzipBytes", 0) + gzip_bytes


def attempt_failed(
    run: Run, claimed: DataExport, started_at: datetime, error: Exception, ttl: timedelta
) -> None:
    """Record the failed attempt on the export (S3's error code, else the exception's class)
    and log it by export id, never by user: back to pending for the next run, or failed once
    it was the MAX_ATTEMPTS-th."""
    code = error_code(error)
    log_event(
        "data_export_failed", level=logging.ERROR, exportId=claimed.id,
        attempt=claimed.attempts, error=code,
    )  # fmt: skip
    run.extra["errors"] = run.extra.get("errors", 0) + 1
    if claimed.attempts < MAX_ATTEMPTS:
        db.run(
            lambda conn: data_exports.retry(
                conn, claimed.id, started_at=started_at, error=code, now=utcnow()
            )
        )
        return
    db.run(
        lambda conn: data_exports.fail(
            conn, claimed.id, started_at=started_at, error=code, now=utcnow(), ttl=ttl
        )
    )
    run.extra["failed"] = run.extra.get("failed", 0) + 1


def sweep(run: Run, s3: S3Client) -> None:
    """Delete expired exports and every unnamed object older than SWEEP_GRACE, and abort every
    incomplete multipart upload older than that (no row ever names one: a build that lost it,
    or an erased user's that the erasure could not abort)."""
    run.extra["expired"] = db.run(lambda conn: data_exports.expire(conn, now=run.now))
    cutoff = run.now - SWEEP_GRACE
    sweep_objects(run, s3, cutoff)
    sweep_uploads(run, s3, cutoff)


def sweep_objects(run: Run, s3: S3Client, cutoff: datetime) -> None:
    """Delete the objects no ready export names, stored before `cutoff`; `swept` counts those
    S3 deleted. S3 failing (a credential without s3:ListBucket or s3:DeleteObject, S3 down,
    the bucket gone; keys refused in DeleteObjects' 200 answer) is one WARNING with S3's code,
    never a failed cron: the builds are done, and the next run sweeps again."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    prefix = run.settings.export_prefix
    bucket = str(run.settings.backup_bucket)
    live = db.run(data_exports.live_keys)
    try:
        doomed = [
            item["Key"]
            for item in list_objects(s3, bucket, prefix)
            if item["Key"] not in live and item["LastModified"] < cutoff
        ]
        delete_keys(s3, bucket, doomed)
    except KeysNotDeleted as error:
        log_event(
            "export_objects_sweep_failed", level=logging.WARNING, error=error.code,
            objectsLeft=error.refused,
        )  # fmt: skip
        run.extra["swept"] = error.deleted
        return
    except (ClientError, BotoCoreError) as error:
        log_event("export_objects_sweep_failed", level=logging.WARNING, error=error_code(error))
        return
    run.extra["swept"] = len(doomed)


def sweep_uploads(run: Run, s3: S3Client, cutoff: datetime) -> None:
    """Abort the incomplete uploads begun before `cutoff`. S3 failing (a credential whose
    policy lacks s3:ListBucketMultipartUploads or s3:AbortMultipartUpload, S3 down) is one
    WARNING and no `uploadsAborted`, never a failed cron every 5 minutes: the rest of the run
    is done."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = run.settings.export_prefix
    bucket = str(run.settings.backup_bucket)
    try:
        stale = [u for u in list_uploads(s3, bucket, prefix) if u["Initiated"] < cutoff]
        abort_uploads(s3, bucket, stale)
    except (ClientError, BotoCoreError) as error:
        log_event("export_uploads_sweep_failed", level=logging.WARNING, error=error_code(error))
        return
    run.extra["uploadsAborted"] = len(stale)


def export_data(run: Run) -> None:
    if not run.settings.backup_bucket:
        raise ExportError("BACKUP_BUCKET is not set: name the S3 bucket exports are stored in")
    s3 = s3_client(run.deadline)
    while run.has_time(calls_out=True):
        try:
            with run.batch():
                if not export_one(run, s3):
                    break
        except db.DatabaseUnavailableError:
            raise
        except Exception as error:  # before any claim (a failed build is `attempt_failed`)
            log_event("data_export_failed", level=logging.ERROR, error=error_code(error))
            run.extra["errors"] = run.extra.get("errors", 0) + 1
            break
    if run.has_time(calls_out=True):
        with run.batch():
            sweep(run, s3)


JOB = Job("exports", export_data)
