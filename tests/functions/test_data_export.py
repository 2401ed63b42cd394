"""The data export for accounts of any size, under the platforms' payload limits.

A heavy account is generated in the database (tens of thousands of history and API-usage rows,
50 saved searches with large `results`, text with emoji, CJK, quotes and control characters).
Calls go through the test client, which refuses what Lambda or Vercel would refuse
(`devkit.platform_limits`), so an answer over a limit fails these tests as it fails deployed.
S3 is moto; Postgres and Redis are real.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import psycopg
import pytest
from starlette.responses import JSONResponse

from benchmarks.export_memory import (
    HEAVY,
    HISTORY_ROWS,
    SAVED_SEARCHES,
    USAGE_ROWS,
    generate_heavy_account,
)
from devkit import gateway, platform_limits
from devkit.local_s3 import LocalS3Server
from functions import me_export
from shared import config, db, exports
from shared.clock import utcnow
from shared.contracts import account, compact
from shared.contracts import admin as admin_contract
from shared.cron import exports as exports_job
from shared.cron.runner import run_job
from shared.envelope import GENERIC_503
from shared.repositories import (
    data_exports,
    feature_flags,
    personal_data,
    search_history,
    users,
)
from shared.s3 import s3_client
from tests.support.cron import BudgetContext, configure
from tests.support.http import Caller, Keys, Result, logged
from tests.support.s3 import (
    BUCKET,
    answer,
    initiated,
    leave_upload,
    mock_s3,
    refuse_deletes,
    unreachable,
    uploads,
)
from tests.support.tcp_gate import TcpGate

# Style of the test client → the platform it imitates.
PLATFORM_OF = {"lambda_v2": "lambda", "asgi": "vercel"}


def todays_body(user_id: str) -> bytes:
    """The document `GET /api/me/export` answered before exports existed: the snapshot's
    rows whole in memory, each through the export contract's `row`, rendered at once by the
    JSON response the API has always used."""

    def document(conn: Any) -> dict[str, Any]:
        data = personal_data.export(conn, user_id)
        return compact(
            {
                "user": None if data.user is None else account.row(data.user),
                "organizationMemberships": [account.row(r) for r in data.memberships],
                "savedSearches": [account.row(r) for r in data.saved_searches],
                "searchHistory": [account.row(r) for r in data.search_history],
                "apiUsage": [account.row(r) for r in data.api_usage],
                "webhookEvents": [account.row(r) for r in data.webhook_events],
                "systemMetrics": [account.row(r) for r in data.system_metrics],
                "featureFlags": list(data.feature_flags),
                "onErasure": account.ERASURE_RETENTION,
            }
        )

    return bytes(JSONResponse(db.transaction(document)).body)


def todays_document(user_id: str) -> Any:
    return json.loads(todays_body(user_id))


@pytest.fixture
def storage(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto S3 with the bucket exports share with backups; the app configured for it."""
    with mock_s3(monkeypatch) as client:
        yield client


