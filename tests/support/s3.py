"""moto's S3 for the tests that back up, export or erase with a bucket configured."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.cron import configure

BUCKET = "keyflash-backups-test"
PREFIX = "kf/"


@contextmanager
def mock_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto S3 with the backup bucket; the app configured to back up (and export) into it."""
    from moto import mock_aws

    configure(
        monkeypatch,
        BACKUP_BUCKET=BUCKET,
        BACKUP_PREFIX=PREFIX,
        BACKUP_KEEP=2,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=None,
    )
    with mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
