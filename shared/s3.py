"""S3 transport (S3, R2 or MinIO: any S3 API endpoint): the client and key deletion, which
backups and data exports share; listing and aborting incomplete multipart uploads (the exports'
erasure and sweep); and the gzip stream into one object and key listing that backups use (an
export is gzipped to a temporary file and uploaded whole).

boto3 is imported on first use, so a function that may never touch storage does not pay for it
at cold start.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

S3Client = Any  # botocore's client is generated at run time; there are no static types
PART_SIZE = 8 * 1024 * 1024  # S3 multipart parts: at least 5 MiB except the last
COMPRESS_EVERY = 256 * 1024  # raw bytes gathered before each zlib call
CHECK_TIME_EVERY = 4 * 1024 * 1024  # raw bytes between two looks at the caller's budget


def s3_client(deadline: float | None = None) -> S3Client:
    """A boto3 S3 client (credentials, region and AWS_ENDPOINT_URL_S3 from the environment)
    that signs everything, presigned URLs included, with SigV4: left to itself botocore
    presigns with SigV2 in us-east-1, which S3 refuses for buckets made since June 2020 and for
    SSE-KMS objects, and R2 everywhere. With `deadline` (`time.monotonic()`: a cron run's or a
    request's), every call ends by then (`shared.s3_bounded`), else `S3DeadlineError`, a
    `BotoCoreError`; None (the CLIs, presigning, which sends nothing): botocore's own timeouts."""
    import boto3  # type: ignore[import-untyped]  # lazily: only when storage is used
    from botocore.config import Config  # type: ignore[import-untyped]

    if deadline is None:
        return boto3.client("s3", config=Config(signature_version="s3v4"))
    from shared import s3_bounded

    return s3_bounded.bound(boto3.client("s3", config=s3_bounded.config(deadline)), deadline)


class KeysNotDeleted(Exception):
    """DeleteObjects answered 200 yet refused some keys: S3 and R2 list each under `<Error>`
    (`AccessDenied` without s3:DeleteObject, a locked object), and those objects stay. Says
    S3's first code and the counts, never a key (a key may hold a user's id)."""

    def __init__(self, code: str, deleted: int, refused: int) -> None:
        super().__init__(f"{code}: {refused} keys not deleted")
        self.code, self.deleted, self.refused = code, deleted, refused


def error_code(error: BaseException) -> str:
    """What to record of a failed storage call: S3's error code (`AccessDenied`, `SlowDown`)
    when S3 answered one, else the exception's class; never the message, which may quote a key
    (and so a user's id)."""
    if isinstance(error, KeysNotDeleted):
        return error.code
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code)[:64] if code else type(error).__name__


def delete_keys(s3: S3Client, bucket: str, keys: Sequence[str]) -> None:
    """Delete `keys`, 1,000 per request (DeleteObjects' limit). Keys S3 refused in its 200
    answer raise `KeysNotDeleted` once every request was sent."""
    errors: list[dict[str, Any]] = []
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        answer = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
        )
        errors += answer.get("Errors", [])
    if errors:
        code = str(errors[0].get("Code") or "DeleteObjectsError")[:64]
        raise KeysNotDeleted(code, deleted=len(keys) - len(errors), refused=len(errors))


def list_uploads(s3: S3Client, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every incomplete multipart upload under `prefix` (ListMultipartUploads' entries: Key,
    UploadId, Initiated). No object listing shows them, yet their parts are stored and billed
    until they are completed or aborted."""
    uploads: list[dict[str, Any]] = []
    pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        uploads += page.get("Uploads", [])
    return uploads


def abort_uploads(s3: S3Client, bucket: str, uploads: Sequence[dict[str, Any]]) -> None:
    """Abort `uploads` (as `list_uploads` gives them), freeing their parts; one already gone
    (its writer aborted or completed it meanwhile) is no error."""
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    for upload in uploads:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except ClientError as error:
            if error_code(error) != "NoSuchUpload":
                raise


def list_objects(s3: S3Client, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under `prefix` (ListObjectsV2's entries: Key, Size, LastModified…)."""
    objects: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += page.get("Contents", [])
    return objects


def list_keys(s3: S3Client, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, across ListObjectsV2's pages."""
    return [str(item["Key"]) for item in list_objects(s3, bucket, prefix)]


@dataclass
class Written:
    """What a `GzipUpload` wrote: lines, bytes before and after gzip, SHA-256 of the raw data."""

    rows: int = 0
    raw_bytes: int = 0
    gzip_bytes: int = 0
    sha256: str = ""


class GzipUpload:
    """A gzip stream into one S3 object: a single PUT when small, else a multipart upload of
    PART_SIZE parts, so what is written is never whole in memory. `check_time` is called every
    CHECK_TIME_EVERY raw bytes: it raises to stop a writer that is out of time."""

    def __init__(self, s3: S3Client, bucket: str, key: str, check_time: Callable[[], None]) -> None:
        self._s3, self._bucket, self._key = s3, bucket, key
        self._check_time = check_time
        self._zlib = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container
        self._sha = hashlib.sha256()
        self._raw = bytearray()
        self._out = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._since_check = 0
        self.written = Written()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        chunk = bytes(data)
        self.written.rows += chunk.count(b"\n")  # COPY text escapes newlines inside values
        self.written.raw_bytes += len(chunk)
        self._sha.update(chunk)
        self._raw += chunk
        if len(self._raw) >= COMPRESS_EVERY:
            self._compress()
        self._since_check += len(chunk)
        if self._since_check >= CHECK_TIME_EVERY:
            self._since_check = 0
            self._check_time()

    def _compress(self) -> None:
        self._out += self._zlib.compress(bytes(self._raw))
        self._raw.clear()
        while len(self._out) >= PART_SIZE:
            self._send_part(bytes(self._out[:PART_SIZE]))
            del self._out[:PART_SIZE]

    def _send_part(self, body: bytes) -> None:
        if self._upload_id is None:
            started = self._s3.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType="application/gzip"
            )
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        answer = self._s3.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self.written.gzip_bytes += len(body)

    def close(self) -> Written:
        self._compress()
        self._out += self._zlib.flush()
        if self._upload_id is None:
            self._s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=bytes(self._out),
                ContentType="application/gzip",
            )  # fmt: skip
            self.written.gzip_bytes += len(self._out)
        else:
            if self._out:
                self._send_part(bytes(self._out))
            self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._out.clear()
        self.written.sha256 = self._sha.hexdigest()
        return self.written

    def abort(self) -> None:
        if self._upload_id is not None:
            self._s3.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
            self._upload_id = None
