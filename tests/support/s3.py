"""moto's S3 for the tests that back up, export or erase with a bucket configured."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, unescape

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


def answer(client: Any, operation: str, code: str | None, status: int = 500) -> None:
    """From now on `client`'s `operation` (botocore's name: `AbortMultipartUpload`) does not
    reach S3 and gets S3's error `code` with `status` instead, raised as the real `ClientError`;
    with `code` None, an empty success that did nothing (an abort S3 accepted while a part
    was still arriving, which AWS says may leave the upload)."""
    from botocore.awsrequest import AWSResponse

    def reply(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        if code is None:
            return AWSResponse("", 204, {}, None), {}
        return AWSResponse("", status, {}, None), {"Error": {"Code": code, "Message": code}}

    client.meta.events.register(f"before-call.s3.{operation}", reply)


def unreachable(client: Any, operation: str) -> None:
    """From now on `client`'s `operation` raises what botocore raises when S3 cannot be
    reached (after its retries, which this skips)."""
    from botocore.exceptions import EndpointConnectionError

    def refuse(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")

    client.meta.events.register(f"before-call.s3.{operation}", refuse)


class _Body:
    """What botocore reads an HTTP answer's body from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def refuse_deletes(client: Any, refused: Callable[[str], bool], code: str = "AccessDenied") -> None:
    """From now on `client`'s DeleteObjects gets what S3 and R2 answer when they refuse some of
    the keys (no s3:DeleteObject on them, an object locked): 200, a `<DeleteResult>` with an
    `<Error>` per refused key, as XML botocore parses. moto deletes the other keys."""
    from botocore.awsrequest import AWSResponse

    def send(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        if event_name != "before-send.s3.DeleteObjects":
            return None
        errors, kept = "", ""
        for entry in re.findall(r"<Object>.*?</Object>", request.body.decode()):
            key = unescape(re.findall(r"<Key>(.*?)</Key>", entry)[0])
            if refused(key):
                errors += f"<Error><Key>{escape(key)}</Key><Code>{code}</Code>"
                errors += "<Message>Access Denied</Message></Error>"
            else:
                kept += entry
        # botocore hands every `before-send` handler the request (moto's too, after this one)
        # and takes the first answer: moto deletes what this leaves in the request, plus a key
        # nothing holds (moto fails on an empty list).
        nothing = f"<Object><Key>{PREFIX}nothing</Key></Object>"
        request.body = f"<Delete>{nothing}{kept}</Delete>".encode()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{errors}</DeleteResult>'
        )  # Quiet: S3 names only the keys it did not delete
        headers = {"content-type": "application/xml"}
        return AWSResponse(request.url, 200, headers, _Body(body.encode()))

    client.meta.events.register_first("before-send", send)


def initiated(client: Any, when: datetime) -> None:
    """moto lists every multipart upload as initiated at 2010-11-10T20:48:33Z, where S3 gives
    the time it began: from now on `client`'s listings say `when`."""

    def dated(parsed: dict[str, Any], **_: Any) -> None:
        for upload in parsed.get("Uploads", []):
            upload["Initiated"] = when

    client.meta.events.register("after-call.s3.ListMultipartUploads", dated)


def uploads(client: Any, prefix: str = "") -> list[str]:
    """The keys of the incomplete multipart uploads under `prefix`."""
    found = client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [str(upload["Key"]) for upload in found.get("Uploads", [])]


def leave_upload(client: Any, key: str, body: bytes) -> str:
    """An incomplete multipart upload of `key` holding one part: what a build leaves when S3
    created the upload but both completing and aborting it failed. Its upload id."""
    upload_id = str(client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"])
    client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=body)
    return upload_id
