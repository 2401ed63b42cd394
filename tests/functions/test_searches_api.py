"""/api/searches contract (docs/original-app.md#saved-searches-apisearches) through Lambda v2,
Lambda v1 and HTTP, on both lanes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import respx
from httpx import Response as HttpxResponse

from shared import config, providers
from tests.functions.test_keywords_api import (
    DATAFORSEO_URL,
    dataforseo_upstream,
    use_dataforseo,
)
from tests.functions.test_keywords_api import fixture as dataforseo_fixture
from tests.support.fake_google_ads import fixture as google_ads_fixture
from tests.support.http import Caller, Keys

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BODY = {
    "name": "  Running shoes  ",
    "description": "Q3 ideas",
    "searchParams": {
        "keywords": [" trail shoes ", "running shoes"],
        "matchType": "phrase",
        "location": "US",
    },
    "results": [
        {
            "keyword": "trail shoes",
            "searchVolume": 1200.5,
            "difficulty": 40,
            "cpc": 1.2,
            "competition": "medium",
            "intent": "commercial",
            "trends": [{"month": 1, "year": 2026, "volume": 1100}],
        }
    ],
    "unknownKey": "ignored",
}


def create(
    call: Caller, user: str = "user_a", body: dict[str, Any] | None = None
) -> dict[str, Any]:
    result = call("searches", "POST", "/api/searches", user=user, json_body=body or BODY)
    assert result.status == 201, result.text
    search: dict[str, Any] = result.json["search"]
    return search


def test_create_returns_the_record_in_the_original_shape(call: Caller) -> None:
    result = call("searches", "POST", "/api/searches", user="user_a", json_body=BODY)
    assert result.status == 201
    assert result.headers["api-version"] == "v1"
    assert result.headers["cache-control"] == "private, no-cache, no-store, must-revalidate"
    assert result.headers["x-request-id"].startswith("req_")
    search = result.json["search"]
    assert set(search) == {
        "id",
        "clerkUserId",
        "name",
        "description",
        "searchParams",
        "results",
        "metadata",
    }
    assert search["name"] == "Running shoes" and search["clerkUserId"] == "user_a"
    assert search["searchParams"] == {
        "keywords": ["trail shoes", "running shoes"],
        "matchType": "phrase",
        "location": "US",
        "language": "en",
    }
    assert search["results"][0]["searchVolume"] == 1200.5
    assert set(search["metadata"]) == {"createdAt", "updatedAt", "resultCount"}  # no lastRunAt
    assert TIMESTAMP.match(search["metadata"]["createdAt"])
    assert search["metadata"]["resultCount"] == 1
    assert re.match(r"^[0-9a-f-]{36}$", search["id"])


# --- results as the keyword routes answer them (docs/keyword-search.md#missing-data-stays-missing)


@pytest.fixture
def fresh_providers() -> Iterator[None]:
    providers.reset_providers()
    yield
    config.get_settings.cache_clear()
    providers.reset_providers()


def dataforseo_answer(keywords: list[str]) -> dict[str, Any]:
    """DataForSEO's documented answer with every kind of missing data: a measured item, one
    without a volume, one without cpc and bids, one without competition, one with a month
    without a figure; the sixth keyword is not returned at all."""
    body = dataforseo_fixture("search_volume_ok")
    items = body["tasks"][0]["result"]
    full, empty = items[0], items[4]
    months = [dict(month) for month in full["monthly_searches"]]
    months[0]["search_volume"] = None
    no_bids = {"cpc": None, "low_top_of_page_bid": None, "high_top_of_page_bid": None}
    body["tasks"][0]["result"] = [
        {**full, "keyword": keywords[0]},
        {**empty, "keyword": keywords[1]},
        {**full, "keyword": keywords[2], **no_bids},
        {**full, "keyword": keywords[3], "competition": None, "competition_index": None},
        {**full, "keyword": keywords[4], "monthly_searches": months},
    ]
    return body


def google_ads_answer(keywords: list[str]) -> dict[str, Any]:
    """Google's recorded answer: two measured keywords (one with a difficulty), one without
    metrics; the fourth keyword is not returned."""
    body = google_ads_fixture("historical_metrics")
    for result, keyword in zip(body["results"], keywords, strict=False):
        result["text"] = keyword
        result.pop("closeVariants", None)
    return body


def answered_rows(call: Caller, who: str, provider: str, mock: respx.MockRouter) -> Any:
    """What `POST /api/keywords` answers with `provider` behind respx, checked to hold the
    shapes a saved search must take."""
    tag = uuid.uuid4().hex[:8]
    keywords = [f"{word} {tag}" for word in ("alpha", "bravo", "charlie", "delta", "echo", "fox")]
    if provider == "dataforseo":
        mock.post(url__regex=DATAFORSEO_URL).mock(
            return_value=HttpxResponse(200, json=dataforseo_answer(keywords))
        )
    else:
        keywords = keywords[:4]
        mock.post("https://oauth2.googleapis.com/token").mock(
            return_value=HttpxResponse(200, json=google_ads_fixture("token"))
        )
        mock.post(url__startswith="https://googleads.googleapis.com/").mock(
            return_value=HttpxResponse(200, json=google_ads_answer(keywords))
        )
    body = {"keywords": keywords, "matchType": "phrase", "location": "US"}
    answer = call("keywords", "POST", "/api/keywords", user=who, json_body=body)
    assert answer.status == 200, answer.text
    rows = answer.json["data"]
    assert any(row.get("noData") is True for row in rows)
    assert any("difficulty" not in row for row in rows)
    return rows


@pytest.mark.usefixtures("fresh_providers")
@pytest.mark.parametrize("provider", ["dataforseo", "google-ads"])
def test_the_rows_a_keyword_search_answers_are_saved_and_read_back_unchanged(
    call: Caller, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    if provider == "dataforseo":
        use_dataforseo(monkeypatch)
    else:
        for name, value in {
            "KEYWORD_API_PROVIDER": "google-ads",
            "GOOGLE_ADS_CLIENT_ID": "client.apps.googleusercontent.com",
            "GOOGLE_ADS_CLIENT_SECRET": "GOCSPX-secret",
            "GOOGLE_ADS_DEVELOPER_TOKEN": "developer-token",
            "GOOGLE_ADS_REFRESH_TOKEN": "1//refresh-token",
            "GOOGLE_ADS_CUSTOMER_ID": "123-456-7890",
        }.items():
            monkeypatch.setenv(name, value)
        config.get_settings.cache_clear()
    who = f"user_{uuid.uuid4().hex[:12]}"
    with dataforseo_upstream() as mock:
        rows = answered_rows(call, who, provider, mock)
    keywords = [row["keyword"] for row in rows]
    body = {
        "name": f"Saved from {provider}",
        "searchParams": {"keywords": keywords, "matchType": "phrase", "location": "US"},
        "results": rows,
    }
    saved = call("searches", "POST", "/api/searches", user=who, json_body=body)
    assert saved.status == 201, saved.text
    assert saved.json["search"]["results"] == rows
    path = f"/api/searches/{saved.json['search']['id']}"
    read = call("search_item", "GET", path, user=who)
    assert read.status == 200 and read.json["search"]["results"] == rows
    assert read.raw.count(b"null") == saved.raw.count(b"null") > 0  # nulls kept, not dropped


VALID_ROW = {"keyword": "k", "searchVolume": 10, "cpc": 1.5, "competition": "low",
             "intent": "informational"}  # fmt: skip
LEFT_OUT = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"searchVolume": -1}, "searchVolume: Input should be greater than or equal to 0"),
        ({"cpc": "1.5"}, "cpc: Input should be a valid number"),
        ({"searchVolume": True}, "searchVolume: Input should be a valid number"),
        ({"competition": "extreme"}, "competition: Input should be 'low', 'medium' or 'high'"),
        (
            {"intent": 3},
            "intent: Input should be 'informational', 'commercial', 'transactional' or "
            "'navigational'",
        ),
        ({"difficulty": 101}, "difficulty: Input should be less than or equal to 100"),
        ({"noData": "yes"}, "noData: Input should be a valid boolean"),
        ({"relevance": 1.5}, "relevance: Input should be a valid integer"),
        (
            {"trends": [{"month": 1, "year": 2026, "volume": -3}]},
            "trends.0.volume: Input should be greater than or equal to 0",
        ),
        ({"cpc": LEFT_OUT}, "cpc: Field required"),
    ],
)
def test_results_still_refuse_what_no_keyword_route_answers(
    call: Caller, change: dict[str, Any], message: str
) -> None:
    row = {key: value for key, value in {**VALID_ROW, **change}.items() if value is not LEFT_OUT}
    body = {**BODY, "results": [row]}
    result = call("searches", "POST", "/api/searches", user="user_a", json_body=body)
    assert (result.status, result.json["error"]) == (400, "Validation Error")
    assert result.json["message"] == f"results.0.{message}"


def test_integral_floats_are_the_integers_json_means(call: Caller) -> None:
    """JSON has one number type: `1.0` is the month 1 to the original (zod's `.int()`), and it
    is stored as the integer."""
    row = {**VALID_ROW, "relevance": 50.0, "trends": [{"month": 1.0, "year": 2026.0, "volume": 3}]}
    result = call("searches", "POST", "/api/searches", user="user_a",
                  json_body={**BODY, "results": [row]})  # fmt: skip
    assert result.status == 201, result.text
    [stored] = result.json["search"]["results"]
    answered = (stored["relevance"], stored["trends"][0]["month"], stored["trends"][0]["year"])
    assert answered == (50, 1, 2026)
    assert all(type(value) is int for value in answered)  # JSON `50`, not `50.0`


def test_absent_optional_keys_are_omitted_not_null(call: Caller) -> None:
    body = {
        "name": "n",
        "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "GB"},
    }
    search = create(call, body=body)
    assert "description" not in search and "results" not in search
    assert set(search["metadata"]) == {"createdAt", "updatedAt"}


def test_list_get_update_delete_roundtrip(call: Caller) -> None:
    first = create(call)
    second = create(call, body={**BODY, "name": "Second"})
    listed = call("searches", "GET", "/api/searches", user="user_a")
    assert listed.status == 200
    summaries = listed.json["searches"]
    assert [s["id"] for s in summaries] == [second["id"], first["id"]]
    assert set(summaries[0]) == {
        "id",
        "name",
        "description",
        "keywordCount",
        "location",
        "metadata",
    }
    assert summaries[0]["keywordCount"] == 2 and summaries[0]["location"] == "US"

    got = call("search_item", "GET", f"/api/searches/{first['id']}", user="user_a")
    assert got.status == 200 and got.json["search"]["id"] == first["id"]

    updated = call(
        "search_item", "PUT", f"/api/searches/{first['id']}", user="user_a",
        json_body={"name": " Renamed ", "description": ""},
    )  # fmt: skip
    assert updated.status == 200
    assert updated.json["search"]["name"] == "Renamed"
    assert updated.json["search"]["description"] == ""

    deleted = call("search_item", "DELETE", f"/api/searches/{first['id']}", user="user_a")
    assert (deleted.status, deleted.json) == (200, {"success": True})
    again = call("search_item", "DELETE", f"/api/searches/{first['id']}", user="user_a")
    assert again.status == 404 and again.json["message"] == "Saved search not found"


def test_other_users_searches_look_missing(call: Caller) -> None:
    mine = create(call, user="user_a")
    path = f"/api/searches/{mine['id']}"
    for method, body in (("GET", None), ("PUT", {"name": "stolen"}), ("DELETE", None)):
        result = call("search_item", method, path, user="user_b", json_body=body)
        assert result.status == 404, method
        assert result.json["message"] == "Saved search not found"
    assert call("searches", "GET", "/api/searches", user="user_b").json == {"searches": []}
    still = call("search_item", "GET", path, user="user_a")
    assert still.json["search"]["name"] == "Running shoes"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**BODY, "name": "   "}, "Name is required"),
        ({**BODY, "name": "x" * 101}, "Name too long (max 100 chars)"),
        ({**BODY, "description": "d" * 501}, "Description too long"),
        (
            {**BODY, "searchParams": {**BODY["searchParams"], "keywords": []}},
            "At least one keyword required",
        ),
        (
            {**BODY, "searchParams": {**BODY["searchParams"], "keywords": ["k"] * 201}},
            "Maximum 200 keywords",
        ),
        (
            {**BODY, "searchParams": {**BODY["searchParams"], "keywords": ["  "]}},
            "Keyword cannot be empty",
        ),
        ({**BODY, "name": "", "description": "d" * 501}, "Name is required, Description too long"),
    ],
)
def test_create_validation_messages(call: Caller, body: dict[str, Any], message: str) -> None:
    result = call("searches", "POST", "/api/searches", user="user_a", json_body=body)
    assert result.status == 400
    assert result.json["error"] == "Validation Error"
    assert result.json["message"] == message
    assert result.json["statusCode"] == 400 and TIMESTAMP.match(result.json["timestamp"])
    assert result.headers["cache-control"] == "no-store, no-cache, must-revalidate"


EMOJI = "\U0001f600"  # one code point, two UTF-16 code units: JS `length` 2


def with_params(**changes: str) -> dict[str, Any]:
    return {**BODY, "searchParams": {**BODY["searchParams"], **changes}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"location": EMOJI}, None),  # 2 units: the shortest location
        ({"location": "a" + EMOJI * 2}, None),  # 5 units
        ({"location": "a"}, "searchParams.location: String should have at least 2 characters"),
        ({"location": EMOJI * 3}, "searchParams.location: String should have at most 5 characters"),
        ({"language": "a" + EMOJI * 17}, None),  # 35 units
        (
            {"language": EMOJI * 18},
            "searchParams.language: String should have at most 35 characters",
        ),
    ],
)
def test_location_and_language_lengths_count_utf16_units(
    call: Caller, changes: dict[str, str], message: str | None
) -> None:
    """Like every other length on the route, as the original's JS `length` (zod) counted."""
    body = with_params(**changes)
    result = call("searches", "POST", "/api/searches", user="user_a", json_body=body)
    if message is not None:
        assert (result.status, result.json["message"]) == (400, message)
        return
    assert result.status == 201, result.text
    saved = result.json["search"]["searchParams"]
    assert {key: saved[key] for key in changes} == changes


def test_the_schema_states_location_and_language_bounds_in_utf16_units() -> None:
    """JSON Schema's `minLength`/`maxLength` count code points, so the OpenAPI document (and the
    TypeScript client made from it) states these bounds in words instead of leaving them out."""
    from functions.searches import app

    def search_params(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("title") == "SearchParams" and "properties" in node:
                yield node
            for child in node.values():
                yield from search_params(child)
        elif isinstance(node, list):
            for child in node:
                yield from search_params(child)

    found = list(search_params(app.openapi()))
    assert found  # the request body and the answers
    for params in found:
        location = params["properties"]["location"]
        language = params["properties"]["language"]["anyOf"][0]
        assert "minLength" not in location and "maxLength" not in language
        assert location["description"].startswith("2 to 5 UTF-16 code units")
        assert language["description"].startswith("0 to 35 UTF-16 code units")


@pytest.mark.parametrize(
    ("body", "message"),
    [({"name": ""}, "Name is required"), ({"name": "n" * 101}, "Name too long")],
)
def test_update_validation_messages(call: Caller, body: dict[str, Any], message: str) -> None:
    search = create(call)
    result = call(
        "search_item", "PUT", f"/api/searches/{search['id']}", user="user_a", json_body=body
    )
    assert (result.status, result.json["message"]) == (400, message)


@pytest.mark.parametrize(
    "bad_id", ["not an id", "x" * 65, "%20", "id%00", "%C3%A9t%C3%A9", "a.b", "id;drop"]
)
def test_malformed_ids_are_refused(call: Caller, bad_id: str) -> None:
    result = call("search_item", "GET", f"/api/searches/{bad_id}", user="user_a")
    assert result.status == 400
    assert result.json["message"] == "Invalid search ID format"


# Ids as the shared table's other writers make them: Prisma's `@default(cuid())` (the schema's
# default), cuid2 (`@default(cuid(2))`), `@default(uuid())`, and the original Redis app's form.
PRISMA_IDS = (
    "clx9f3k2a0000qz8l4h6w2m1b",
    "tz4a98xxat96iws9zmbrgj3a",
    "0b5e7f8e-6c1d-4f0a-9d3b-2a8c7e1f4b6d",
    "1700000000000-abc1234",
)


def test_searches_written_by_the_prisma_client_are_read_changed_and_deleted(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    assert call("me", "GET", "/api/me", user="user_a").status == 200
    for search_id in PRISMA_IDS:  # the columns Prisma writes, with its defaults for the rest
        admin_conn.execute(
            'INSERT INTO saved_searches (id, "userId", name, keywords, "updatedAt")'
            " VALUES (%s, 'user_a', %s, ARRAY['espresso'], now())",
            (search_id, f"prisma {search_id}"),
        )
    listed = call("searches", "GET", "/api/searches", user="user_a").json["searches"]
    assert {row["id"] for row in listed} == set(PRISMA_IDS)
    for search_id in PRISMA_IDS:
        path = f"/api/searches/{search_id}"
        got = call("search_item", "GET", path, user="user_a")
        assert (got.status, got.json["search"]["name"]) == (200, f"prisma {search_id}"), got.text
        assert call("search_item", "GET", path, user="user_b").status == 404  # not theirs
        renamed = call("search_item", "PUT", path, user="user_a", json_body={"name": "renamed"})
        assert (renamed.status, renamed.json["search"]["name"]) == (200, "renamed")
        assert call("search_item", "DELETE", path, user="user_a").status == 200
        gone = call("search_item", "GET", path, user="user_a")
        assert (gone.status, gone.json["message"]) == (404, "Saved search not found")
    assert admin_conn.execute("SELECT count(*) FROM saved_searches").fetchone() == (0,)


def test_legacy_and_uppercase_uuid_ids_are_accepted(call: Caller) -> None:
    for search_id in ("1700000000000-abc1234", "6F9619FF-8B86-4011-B42D-00CF4FC964FF"):
        result = call("search_item", "GET", f"/api/searches/{search_id}", user="user_a")
        assert (result.status, result.json["message"]) == (404, "Saved search not found")


def test_the_fifty_first_search_is_refused_with_the_original_message(api_env: Keys) -> None:
    call = Caller("lambda_v2", api_env)  # one style is enough for a 50-row setup
    body = {
        "name": "n",
        "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"},
    }
    for _ in range(50):
        create(call, body=body)
    result = call("searches", "POST", "/api/searches", user="user_a", json_body=body)
    assert result.status == 400
    assert result.json["error"] == "Client Error"
    assert result.json["message"].startswith(
        "Failed to save search. You may have reached the limit"
    )


BROWSER = {
    "origin": "https://api.keyflash.test",
    "cookie": "csrf-token=tok123",
    "x-csrf-token": "tok123",
}


def test_auth_is_required_before_anything_else(call: Caller) -> None:
    for module, method, path in (
        ("searches", "GET", "/api/searches"),
        ("searches", "POST", "/api/searches"),
        ("search_item", "GET", "/api/searches/not-an-id"),
        ("search_item", "DELETE", "/api/searches/not-an-id"),
    ):
        result = call(
            module,
            method,
            path,
            json_body={"garbage": True} if method == "POST" else None,
            headers=BROWSER,  # passes the CSRF guard, which (as in the original) runs first
        )
        assert result.status == 401, path
        assert result.json["error"] == "Client Error"
        assert result.json["message"] == "Authentication required"


def test_invalid_json_too_large_and_wrong_method(call: Caller) -> None:
    bad = call("searches", "POST", "/api/searches", user="user_a", body="{nope",
               headers={"content-type": "application/json"})  # fmt: skip
    assert (bad.status, bad.json["message"]) == (400, "Invalid JSON payload")
    big = call("searches", "POST", "/api/searches", user="user_a", body="x" * 1_000_001,
               headers={"content-type": "application/json"})  # fmt: skip
    assert big.status == 413
    assert big.json["message"] == "Request body too large. Limit is 976 KB."
    assert "1000001" not in str(big.headers.values())
    wrong = call("searches", "PATCH", "/api/searches", user="user_a")
    assert wrong.status == 405
    assert wrong.json["supportedMethods"] == ["GET", "POST"]
    assert wrong.json["error"] == "Method Not Allowed"


def test_a_usage_row_is_written_per_request_with_reduced_ip(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    call("searches", "GET", "/api/searches", user="user_a")
    rows = admin_conn.execute(
        'SELECT endpoint, method, "statusCode", "userId", "ipAddress", "userAgent" FROM api_usage'
    ).fetchall()
    assert len(rows) == 1
    endpoint, method, status, user_id, ip, agent = rows[0]
    assert (endpoint, method, status, user_id, agent) == (
        "/api/searches",
        "GET",
        200,
        "user_a",
        "pytest-agent/1.0",
    )
    assert ip in {"203.0.113.0", "127.0.0.0", None}  # /24 of the event's or test client's peer


def test_usage_rows_hold_the_route_template_also_for_answers_given_before_routing(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """docs/http-contract.md "Usage": the route template, never the concrete path. A preflight,
    a CSRF refusal or a 413 is answered by a guard before FastAPI routes the request, and
    their rows held `/api/searches/<id>`: ids in a table anyone could fill anonymously."""
    path = f"/api/searches/{uuid.uuid4()}"
    call("search_item", "GET", path, user="user_a")
    preflight = {"origin": "https://evil.example", "access-control-request-method": "PUT"}
    call("search_item", "OPTIONS", path, headers=preflight)
    session = {"cookie": f"__session={call.token('user_a')}"}
    assert call("search_item", "PUT", path, json_body={}, headers=session).status == 403
    big = call("search_item", "PUT", path, user="user_a", body="x" * 1_000_001)
    assert big.status == 413
    rows = admin_conn.execute('SELECT method, endpoint, "statusCode" FROM api_usage').fetchall()
    assert sorted(rows) == [
        ("GET", "/api/searches/{search_id}", 404),
        ("OPTIONS", "/api/searches/{search_id}", 200),
        ("PUT", "/api/searches/{search_id}", 403),
        ("PUT", "/api/searches/{search_id}", 413),
    ]


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "x-xss-protection": "1; mode=block",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


def test_security_headers_and_hsts_only_in_production(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original's headers on every answer, successes and envelopes alike; its CSP, written
    for pages, is the one a JSON answer needs: nothing may load or frame it."""
    from shared import config

    result = call("searches", "GET", "/api/searches", user="user_a")
    refused = call("searches", "GET", "/api/searches")
    assert refused.status == 401
    for answer in (result, refused):
        assert {name: answer.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert "strict-transport-security" not in result.headers
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("RATE_LIMIT_HMAC_SECRET", "h" * 32)
    config.get_settings.cache_clear()
    result = call("searches", "GET", "/api/searches", user="user_a")
    assert result.headers["strict-transport-security"].startswith("max-age=31536000")


def test_create_after_another_container_erased_the_user_provisions_again(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    create(call, user="user_gone")  # this container now remembers user_gone as provisioned
    admin_conn.execute("DELETE FROM users WHERE id = %s", ("user_gone",))  # erased elsewhere
    again = create(call, user="user_gone")
    assert again["clerkUserId"] == "user_gone"
    assert admin_conn.execute("SELECT count(*) FROM users WHERE id = 'user_gone'").fetchone() == (
        1,
    )


def test_an_integer_is_kept_exact_up_to_4300_digits_and_refused_past_it(call: Caller) -> None:
    """Integers are taken as sent, digit for digit, as far as Python reads one (4,300 digits),
    even past a double's range (JS reads that as Infinity: the client's reading, not ours to
    change); a longer one is invalid JSON, never a 500."""
    exact, past_a_double, too_long = str(2**53 + 1), "1" + "0" * 400, "1" + "0" * 4300
    for volume, status in ((exact, 201), (past_a_double, 201), (too_long, 400)):
        row = {**VALID_ROW, "searchVolume": "VOLUME"}
        text = json.dumps({**BODY, "results": [row]}).replace('"VOLUME"', volume)
        result = call("searches", "POST", "/api/searches", user="user_a", body=text)
        assert result.status == status, result.text[:200]
        if status == 400:
            assert result.json["message"] == "Invalid JSON payload"
            continue
        path = f"/api/searches/{result.json['search']['id']}"
        served = call("search_item", "GET", path, user="user_a")
        assert f'"searchVolume":{volume}' in served.text.replace(" ", "")
