"""Real Lambda event shapes for invoking handlers in-process (tests, `keyflash invoke`).

API Gateway HTTP API (payload v2), Lambda function URL (the v2 shape), REST API (payload v1)
and EventBridge schedule events, as AWS sends them, so Mangum sees what it sees in production.
Every builder takes the path as the client sent it (percent-escapes kept) and puts it where each
source does: REST v1 keeps the escapes in `path`; an HTTP API decodes them in `rawPath` and
`requestContext.http.path` alike; a function URL keeps them in `rawPath` and decodes
`requestContext.http.path` (middleapi/standard-server#93, from hotsock/voker#8's live captures).
A v2 query given as a string is the query as sent: `rawQueryString` keeps it byte for byte (what
Mangum hands the app), and only `queryStringParameters` decodes it. The method is kept as given
(methods are case-sensitive: `get` is not `GET`). Other bytes that are not
UTF-8 are decoded to U+FFFD here: AWS does not document what it makes of them.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

LambdaEvent = dict[str, Any]


def _body_fields(body: bytes | str | None) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    if isinstance(body, str):
        return body, False
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def http_api_v2(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | str | None = None,
    body: bytes | str | None = None,
    source_ip: str = "203.0.113.7",
) -> LambdaEvent:
    """An API Gateway HTTP API (v2) event: `rawPath` and `http.path` both decoded, as AWS sends
    them. Cookies travel in `cookies`, as AWS sends them."""
    decoded = unquote(path)
    return _payload_v2(method, decoded, decoded, headers, query, body, source_ip)


def function_url(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | str | None = None,
    body: bytes | str | None = None,
    source_ip: str = "203.0.113.7",
) -> LambdaEvent:
    """A Lambda function URL event: the HTTP API's v2 shape, but `rawPath` as sent."""
    return _payload_v2(method, path, unquote(path), headers, query, body, source_ip)


def _payload_v2(
    method: str,
    raw_path: str,
    decoded_path: str,
    headers: dict[str, str] | None,
    query: dict[str, str] | str | None,
    body: bytes | str | None,
    source_ip: str,
) -> LambdaEvent:
    raw_query = query if isinstance(query, str) else urlencode(query or {})
    parameters: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        parameters.setdefault(name, []).append(value)
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    cookie_header = lowered.pop("cookie", "")
    text, encoded = _body_fields(body)
    now = time.time()
    event: LambdaEvent = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": {"host": "api.keyflash.test", "x-forwarded-proto": "https", **lowered},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.keyflash.test",
            "domainPrefix": "api",
            "http": {
                "method": method,
                "path": decoded_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": encoded,
    }
    if parameters:  # repeated names joined with commas, as AWS does
        event["queryStringParameters"] = {k: ",".join(v) for k, v in parameters.items()}
    if cookie_header:
        event["cookies"] = [c.strip() for c in cookie_header.split(";") if c.strip()]
    if text is not None:
        event["body"] = text
    return event


def rest_api_v1(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: bytes | str | None = None,
    source_ip: str = "203.0.113.7",
) -> LambdaEvent:
    """An API Gateway REST API (v1) proxy event."""
    merged = {"Host": "api.keyflash.test", "X-Forwarded-Proto": "https", **(headers or {})}
    text, encoded = _body_fields(body)
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": merged,
        "multiValueHeaders": {k: [v] for k, v in merged.items()},
        "queryStringParameters": dict(query) if query else None,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "httpMethod": method,
            "identity": {"sourceIp": source_ip, "userAgent": merged.get("User-Agent", "")},
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def schedule(rule: str = "keyflash-cron") -> LambdaEvent:
    """An EventBridge scheduled event, as a `schedule` trigger delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{rule}"],
        "detail": {},
    }


def lambda_context(function_name: str = "keyflash-fn", timeout_ms: int = 30_000) -> Any:
    """A minimal Lambda context object (what Mangum and our crons read)."""
    deadline = time.monotonic() + timeout_ms / 1000

    class Context:
        aws_request_id = str(uuid.uuid4())
        invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        memory_limit_in_mb = "512"
        log_group_name = f"/aws/lambda/{function_name}"
        log_stream_name = "local"

        def __init__(self) -> None:
            self.function_name = function_name

        def get_remaining_time_in_millis(self) -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

    return Context()


def response_json(response: LambdaEvent) -> Any:
    """Decode a Lambda proxy response's JSON body."""
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    return json.loads(body) if body else None
