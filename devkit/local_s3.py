"""The local stack's S3: moto's server mode on loopback, so the backup and exports crons run.

Deployed, both crons write to `BACKUP_BUCKET` on S3 (any S3 API endpoint). Locally nobody has a
bucket, so without this every exports run and the 02:00 backup failed. `keyflash dev` starts
moto's S3 server on a thread of its own process (it stops with the stack, and a `kill -9` takes
it along: nothing to clean up), on 127.0.0.1 and a port the kernel picks, creates the bucket,
and hands the functions `BACKUP_BUCKET`, `AWS_ENDPOINT_URL_S3` (which boto3 honours for S3 only)
and dummy credentials and region. Those go into the stack lock too, so `cron run`, `invoke`,
`env` and `db backups` on the same state dir use the same S3.

Its objects live in memory, like the Upstash emulator's keys: a restart of `keyflash dev`
starts with an empty bucket. A developer who sets `BACKUP_BUCKET` (their own S3, R2, MinIO)
keeps it, with their own credentials; no local S3 is started then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from devkit.console import CliError

LOCAL_BUCKET = "keyflash-backups-local"
LOCAL_REGION = "us-east-1"
# moto accepts any credentials; these only have to be present and obviously not real.
LOCAL_ACCESS_KEY = "keyflash-local"
LOCAL_SECRET_KEY = "keyflash-local-secret"  # a dummy: the local S3 ignores it
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    bucket: str = LOCAL_BUCKET

    def env(self) -> dict[str, str]:
        """What the functions need to back up and export into this S3."""
        return {
            "BACKUP_BUCKET": self.bucket,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_REGION": LOCAL_REGION,
            "AWS_DEFAULT_REGION": LOCAL_REGION,
        }


class LocalS3Server:
    """moto's S3 server on a thread; `start()` returns once the bucket exists."""

    def __init__(self, bucket: str = LOCAL_BUCKET) -> None:
        self.bucket = bucket
        self._server: Any = None

    def start(self) -> LocalS3:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as error:  # moto[server] is in the dev extra; say so if it is not
            raise CliError(
                f"the local S3 needs moto's server mode ({error.name} is missing): "
                "pip install 'moto[server]', or set BACKUP_BUCKET to use your own S3"
            ) from None
        # werkzeug's access log would interleave with the stack's own request lines
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        try:
            server.start()
        except OSError as error:
            raise CliError(f"the local S3 did not start: {error}") from None
        self._server = server
        host, port = server.get_host_and_port()
        s3 = LocalS3(endpoint=f"http://{host}:{port}", bucket=self.bucket)
        client = s3_client_for(s3)
        client.create_bucket(Bucket=self.bucket)
        return s3

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def s3_client_for(s3: LocalS3) -> Any:
    """A boto3 client on the local S3, whatever AWS settings this process has."""
    import boto3  # type: ignore[import-untyped]

    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=LOCAL_REGION,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
    )