@pytest.fixture(params=sorted(PLATFORM_OF))
def platform_call(
    request: pytest.FixtureRequest, api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> Caller:
    """A caller in the given style, imitating that style's platform only."""
    monkeypatch.setenv(platform_limits.VARIABLE, PLATFORM_OF[request.param])
    return Caller(request.param, api_env)


def stored_document(s3: Any, url: str) -> tuple[bytes, dict[str, Any]]:
    """The object a presigned URL names, fetched with the client (moto serves no HTTP)."""
    parts = urlsplit(url)
    key = unquote(parts.path.removeprefix(f"/{BUCKET}/"))
    if parts.netloc.startswith(f"{BUCKET}."):
        key = unquote(parts.path.removeprefix("/"))
    found = s3.get_object(Bucket=BUCKET, Key=key)
    return gzip.decompress(found["Body"].read()), found


def run_exports(**options: Any) -> dict[str, Any]:
    return run_job(exports_job.JOB, options=options)


def assert_within_limits(result: Result) -> None:
    assert "x-vercel-error" not in result.headers, result.text
    assert result.text != '{"message":"Internal Server Error"}'


# --------------------------------------------------------------------------- the heavy account


def test_the_heavy_account_exports_whole_within_each_platforms_limits(
    platform_call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    call = platform_call
    generate_heavy_account(admin_conn)
    direct = call(
        "me_export", "GET", "/api/me/export", user=HEAVY, headers={"accept-encoding": "gzip"}
    )
    assert_within_limits(direct)
    assert direct.status == 202, direct.text  # too large even compressed: exported instead
    export = direct.json["export"]
    assert export["status"] == "pending"
    assert direct.headers["location"] == f"/api/me/export/{export['id']}"

    summary = run_exports()
    assert summary["processed"] == 1 and summary["complete"], summary
    expected = todays_document(HEAVY)

    status = call("me_export", "GET", f"/api/me/export/{export['id']}", user=HEAVY)
    assert_within_limits(status)
    assert status.status == 200, status.text
    ready = status.json["export"]
    assert ready["status"] == "ready"
    document, stored = stored_document(storage, ready["url"])
    assert json.loads(document) == expected  # the same contents as the direct answer had
    assert stored["ContentLength"] == ready["gzipBytes"]
    # Today's failure: the document is larger than either platform carries in one answer.
    assert len(document) == ready["bytes"] > platform_limits.LAMBDA_PAYLOAD_MAX
    assert len(expected["searchHistory"]) == HISTORY_ROWS
    assert len(expected["apiUsage"]) >= USAGE_ROWS
    assert len(expected["savedSearches"]) == SAVED_SEARCHES


def test_the_streamed_export_is_byte_for_byte_the_in_memory_document(
    call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    """A mid-size account (3,000 history and usage rows, 5 large saved searches: more rows
    than one cursor fetch of each table) streamed by the job through gzip to storage is the
    document rendered whole in memory, byte for byte, and the direct answer's document."""
    generate_heavy_account(admin_conn, "user_mid", scale=0.1)
    direct = call("me_export", "GET", "/api/me/export", user="user_mid",
                  headers={"accept-encoding": "gzip"})  # fmt: skip
    assert direct.status == 200 and direct.headers["content-encoding"] == "gzip", direct.text
    assert call("me_export", "POST", "/api/me/export", user="user_mid").status == 202
    summary = run_exports()  # no request between the job and the reads below: no usage row
    whole = todays_body("user_mid")
    [key] = [item["Key"] for item in storage.list_objects_v2(Bucket=BUCKET)["Contents"]]
    stored = gzip.decompress(storage.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored == whole == exports.build("user_mid")
    assert summary["processed"] == 1 and summary["bytes"] == len(whole)
    answered = json.loads(gzip.decompress(direct.raw))
    document = json.loads(stored)
    # The direct answer was read before the POST's own API-usage row was written.
    assert answered["apiUsage"] == document["apiUsage"][: len(answered["apiUsage"])]
    assert {**answered, "apiUsage": []} == {**document, "apiUsage": []}
    assert len(document["searchHistory"]) > personal_data.ROWS_PER_FETCH
    assert len(document["savedSearches"]) > personal_data.SAVED_SEARCHES_PER_FETCH


def test_every_route_answers_the_heavy_account_within_the_platforms_limits(
    platform_call: Caller,
    storage: Any,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every GET route of every function, called for (and as the admin who is) the heaviest
    account: none may answer more than the imitated platform carries."""
    call = platform_call
    configure(monkeypatch, ADMIN_USER_IDS=HEAVY)
    generate_heavy_account(admin_conn)
    db.run(
        lambda conn: feature_flags.create(
            conn, "beta", feature_flags.FlagValues(enabled=True, allowed_users=(HEAVY,))
        )
    )
    requested = db.run(lambda conn: data_exports.request(conn, HEAVY, now=utcnow()))
    search_id = admin_conn.execute(
        'SELECT id FROM saved_searches WHERE "userId" = %s LIMIT 1', [HEAVY]
    ).fetchone()
    assert search_id is not None
    # The org routes answer as for a non-member (404): a team's own limits are its cap's.
    values = {
        "search_id": search_id[0],
        "key": "beta",
        "export_id": requested.export.id,
        "org_id": "org_2heavyteam",
    }
    called = []
    for method, path, function in gateway.route_table(gateway.load_all()):
        if method != "GET":
            continue
        concrete = path.format(**values)
        result = call(function, "GET", concrete, user=HEAVY, headers={"accept-encoding": "gzip"})
        assert_within_limits(result)
        assert result.status < 500, (concrete, result.status, result.text[:300])
        called.append(concrete)
    assert "/api/me/export" in called and "/api/searches" in called
    assert f"/api/searches/{search_id[0]}" in called


def test_a_retried_build_starts_its_file_again(db_env: str) -> None:
    """A transaction retried after a lost connection writes the document again from the start
    of the file: whatever an earlier attempt left there is gone."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    with tempfile.TemporaryFile() as file:
        file.write(b"an earlier attempt's partial output " * 1000)
        written = exports.write_compressed("user_a", file, deadline=math.inf)
        file.seek(0)
        document = gzip.decompress(file.read())
    assert document == exports.build("user_a") and written == len(document)


FLAGS = 30
PROVIDERS = 50


def test_the_admin_routes_at_their_widest_stay_within_the_platforms_limits(
    platform_call: Caller, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin answers that grow with data, asked for their widest: every minute of the
    longest metric window (values with all their digits), 90 days of analytics over 50
    providers, and flags naming 1,000 users of 255 characters each (7.7 MB listed whole)."""
    call = platform_call
    configure(monkeypatch, ADMIN_USER_IDS="user_admin")
    admin_conn.execute(
        """INSERT INTO feature_flags (id, key, enabled, "rolloutPercent", "allowedUsers",
                                      "createdAt", "updatedAt")
           SELECT 'flag' || f, 'flag-' || lpad(f::text, 3, '0'), true, 0,
                  (SELECT array_agg(rpad('user_' || f || '_' || u, 255, 'x'))
                     FROM generate_series(1, 1000) AS u), now(), now()
             FROM generate_series(1, %s) AS f""",
        [FLAGS],
    )
    admin_conn.execute(
        """INSERT INTO system_metrics (id, metric, value, timestamp)
           SELECT 'm' || i, 'wide', -1.2345678901234567e300 * random(),
                  date_trunc('minute', now()) - make_interval(mins => i)
             FROM generate_series(0, 7 * 24 * 60) AS i"""
    )
    admin_conn.execute(
        """INSERT INTO search_history (id, keywords, location, language, "matchType", provider,
               "cacheHit", "responseTime", "keywordCount", "searchedAt")
           SELECT 'p' || i, ARRAY[md5(i::text)], 'US', 'en', 'exact',
                  'provider-' || (i %% %s) || '-' || repeat('x', 200), false, i, 1,
                  now() - make_interval(mins => i)
             FROM generate_series(1, 5000) AS i""",
        [PROVIDERS],
    )
    now = utcnow()
    widest = {"metric": "wide", "bucket": "minute", "to": now.isoformat(),
              "from": (now - admin_contract.MAX_WINDOW["minute"]).isoformat()}  # fmt: skip
    series = call("admin_metrics", "GET", "/api/admin/metrics", user="user_admin", query=widest)
    assert_within_limits(series)
    assert series.status == 200 and len(series.json["points"]) >= 7 * 24 * 60 - 1, series.text
    analytics = call("admin_analytics", "GET", "/api/admin/analytics", user="user_admin",
                     query={"days": "90"})  # fmt: skip
    assert_within_limits(analytics)
    assert len(analytics.json["searches"]["providers"]) == admin_contract.MAX_PROVIDERS
    listed: list[str] = []
    pages = 0
    cursor: dict[str, str] = {}
    while True:
        page = call("admin_flags", "GET", "/api/admin/flags", user="user_admin", query=cursor)
        assert_within_limits(page)
        assert page.status == 200, page.text
        listed += [flag["key"] for flag in page.json["flags"]]
        pages += 1
        if "nextCursor" not in page.json:
            break
        cursor = {"cursor": page.json["nextCursor"]}
    assert listed == [f"flag-{n:03d}" for n in range(1, FLAGS + 1)] and pages > 1


# --------------------------------------------------------------------------- direct answers


def test_a_small_export_is_answered_directly_and_gzipped_when_accepted(call: Caller) -> None:
    db.run(lambda conn: users.create(conn, "user_small", "small@example.com"))
    search = search_history.NewSearch("user_small", ["k"], "US", "en", "exact", "mock", False, 5)
    for _ in range(10):  # past the gzip floor, far below any limit
        db.run(lambda conn: search_history.record(conn, search=search))
    plain = call("me_export", "GET", "/api/me/export", user="user_small",
                 headers={"accept-encoding": "identity"})  # fmt: skip
    assert plain.status == 200, plain.text
    assert "content-encoding" not in plain.headers
    assert plain.json["user"]["id"] == "user_small"
    assert plain.headers["content-disposition"] == 'attachment; filename="keyflash-export.json"'
    assert plain.headers["vary"] == "Accept-Encoding"
    zipped = call("me_export", "GET", "/api/me/export", user="user_small",
                  headers={"accept-encoding": "br;q=1.0, gzip;q=0.5"})  # fmt: skip
    assert zipped.status == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.raw[:2] == b"\x1f\x8b" and len(zipped.raw) < len(zipped.text.encode())
    assert json.loads(zipped.text)["user"] == plain.json["user"]


def test_a_metric_value_json_cannot_carry_is_exported_as_its_name(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """NaN and ±Infinity, which another writer may store in a `double precision` column, are
    not JSON: the export names them as strings, as PostgreSQL spells them."""
    db.run(lambda conn: users.create(conn, "user_odd", "odd@example.com"))
    admin_conn.execute(
        """INSERT INTO system_metrics (id, metric, value, tags, timestamp) VALUES
               ('a', 'odd', 'NaN', '{"user": "user_odd"}', '2026-11-20T10:00:00'),
               ('b', 'odd', 'Infinity', '{"user": "user_odd"}', '2026-11-20T10:01:00'),
               ('c', 'odd', '-Infinity', '{"user": "user_odd"}', '2026-11-20T10:02:00'),
               ('d', 'odd', 2.5, '{"user": "user_odd"}', '2026-11-20T10:03:00')"""
    )
    result = call("me_export", "GET", "/api/me/export", user="user_odd")
    assert result.status == 200, result.text
    values = [row["value"] for row in result.json["systemMetrics"]]
    assert values == ["NaN", "Infinity", "-Infinity", 2.5]


def test_an_answer_over_the_direct_limit_becomes_an_asynchronous_export(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    monkeypatch.setattr(me_export, "DIRECT_MAX_BYTES", 100)  # this small user's document: ~600
    result = call("me_export", "GET", "/api/me/export", user="user_a")
    assert result.status == 202 and result.json["export"]["status"] == "pending"


def test_a_document_heavy_in_quotes_is_never_the_platforms_500(call: Caller, storage: Any) -> None:
    """Under DIRECT_MAX_BYTES, but Lambda carries an uncompressed answer as a JSON string, where
    each `\\"` of the document is escaped again: 3.8 MB of them is a 7.6 MB result document."""
    db.run(lambda conn: users.create(conn, "user_q", "q@example.com"))
    search = search_history.NewSearch("user_q", ['"' * 100_000], "US", "en", "exact", "mock",
                                      False, 5)  # fmt: skip
    for _ in range(19):
        db.run(lambda conn: search_history.record(conn, search=search))
    assert len(exports.build("user_q")) < me_export.DIRECT_MAX_BYTES
    plain = call("me_export", "GET", "/api/me/export", user="user_q",
                 headers={"accept-encoding": "identity"})  # fmt: skip
    assert_within_limits(plain)
    assert plain.status == 202, plain.text
    zipped = call("me_export", "GET", "/api/me/export", user="user_q",
                  headers={"accept-encoding": "gzip"})  # fmt: skip
    assert zipped.status == 200 and len(json.loads(zipped.text)["searchHistory"]) == 19


def test_an_account_estimated_too_large_is_never_built_in_the_request(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    search = search_history.NewSearch("user_a", ["k" * 90], "US", "en", "exact", "mock", False, 5)
    db.run(lambda conn: search_history.record(conn, search=search))
    assert 90 < db.run(lambda conn: personal_data.estimated_bytes(conn, "user_a")) < 1000
    monkeypatch.setattr(me_export, "DIRECT_BUILD_MAX_ESTIMATE", 90)

    def never(user_id: str) -> bytes:
        raise AssertionError("the document must not be built in the request")

    monkeypatch.setattr(exports, "build", never)
    result = call("me_export", "GET", "/api/me/export", user="user_a")
    assert result.status == 202, result.text


@pytest.mark.parametrize(
    ("header", "accepted"),
    [("gzip", True), ("GZIP ; q=0.1", True), ("*", True), ("gzip;q=0", False),
     ("deflate, br", False), ("gzip;q=abc", False), ("", False)],
)  # fmt: skip
def test_accept_encoding_is_read_with_its_quality(header: str, accepted: bool) -> None:
    from starlette.requests import Request

    scope = {"type": "http", "headers": [(b"accept-encoding", header.encode())]}
    assert me_export.accepts_gzip(Request(scope)) is accepted


# --------------------------------------------------------------------------- asynchronous exports


def test_an_export_is_built_stored_and_downloaded_by_its_owner_only(
    call: Caller, storage: Any
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    asked = call("me_export", "POST", "/api/me/export", user="user_a")
    assert asked.status == 202, asked.text
    export_id = asked.json["export"]["id"]
    again = call("me_export", "POST", "/api/me/export", user="user_a")
    assert again.json["export"]["id"] == export_id  # one open export at a time
    pending = call("me_export", "GET", f"/api/me/export/{export_id}", user="user_a")
    assert pending.json["export"]["status"] == "pending" and "url" not in pending.json["export"]
    other = call("me_export", "GET", f"/api/me/export/{export_id}", user="user_b")
    assert other.status == 404 and other.json["message"] == me_export.NOT_FOUND

    assert run_exports()["processed"] == 1
    expected = todays_document("user_a")
    ready = call("me_export", "GET", f"/api/me/export/{export_id}", user="user_a").json["export"]
    assert ready["status"] == "ready" and ready["expiresAt"] > ready["finishedAt"]
    document, stored = stored_document(storage, ready["url"])
    assert json.loads(document) == expected
    assert stored["ContentType"] == "application/gzip"
    assert "X-Amz-Expires=300" in ready["url"] or "Expires=" in ready["url"]
    assert call("me_export", "GET", f"/api/me/export/{export_id}", user="user_b").status == 404
    # Finished: the next request starts a new export.
    fresh = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]
    assert fresh["id"] != export_id


@pytest.fixture(params=["us-east-1", "auto"])
def served_storage(
    request: pytest.FixtureRequest, api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """moto's S3 server on loopback (the local stack's), so a download link is fetched over
    HTTP as a browser fetches it; in AWS's default region and in R2's `auto`. The region."""
    server = LocalS3Server()
    local = server.start()
    try:
        env = local.env() | {"AWS_REGION": request.param, "AWS_DEFAULT_REGION": request.param}
        configure(monkeypatch, **env, AWS_SESSION_TOKEN=None)
        yield request.param
    finally:
        server.stop()


def test_a_download_link_is_signed_with_sigv4_and_downloads_over_http(
    api_env: Keys, served_storage: str
) -> None:
    """botocore presigns S3 URLs with SigV2 in us-east-1 unless told otherwise, and S3 refuses
    SigV2 for buckets made since June 2020 (and for SSE-KMS objects), as R2 does: the link
    must be SigV4 in every region."""
    call = Caller("lambda_v2", api_env)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    assert run_exports()["processed"] == 1
    expected = todays_document("user_a")
    ready = call("me_export", "GET", f"/api/me/export/{export_id}", user="user_a").json["export"]
    query = parse_qs(urlsplit(ready["url"]).query)
    assert query.get("X-Amz-Algorithm") == ["AWS4-HMAC-SHA256"], ready["url"]
    assert query["X-Amz-Credential"][0].endswith(f"/{served_storage}/s3/aws4_request")
    assert query["X-Amz-Expires"] == ["300"]
    download = httpx.get(ready["url"], timeout=30)
    assert download.status_code == 200, download.text
    assert json.loads(gzip.decompress(download.content)) == expected


def test_url_expires_at_is_never_after_the_signature_expires(call: Caller, storage: Any) -> None:
    """S3 counts a presigned URL's life from its X-Amz-Date, the signing time cut to the second:
    `urlExpiresAt` past that end would have a client use a URL S3 already refuses (403
    `Request has expired`)."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    assert run_exports()["processed"] == 1
    for _ in range(3):
        ready = call("me_export", "GET", f"/api/me/export/{export_id}", user="user_a")
        query = parse_qs(urlsplit(ready.json["export"]["url"]).query)
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires = signed + timedelta(seconds=int(query["X-Amz-Expires"][0]))
        said = datetime.fromisoformat(ready.json["export"]["urlExpiresAt"].replace("Z", "+00:00"))
        assert said <= expires, (said, expires)


def test_racing_requests_get_one_open_export(db_env: str) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    from concurrent.futures import ThreadPoolExecutor

    def ask(_: int) -> tuple[str, bool]:
        done = db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow()))
        return done.export.id, done.created

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, range(12)))
    assert len({export_id for export_id, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1


def test_exports_are_rate_limited_per_user(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, RATE_LIMIT_ENABLED="true", EXPORT_REQUESTS_PER_HOUR="2")
    user = f"user_rl_{uuid.uuid4().hex[:12]}"  # the Redis emulator outlives the test
    db.run(lambda conn: users.create(conn, user, f"{user}@example.com"))
    statuses = [call("me_export", "POST", "/api/me/export", user=user).status for _ in range(3)]
    assert statuses == [202, 202, 429]
    refused = call("me_export", "POST", "/api/me/export", user=user)
    assert refused.json["error"] == "Rate Limit Exceeded" and "retry-after" in refused.headers


def test_without_storage_an_export_is_a_clear_503(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, BACKUP_BUCKET=None)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    result = call("me_export", "POST", "/api/me/export", user="user_a")
    assert result.status == 503
    assert set(result.json) == {"error", "message", "statusCode", "timestamp"}
    assert result.json["message"] == GENERIC_503  # 5xx never explain the server's setup


def test_export_routes_require_auth(call: Caller) -> None:
    for method, path in (("POST", "/api/me/export"), ("GET", "/api/me/export/abc")):
        assert call("me_export", method, path).status == 401


def test_a_malformed_export_id_is_a_400_and_an_unknown_one_a_404(call: Caller) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    for bad in ("abc", "c" + "0" * 23 + "%00", "C" + "a" * 24, "c" + "a" * 25):
        result = call("me_export", "GET", f"/api/me/export/{bad}", user="user_a")
        assert result.status == 400 and result.json["message"] == me_export.INVALID_ID, bad
    unknown = call("me_export", "GET", "/api/me/export/c" + "a" * 24, user="user_a")
    assert unknown.status == 404


def test_expired_exports_disappear_from_the_api_the_table_and_storage(
    call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    run_exports()
    assert len(storage.list_objects_v2(Bucket=BUCKET).get("Contents", [])) == 1
    later = utcnow() + timedelta(days=config.get_settings().export_ttl_days, hours=2)
    admin_conn.execute("UPDATE data_exports SET \"expiresAt\" = now() - interval '1 second'")
    assert call("me_export", "GET", f"/api/me/export/{export_id}", user="user_a").status == 404
    summary = run_job(exports_job.JOB, now=later)
    assert summary["expired"] == 1 and summary["swept"] == 1
    assert storage.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert admin_conn.execute("SELECT count(*) FROM data_exports").fetchone() == (0,)


def test_a_failed_attempt_is_recorded_logged_by_export_id_and_retried_by_the_next_run(
    storage: Any,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S3 refusing the upload is caught, not a dead run: the export goes back to pending with
    S3's error code, so the next run (five minutes later, not twenty) builds it."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    export_id = db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow())).export.id
    refusing = s3_client()
    answer(refusing, "PutObject", "AccessDenied", 403)
    with monkeypatch.context() as patched, caplog.at_level("INFO", logger="keyflash"):
        patched.setattr(exports_job, "s3_client", lambda _deadline: refusing)
        assert run_exports()["errors"] == 1
    row = "SELECT status, attempts, error FROM data_exports WHERE id = %s"
    assert admin_conn.execute(row, [export_id]).fetchone() == ("pending", 1, "AccessDenied")
    (failed,) = logged(caplog, "data_export_failed")
    assert failed["exportId"] == export_id and failed["error"] == "AccessDenied"
    assert failed["attempt"] == 1 and "user_a" not in json.dumps(failed)

    assert run_exports()["processed"] == 1  # the next run, with no 20 minutes waited
    assert admin_conn.execute(row, [export_id]).fetchone() == ("ready", 2, None)
    assert uploads(storage) == []


def test_an_export_failing_again_and_again_is_marked_failed_with_its_error(
    storage: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    requested = db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow()))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("storage unreachable")

    monkeypatch.setattr(exports, "store", broken)
    for attempt in range(exports_job.MAX_ATTEMPTS):
        summary = run_exports()
        assert summary["errors"] == 1, (attempt, summary)
    row = admin_conn.execute(
        "SELECT status, attempts, error FROM data_exports WHERE id = %s", [requested.export.id]
    ).fetchone()
    assert row == ("failed", exports_job.MAX_ATTEMPTS, "OSError")
    assert run_exports()["processed"] == 0


def test_an_export_failing_to_build_does_not_hold_up_the_others(
    storage: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried export goes behind the fresh ones: the older export failing in one document
    must not be taken first, fail and end every run until it is marked failed."""
    for user in ("user_a", "user_b"):
        db.run(lambda conn, u=user: users.create(conn, u, f"{u}@example.com"))
    older = db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow())).export.id
    newer = db.run(lambda conn: data_exports.request(conn, "user_b", now=utcnow())).export.id
    write_compressed = exports.write_compressed

    def broken_for_a(user_id: str, into: Any, **options: Any) -> int:
        if user_id == "user_a":
            raise ValueError("a fault in this document")
        return write_compressed(user_id, into, **options)

    monkeypatch.setattr(exports, "write_compressed", broken_for_a)
    assert run_exports()["errors"] == 1  # the older one, taken first, failed
    run_exports()
    row = "SELECT status FROM data_exports WHERE id = %s"
    assert admin_conn.execute(row, [newer]).fetchone() == ("ready",)
    assert admin_conn.execute(row, [older]).fetchone() in {("pending",), ("failed",)}


def test_an_export_whose_runs_died_again_and_again_is_marked_failed(
    storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    """A run that dies says nothing: its claim stays running until another run takes it as
    dead; the take after MAX_ATTEMPTS marks it failed."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    requested = db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow()))
    admin_conn.execute(  # each run died long ago, holding its claim
        """UPDATE data_exports SET status = 'running', attempts = %s,
                  "startedAt" = now() - interval '1 hour'""",
        [exports_job.MAX_ATTEMPTS],
    )
    assert run_exports()["failed"] == 1
    row = admin_conn.execute(
        "SELECT status, attempts, error FROM data_exports WHERE id = %s", [requested.export.id]
    ).fetchone()
    assert row == ("failed", exports_job.MAX_ATTEMPTS + 1, "attempts")


def test_the_job_needs_a_bucket(db_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, BACKUP_BUCKET=None)
    with pytest.raises(exports_job.ExportError, match="BACKUP_BUCKET"):
        run_exports()


@pytest.mark.parametrize(("backup", "export"), [("keyflash/", "keyflash/exports/"),
                                               ("", "exports/"), ("keyflash/", "")])  # fmt: skip
def test_an_export_prefix_overlapping_the_backup_prefix_is_refused(
    db_env: str, monkeypatch: pytest.MonkeyPatch, backup: str, export: str
) -> None:
    """The exports sweep deletes what no export names under its prefix: backups stay out."""
    configure(monkeypatch, BACKUP_PREFIX=backup, EXPORT_PREFIX=export)
    with pytest.raises(config.ConfigurationError, match="EXPORT_PREFIX must be"):
        config.get_settings()
    configure(monkeypatch, BACKUP_PREFIX=None, EXPORT_PREFIX=None)


# --------------------------------------------------------------------------- erasure


def test_erasure_deletes_the_users_stored_and_pending_exports_only(
    call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    for user in ("user_a", "user_b"):
        db.run(lambda s, u=user: users.create(s, u, f"{u}@example.com"))
        call("me_export", "POST", "/api/me/export", user=user)
    run_exports()
    call("me_export", "POST", "/api/me/export", user="user_a")  # and one still pending
    assert admin_conn.execute("SELECT count(*) FROM data_exports").fetchone() == (3,)

    assert call("me", "DELETE", "/api/me", user="user_a",
                headers={"origin": "http://localhost:3000"}).status == 200  # fmt: skip
    left = [item["Key"] for item in storage.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(left) == 1 and "/user_b/" in left[0]
    owners = admin_conn.execute('SELECT "userId" FROM data_exports').fetchall()
    assert owners == [("user_b",)]


def test_an_erasure_never_reaches_an_id_that_extends_the_users_with_a_slash(
    call: Caller, storage: Any
) -> None:
    """A `sub` may hold `/` (only empty, NUL and lone surrogates are refused): `user_a/x`'s
    exports are its own, not under `user_a`'s prefix, where `user_a`'s erasure deleted them."""
    asked = {}
    for user in ("user_a", "user_a/x"):
        db.run(lambda s, u=user: users.create(s, u, f"{u.replace('/', '.')}@example.com"))
        asked[user] = call("me_export", "POST", "/api/me/export", user=user).json["export"]["id"]
    run_exports()
    assert call("me", "DELETE", "/api/me", user="user_a",
                headers={"origin": "http://localhost:3000"}).status == 200  # fmt: skip
    path = f"/api/me/export/{asked['user_a/x']}"
    export = call("me_export", "GET", path, user="user_a/x").json["export"]
    document, _ = stored_document(storage, export["url"])
    assert json.loads(document)["user"]["id"] == "user_a/x"


@pytest.fixture
def hung_storage(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Iterator[TcpGate]:
    """An S3 endpoint that accepts connections and never answers (a shut gate to nowhere);
    the app configured to export into it."""
    gate = TcpGate(upstream_port=1)
    gate.start()
    gate.shut()
    configure(
        monkeypatch,
        BACKUP_BUCKET=BUCKET,
        AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{gate.port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN=None,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield gate
    finally:
        gate.stop()


def test_an_s3_that_never_answers_fails_the_attempt_within_the_runs_time(
    api_env: Keys,
    hung_storage: TcpGate,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tester s51t1: one call held 3 x 60 s (botocore's read timeout and retries) whatever the
    run had left, so the run outlived its limit and its database gave up: the failure it logged
    was never written (the export stayed running), the lease stayed held and the run failed as
    DatabaseUnavailableError. Its S3 calls now end by the run's deadline (its database's give-up
    time less PROVIDER_DEADLINE_MARGIN_S): the attempt fails as any S3 failure does, recorded,
    and the lease is given back."""
    # A 10 s invocation less the database's 3 s and the 1 s margin: S3 gets until 6 s into the
    # run. One batch starts, whatever the machine's speed (10 s is more than the 1 s batch
    # margin and the database's 3 s); the next check finds no time left.
    configure(monkeypatch, PROVIDER_DEADLINE_MARGIN_S=1, CRON_TIME_MARGIN_MS=1000)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call = Caller("lambda_v2", api_env)
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    with caplog.at_level("INFO", logger="keyflash"):
        summary = run_job(exports_job.JOB, context=BudgetContext(checks=1, first_ms=10_000))
    assert hung_storage.connect_held.is_set()  # the upload reached S3, which never answered
    row = admin_conn.execute(
        "SELECT status, attempts, error FROM data_exports WHERE id = %s", (export_id,)
    ).fetchone()
    assert row == ("pending", 1, "S3DeadlineError")
    (failed,) = logged(caplog, "data_export_failed")
    assert failed["error"] == "S3DeadlineError" and failed["attempt"] == 1
    assert summary["errors"] == 1 and not summary["complete"] and "swept" not in summary
    assert logged(caplog, "cron_job_failed") == logged(caplog, "db_unavailable") == []
    holder = admin_conn.execute("SELECT holder FROM cron_leases WHERE job = 'exports'").fetchone()
    assert holder == (None,)  # given back
    assert summary["durationMs"] < 10_000  # a guard: the limit, not botocore's three minutes


def test_a_build_that_outlasts_the_runs_deadline_goes_back_to_pending(
    api_env: Keys,
    storage: Any,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tester s53t6: only the S3 calls ended by the run's deadline; the build (the database read
    and gzip) ran on past the database's give-up time, so the failed attempt could not be
    recorded (the export stayed running), the lease was not given back and the run failed as
    DatabaseUnavailableError. The build now stops at the deadline too."""
    # A 6 s invocation less the database's 3 s and S3's 2 s: the deadline is 1 s into the run,
    # the database gives up at 3 s; this account's build takes several seconds more.
    configure(monkeypatch, PROVIDER_DEADLINE_MARGIN_S=2, CRON_TIME_MARGIN_MS=0)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    admin_conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
               provider, "responseTime", "searchedAt")
           SELECT 'h' || g, 'user_a',
               array(SELECT md5(g || '-' || k) FROM generate_series(1, 12) k),
               'US', 'en', 'broad', 'mock', 1, timestamp '2026-11-01' + g * interval '1 second'
           FROM generate_series(1, 40000) g"""
    )
    call = Caller("lambda_v2", api_env)
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    with caplog.at_level("INFO", logger="keyflash"):
        summary = run_job(exports_job.JOB, context=BudgetContext(checks=1, first_ms=6_000))
    assert "processed" in summary
    assert_back_to_pending_by_the_deadline(admin_conn, caplog, export_id, summary)


def test_a_fetch_that_straddles_the_runs_deadline_ends_the_build_there(
    api_env: Keys,
    storage: Any,
    monkeypatch: pytest.MonkeyPatch,
    direct_database_url: str,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reviewer s53r M1: the deadline was checked only between pieces, so one fetch (the
    ledger's scan) could run past the database's give-up time: the export stayed running, the
    lease held, the run failed as DatabaseUnavailableError. The build's round trips now end by
    its deadline. Here the fetch waits on a lock another connection holds on webhook_events."""
    # A 6 s invocation less the database's 3 s and S3's 2 s: the deadline is 1 s into the run.
    configure(monkeypatch, PROVIDER_DEADLINE_MARGIN_S=2, CRON_TIME_MARGIN_MS=0)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call = Caller("lambda_v2", api_env)
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    with psycopg.connect(direct_database_url) as holder:
        holder.execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE")
        with caplog.at_level("INFO", logger="keyflash"):
            summary = run_job(exports_job.JOB, context=BudgetContext(checks=1, first_ms=6_000))
        holder.rollback()
    assert_back_to_pending_by_the_deadline(admin_conn, caplog, export_id, summary)


def assert_back_to_pending_by_the_deadline(
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    export_id: str,
    summary: dict[str, Any],
) -> None:
    """The build stopped at the run's deadline: the attempt recorded, the export pending again,
    the run ended normally and its lease given back."""
    row = admin_conn.execute(
        "SELECT status, attempts, error FROM data_exports WHERE id = %s", (export_id,)
    ).fetchone()
    assert row == ("pending", 1, exports.BuildDeadlineError.__name__)
    assert summary["errors"] == 1
    assert logged(caplog, "cron_job_failed") == logged(caplog, "db_unavailable") == []
    lease = admin_conn.execute("SELECT holder FROM cron_leases WHERE job = 'exports'").fetchone()
    assert lease == (None,)  # given back


def test_no_export_is_claimed_past_the_runs_deadline_for_s3(
    api_env: Keys,
    storage: Any,
    monkeypatch: pytest.MonkeyPatch,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Reviewer s51: with PROVIDER_DEADLINE_MARGIN_S larger than CRON_TIME_MARGIN_MS a batch
    could start after the run's S3 deadline, claim an export and spend one of its attempts on
    calls that could only fail. No such batch starts: the export stays pending, untried."""
    configure(monkeypatch, CRON_TIME_MARGIN_MS=0, PROVIDER_DEADLINE_MARGIN_S=10)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call = Caller("lambda_v2", api_env)
    export_id = call("me_export", "POST", "/api/me/export", user="user_a").json["export"]["id"]
    # 8 s: more than the database's 3 s (a batch may start), less than its 3 s and S3's 10 s.
    summary = run_job(exports_job.JOB, context=BudgetContext(checks=5, first_ms=8_000))
    row = admin_conn.execute(
        "SELECT status, attempts FROM data_exports WHERE id = %s", (export_id,)
    ).fetchone()
    assert row == ("pending", 0)
    assert summary["complete"] is False and summary["batches"] == 0


def test_an_erasure_on_lambda_whose_s3_never_answers_is_deferred_within_the_invocation(
    api_env: Keys,
    hung_storage: TcpGate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The erasure's listing waited on botocore's 3 x 60 s and the platform ended the
    invocation (Lambda's 500): its deletes now end by the invocation's deadline and the
    erasure is deferred to the sweep, as when S3 refuses."""
    # 10 s less the database's 3 s and the 1 s margin: S3 gets until 6 s into the request.
    configure(monkeypatch, KEYFLASH_TIMEOUT_S=10, PROVIDER_DEADLINE_MARGIN_S=1)
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    with caplog.at_level("INFO", logger="keyflash"):
        erased = Caller("lambda_v2", api_env)("me", "DELETE", "/api/me", user="user_a",
                                              headers=ORIGIN)  # fmt: skip
    assert erased.status == 200, erased.text
    assert hung_storage.connect_held.is_set()
    assert logged(caplog, "export_erasure_deferred")[0]["error"] == "S3DeadlineError"
    assert logged(caplog, "account_erased")[0]["exportsDeleted"] == 0
    assert db.run(lambda conn: users.get(conn, "user_a")) is None


def test_an_erasure_while_storage_is_down_is_finished_by_the_sweep(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call("me_export", "POST", "/api/me/export", user="user_a")
    run_exports()

    def unreachable(_deadline: float) -> Any:
        raise OSError("storage unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(exports, "s3_client", unreachable)
        erased = call("me", "DELETE", "/api/me", user="user_a",
                      headers={"origin": "http://localhost:3000"})  # fmt: skip
    assert erased.status == 200  # the erasure itself never waits on storage
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1
    summary = run_job(exports_job.JOB, now=utcnow() + exports_job.SWEEP_GRACE * 2)
    assert summary["swept"] == 1
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


ORIGIN = {"origin": "http://localhost:3000"}


def test_an_erasure_aborts_the_users_incomplete_uploads_only(
    call: Caller, storage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A build whose CompleteMultipartUpload and AbortMultipartUpload both failed leaves the
    parts of the whole document (email included) in storage, where no object listing sees them."""
    settings = config.get_settings()
    for user in ("user_a", "user_b", "user_a/x"):
        db.run(lambda s, u=user: users.create(s, u, f"{u.replace('/', '.')}@example.com"))
        key = exports.object_key(settings, user, f"c{uuid.uuid4().hex[:24]}")
        leave_upload(storage, key, exports.compress(todays_body(user)))
    with caplog.at_level("INFO", logger="keyflash"):
        assert call("me", "DELETE", "/api/me", user="user_a", headers=ORIGIN).status == 200
    left = uploads(storage)
    assert len(left) == 2 and not any(exports.user_prefix(settings, "user_a") in k for k in left)
    assert logged(caplog, "export_erasure_deferred") == []
    assert logged(caplog, "account_erased")[0]["exportUploadsAborted"] == 1


@pytest.mark.parametrize("abort", ["InternalError", None], ids=["refused", "accepted_but_left"])
def test_an_upload_the_erasure_could_not_abort_is_reported_and_aborted_by_the_sweep(
    call: Caller,
    storage: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    abort: str | None,
) -> None:
    """Storage refusing the abort, or accepting it while the upload stays (AWS: a part still
    arriving may survive an abort): the erasure does not log itself done with exports, and the
    sweep aborts the upload once it is older than any build."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    key = exports.object_key(config.get_settings(), "user_a", f"c{uuid.uuid4().hex[:24]}")
    leave_upload(storage, key, exports.compress(todays_body("user_a")))
    began = utcnow()
    failing = s3_client()
    answer(failing, "AbortMultipartUpload", abort)
    with monkeypatch.context() as patched, caplog.at_level("INFO", logger="keyflash"):
        patched.setattr(exports, "s3_client", lambda _deadline: failing)
        assert call("me", "DELETE", "/api/me", user="user_a", headers=ORIGIN).status == 200
    assert uploads(storage) == [key]
    (deferred,) = logged(caplog, "export_erasure_deferred")
    assert deferred == deferred | ({"error": "InternalError"} if abort else {"uploadsLeft": 1})
    assert "user_a" not in json.dumps(deferred)

    sweeping = s3_client()
    initiated(sweeping, began)
    monkeypatch.setattr(exports_job, "s3_client", lambda _deadline: sweeping)
    assert run_exports()["uploadsAborted"] == 0  # young: it could be a running build's
    summary = run_job(exports_job.JOB, now=began + exports_job.SWEEP_GRACE * 2)
    assert summary["uploadsAborted"] == 1 and uploads(storage) == []


def test_an_erasure_whose_abort_failed_still_counts_the_objects_it_deleted(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The objects were deleted before the abort failed: `account_erased` says so, not 0."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call("me_export", "POST", "/api/me/export", user="user_a")
    run_exports()
    key = exports.object_key(config.get_settings(), "user_a", f"c{uuid.uuid4().hex[:24]}")
    leave_upload(storage, key, b"part")
    failing = s3_client()
    answer(failing, "AbortMultipartUpload", "AccessDenied", 403)
    with monkeypatch.context() as patched, caplog.at_level("INFO", logger="keyflash"):
        patched.setattr(exports, "s3_client", lambda _deadline: failing)
        assert call("me", "DELETE", "/api/me", user="user_a", headers=ORIGIN).status == 200
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    (erased,) = logged(caplog, "account_erased")
    assert erased["exportsDeleted"] == 1 and erased["exportUploadsAborted"] == 0
    assert logged(caplog, "export_erasure_deferred")[0]["error"] == "AccessDenied"


@pytest.mark.parametrize(
    ("operation", "code"),
    [("ListMultipartUploads", "AccessDenied"), ("AbortMultipartUpload", "AccessDenied"),
     ("ListMultipartUploads", "EndpointConnectionError")],
)  # fmt: skip
def test_a_sweep_refused_the_upload_calls_warns_and_the_cron_succeeds(
    storage: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    operation: str,
    code: str,
) -> None:
    """A credential whose policy lacks s3:ListBucketMultipartUploads or s3:AbortMultipartUpload
    (a Vercel IAM user's, say), or S3 unreachable, must not fail the exports cron every 5
    minutes: one WARNING."""
    key = exports.object_key(config.get_settings(), "user_a", f"c{uuid.uuid4().hex[:24]}")
    storage.create_multipart_upload(Bucket=BUCKET, Key=key)
    refusing = s3_client()
    if code == "EndpointConnectionError":
        unreachable(refusing, operation)
    else:
        answer(refusing, operation, code, 403)
    monkeypatch.setattr(exports_job, "s3_client", lambda _deadline: refusing)
    with caplog.at_level("INFO", logger="keyflash"):
        summary = run_job(exports_job.JOB, now=utcnow() + exports_job.SWEEP_GRACE * 2)
    assert summary["swept"] == 0 and "uploadsAborted" not in summary
    (warned,) = logged(caplog, "export_uploads_sweep_failed")
    assert warned["error"] == code
    assert [r.levelname for r in caplog.records if "export_uploads_sweep_failed" in r.message] == [
        "WARNING"
    ]


def test_an_erasure_whose_deletes_s3_refused_per_key_defers_and_the_sweep_finishes_it(
    call: Caller, storage: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 and R2 answer a DeleteObjects they refused for some keys (no s3:DeleteObject, a
    locked object) with 200 and an `<Error>` per key: those objects, the erased user's data,
    are still stored, so the erasure is not done with them."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    call("me_export", "POST", "/api/me/export", user="user_a")
    run_exports()
    refusing = s3_client()
    refuse_deletes(refusing, lambda key: True)
    with monkeypatch.context() as patched, caplog.at_level("INFO", logger="keyflash"):
        patched.setattr(exports, "s3_client", lambda _deadline: refusing)
        assert call("me", "DELETE", "/api/me", user="user_a", headers=ORIGIN).status == 200
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1
    (deferred,) = logged(caplog, "export_erasure_deferred")
    assert deferred["error"] == "AccessDenied" and "user_a" not in json.dumps(deferred)
    assert logged(caplog, "account_erased")[0]["exportsDeleted"] == 0

    summary = run_job(exports_job.JOB, now=utcnow() + exports_job.SWEEP_GRACE * 2)
    assert summary["swept"] == 1
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


def test_a_sweep_counts_only_the_objects_s3_deleted_and_warns_of_the_others(
    storage: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys S3 lists under `<Error>` in its 200 answer to DeleteObjects are still stored: not
    swept, and said so by S3's code and a count, never by key (a key names a user)."""
    settings = config.get_settings()
    keys = [
        exports.object_key(settings, user, f"c{uuid.uuid4().hex[:24]}")
        for user in ("user_a", "user_b", "user_c")
    ]
    for key in keys:
        storage.put_object(Bucket=BUCKET, Key=key, Body=b"gz")
    refusing = s3_client()
    refuse_deletes(refusing, lambda key: "/user_b/" in key)
    monkeypatch.setattr(exports_job, "s3_client", lambda _deadline: refusing)
    with caplog.at_level("INFO", logger="keyflash"):
        summary = run_job(exports_job.JOB, now=utcnow() + exports_job.SWEEP_GRACE * 2)
    assert summary["swept"] == 2 and summary["uploadsAborted"] == 0
    assert [item["Key"] for item in storage.list_objects_v2(Bucket=BUCKET)["Contents"]] == [keys[1]]
    (warned,) = logged(caplog, "export_objects_sweep_failed")
    assert warned == warned | {"error": "AccessDenied", "objectsLeft": 1}
    assert "user_b" not in json.dumps(warned)
    assert [r.levelname for r in caplog.records if "export_objects_sweep_failed" in r.message] == [
        "WARNING"
    ]


@pytest.mark.parametrize(
    ("code", "status"),
    [("AccessDenied", 403), ("InternalError", 500), ("NoSuchBucket", 404),
     ("EndpointConnectionError", None)],
)  # fmt: skip
def test_a_sweep_whose_object_listing_fails_warns_and_the_run_succeeds(
    storage: Any,
    admin_conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: str,
    status: int | None,
) -> None:
    """A credential without s3:ListBucket, S3 erroring or unreachable, the bucket gone: the
    sweep warns, as when the upload listing is refused; the run, which built an export first,
    succeeds with its summary (a failed run is retried by the platform within minutes)."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow()))
    failing = s3_client()
    if status is None:
        unreachable(failing, "ListObjectsV2")
    else:
        answer(failing, "ListObjectsV2", code, status)
    monkeypatch.setattr(exports_job, "s3_client", lambda _deadline: failing)
    with caplog.at_level("INFO", logger="keyflash"):
        summary = run_exports()
    assert summary["processed"] == 1 and summary["complete"], summary
    assert "swept" not in summary and summary["uploadsAborted"] == 0
    (warned,) = logged(caplog, "export_objects_sweep_failed")
    assert warned["error"] == code
    assert [r.levelname for r in caplog.records if "export_objects_sweep_failed" in r.message] == [
        "WARNING"
    ]
    assert admin_conn.execute("SELECT status FROM data_exports").fetchall() == [("ready",)]


def test_the_sweep_aborts_stale_uploads_under_the_export_prefix_only(storage: Any) -> None:
    """CreateMultipartUpload whose answer was lost (a truncated reply; botocore retries and
    makes another) leaves empty uploads nobody knows the id of: the sweep finds them by listing."""
    settings = config.get_settings()
    key = exports.object_key(settings, "user_a", f"c{uuid.uuid4().hex[:24]}")
    for _ in range(3):
        storage.create_multipart_upload(Bucket=BUCKET, Key=key)
    backup = f"{settings.backup_prefix}20261128T020000000Z/users.tsv.gz"
    storage.create_multipart_upload(Bucket=BUCKET, Key=backup)
    summary = run_job(exports_job.JOB, now=utcnow() + exports_job.SWEEP_GRACE * 2)
    assert summary["uploadsAborted"] == 3
    assert uploads(storage) == [backup]  # the backups' own, not the exports sweep's


def test_an_export_finished_after_its_user_was_erased_is_discarded(
    storage: Any, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    db.run(lambda conn: data_exports.request(conn, "user_a", now=utcnow()))
    real_store = exports.store

    def store_then_erase(*args: Any) -> None:
        real_store(*args)  # the document is in storage; now the user is erased
        admin_conn.execute("DELETE FROM users WHERE id = 'user_a'")

    monkeypatch.setattr(exports, "store", store_then_erase)
    summary = run_exports()
    assert summary["discarded"] == 1
    assert storage.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0


# --------------------------------------------------------------------------- other bounded answers


def utf8_json(value: Any) -> bytes:
    """JSON as browsers send it: UTF-8, not \\u-escaped."""
    return json.dumps(value, ensure_ascii=False).encode()


def test_a_saved_search_at_the_request_cap_fits_either_platforms_response(call: Caller) -> None:
    """Results are stored as sent, and a request body is capped (under 1 MB): a saved search as
    large as a request can make comes back whole, well within both limits."""
    result = {
        "keyword": "検索🚀" * 40, "searchVolume": 1e15, "difficulty": 99.99999, "cpc": 1.5,
        "competition": "medium", "intent": "transactional",
        "trends": [{"month": 1 + m % 12, "year": 2000 + m, "volume": 1e12 + m} for m in range(24)],
    }  # fmt: skip
    body: dict[str, Any] = {
        "name": "biggest",
        "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"},
        "results": [result] * (950_000 // (len(utf8_json(result)) + 1)),
    }
    created = call("searches", "POST", "/api/searches", user="user_a", body=utf8_json(body),
                   headers={"content-type": "application/json"})  # fmt: skip
    assert created.status == 201, created.text[:300]
    search_id = created.json["search"]["id"]
    got = call("search_item", "GET", f"/api/searches/{search_id}", user="user_a",
               headers={"accept-encoding": "identity"})  # fmt: skip
    assert got.status == 200 and got.json["search"]["results"] == body["results"]
    assert len(got.raw) < 1_100_000
    listed = call("searches", "GET", "/api/searches", user="user_a")
    assert listed.status == 200 and "results" not in listed.json["searches"][0]


@pytest.mark.parametrize("character", ["検", "🔥"], ids=["cjk", "emoji"])
def test_a_history_page_of_the_largest_rows_is_cut_by_bytes_and_loses_nothing(
    call: Caller, admin_conn: psycopg.Connection[Any], character: str
) -> None:
    """100 rows of 200 keywords of 100 CJK characters (60 KB each) or emoji (80 KB) would be
    6-8 MB in one page: the page stops at its byte budget and the cursor carries on, every row
    once. An emoji is 4 bytes in the page and in the python3.12 runtime's result document."""
    db.run(lambda conn: users.create(conn, "user_a", "a@example.com"))
    admin_conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
               provider, "responseTime", "searchedAt")
           SELECT 'big' || i, 'user_a',
                  (SELECT array_agg(repeat(%s, 99) || k) FROM generate_series(1, 200) AS k),
                  'US', 'en', 'exact', 'mock', 5, now() - make_interval(secs => i)
             FROM generate_series(1, 100) AS i""",
        (character,),
    )
    seen: list[str] = []
    query = {"limit": "100"}
    pages = 0
    while True:
        page = call("history", "GET", "/api/history", user="user_a", query=query,
                    headers={"accept-encoding": "identity"})  # fmt: skip
        assert page.status == 200, page.text[:200]
        assert len(page.raw) < platform_limits.VERCEL_BODY_MAX
        seen += [item["id"] for item in page.json["history"]]
        pages += 1
        if "nextCursor" not in page.json:
            break
        query = {"limit": "100", "cursor": page.json["nextCursor"]}
    assert pages > 1
    assert seen == [f"big{i}" for i in range(1, 101)]


# --------------------------------------------------------------------------- erasure races


def test_an_export_after_another_container_erased_the_user_provisions_again(
    call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    assert call("me_export", "POST", "/api/me/export", user="user_gone").status == 202
    admin_conn.execute("DELETE FROM users WHERE id = 'user_gone'")  # erased elsewhere
    again = call("me_export", "POST", "/api/me/export", user="user_gone")
    assert again.status == 202, again.text
    counts = admin_conn.execute(
        "SELECT (SELECT count(*) FROM users WHERE id = 'user_gone'),"
        " (SELECT count(*) FROM data_exports WHERE \"userId\" = 'user_gone')"
    ).fetchone()
    assert counts == (1, 1)


def test_export_requests_racing_an_erasure_are_answered_never_a_500(
    call: Caller, storage: Any, admin_conn: psycopg.Connection[Any]
) -> None:
    """Each round erases an account while four requests for its export are in flight, two to
    start one (202, before the erasure or for the fresh account provisioned after it) and two
    for the document itself (200): no request fails, the erasure is a 200, and an export row
    exists only for a user row that exists."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    origin = {"origin": "http://localhost:3000"}
    for round_number in range(12):
        user = f"user_race_{round_number}"
        assert call("me_export", "POST", "/api/me/export", user=user).status == 202
        start = Barrier(5)

        def send(
            method: str, module: str, path: str, user: str = user, start: Barrier = start
        ) -> int:
            start.wait()
            return call(module, method, path, user=user, headers=origin).status

        with ThreadPoolExecutor(max_workers=5) as pool:
            erased = pool.submit(send, "DELETE", "me", "/api/me")
            asked = [
                pool.submit(send, method, "me_export", "/api/me/export")
                for method in ("POST", "GET", "POST", "GET")
            ]
            statuses = (erased.result(), [future.result() for future in asked])
        assert statuses == (200, [202, 200, 202, 200]), round_number
    orphans = admin_conn.execute(
        'SELECT count(*) FROM data_exports e LEFT JOIN users u ON u.id = e."userId"'
        " WHERE u.id IS NULL"
    ).fetchone()
    assert orphans == (0,)
