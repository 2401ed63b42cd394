"""The S3 client backups and data exports share (S3, R2 or MinIO: any S3 API endpoint).

boto3 is imported on first use, so a function that may never touch storage does not pay for it
at cold start.
"""

from __future__ import annotations

from typing import Any

S3Client = Any  # botocore's client is generated at run time; there are no static types


def s3_client() -> S3Client:
    """A boto3 S3 client (credentials, region and AWS_ENDPOINT_URL_S3 from the environment)."""
    import boto3  # type: ignore[import-untyped]  # lazily: only when storage is used

    return boto3.client("s3")
