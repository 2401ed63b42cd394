"""/api/history (keyset pages, opaque cursor) and /api/history/stats, three styles, both lanes."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import text

from shared import db
from shared.clock import utcnow
from shared.contracts.paging import encode_cursor
from shared.repositories import partitions, search_history, users
from tests.support.http import Caller

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ITEM_KEYS = {
    "id", "keywords", "location", "language", "matchType", "provider", "cacheHit",
    "responseTime", "keywordCount", "avgVolume", "totalVolume", "searchedAt",
}  # fmt: skip


def seed(
    user_id: str,
    count: int,
    *,
    start: datetime | None = None,
    step: timedelta = timedelta(minutes=1),
    provider: str = "mock",
    cache_hit: bool = False,
    response_time: int = 100,
) -> list[str]:
    """`count` searches by `user_id`, one per `step` going back from `start`; ids newest first."""
    db.run(lambda conn: users.get_or_create(conn, user_id, f"{user_id}@example.com"))
    start = start or utcnow()
    ids = []
    for i in range(count):
        search = search_history.NewSearch(
            user_id=user_id, keywords=[f"kw {i}", "other"], location="US", language="en",
            match_type="phrase", provider=provider, cache_hit=cache_hit,
            response_time=response_time, avg_volume=10, total_volume=20,
            user_agent="Secret-Agent/1", ip_address="198.51.100.0",
        )  # fmt: skip
        at = start - step * i
        ids.append(db.run(partial(search_history.record, search=search, now=at)))
    return ids


def page(call: Caller, user: str = "user_a", **query: str) -> dict[str, Any]:
    result = call("history", "GET", "/api/history", user=user, query=query or None)
    assert result.status == 200, result.text
    body: dict[str, Any] = result.json
    return body


# --- /api/history -----------------------------------------------------------------------------


def test_pages_walk_the_whole_history_newest_first_without_gaps_or_repeats(call: Caller) -> None:
    newest_first = seed("user_a", 23)
    # Two searches in the same millisecond: the id breaks the tie, across a page boundary too.
    tied_at = utcnow() - timedelta(hours=1)
    tied = sorted(
        (seed("user_a", 1, start=tied_at)[0], seed("user_a", 1, start=tied_at)[0]), reverse=True
    )
    seed("user_b", 3)
    expected = newest_first + tied
    seen: list[str] = []
    cursor: str | None = None
    sizes = []
    while True:
        body = page(call, limit="10", **({"cursor": cursor} if cursor else {}))
        sizes.append(len(body["history"]))
        seen += [item["id"] for item in body["history"]]
        cursor = body.get("nextCursor")
        if cursor is None:
            assert set(body) == {"history"}  # omitted, not null, on the last page
            break
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)  # URL-safe, no padding
    assert sizes == [10, 10, 5]
    assert seen == expected


def test_pages_across_a_partition_boundary_walk_ties_of_mixed_ids_once(call: Caller) -> None:
    """Ties on the very first millisecond of a range and the last one of the partition before
    it, with ids of every form writers use (cuid, cuid2, UUID, the Prisma client's own), some
    written with microseconds (the column keeps milliseconds, rounding): pages of 2 give each
    row once, in the database's own order."""
    seed("user_a", 0)
    layout = partitions.LAYOUTS["search_history"]
    boundary = next(p.upper for p in db.run(partial(partitions.partitions_of, layout=layout)))
    assert boundary is not None
    ms = timedelta(milliseconds=1)
    rows = {
        "clx0a1b2c3d4e5f6g7h8i9j0k": boundary,
        "tz4a98xxat96iws9zmbrgj3a": boundary,
        "0b8f2c2e-6a1d-4c4b-9f3e-2d1c0b9a8f7e": boundary,
        "Zq-upper_Case": boundary - timedelta(microseconds=400),  # stored as the boundary
        "a0b8f2c2-6a1d-4c4b-9f3e-2d1c0b9a8f7e": boundary - ms,
        "clx0a1b2c3d4e5f6g7h8i9j0l": boundary - timedelta(microseconds=600),  # boundary - 1 ms
        "m-later": boundary + ms,
        "m-earlier": boundary - 2 * ms,
    }
    for row_id, at in rows.items():
        db.run(
            lambda s, row_id=row_id, at=at: s.session.execute(
                text(
                    'INSERT INTO search_history (id, "userId", keywords, location, language, '
                    '"matchType", provider, "responseTime", "searchedAt") VALUES (:id, '
                    "'user_a', ARRAY['kw'], 'US', 'en', 'broad', 'mock', 1, :at)"
                ),
                {"id": row_id, "at": at},
            )
        )
    expected = db.run(
        lambda s: s.session.scalars(
            text(
                "SELECT id FROM search_history WHERE \"userId\" = 'user_a' "
                'ORDER BY "searchedAt" DESC, id DESC'
            )
        ).all()
    )
    seen: list[str] = []
    cursor: str | None = None
    while True:
        body = page(call, limit="2", **({"cursor": cursor} if cursor else {}))
        seen += [item["id"] for item in body["history"]]
        cursor = body.get("nextCursor")
        if cursor is None:
            break
    assert seen == expected and set(seen) == set(rows)


def test_default_page_is_20_and_items_never_show_ip_or_user_agent(call: Caller) -> None:
    seed("user_a", 21)
    body = page(call)
    assert len(body["history"]) == 20 and "nextCursor" in body
    item = body["history"][0]
    assert set(item) == ITEM_KEYS
    assert item["keywords"] == ["kw 0", "other"] and item["keywordCount"] == 2
    assert (item["matchType"], item["provider"], item["cacheHit"]) == ("phrase", "mock", False)
    assert (item["responseTime"], item["avgVolume"], item["totalVolume"]) == (100, 10, 20)
    assert TIMESTAMP.match(item["searchedAt"])
    result = call("history", "GET", "/api/history", user="user_a")
    assert "Secret-Agent" not in result.text and "198.51.100" not in result.text


def test_an_empty_history_is_an_empty_list(call: Caller) -> None:
    assert page(call) == {"history": []}


def test_users_only_ever_see_their_own_history(call: Caller) -> None:
    seed("user_a", 5)
    mine = seed("user_b", 2)
    assert [item["id"] for item in page(call, user="user_b")["history"]] == mine
    # A cursor from user_a's pages grants nothing: it only positions user_b's own list.
    cursor = page(call, limit="1")["nextCursor"]
    other = page(call, user="user_b", cursor=cursor)["history"]
    assert {item["id"] for item in other} <= set(mine)


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1", "1.5", "", " ", "1e2", "٣"])
def test_bad_limits_are_refused(call: Caller, limit: str) -> None:
    result = call("history", "GET", "/api/history", user="user_a", query={"limit": limit})
    assert result.status == 400
    assert result.json["error"] == "Validation Error"
    assert result.json["message"] == "limit must be a whole number from 1 to 100"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _tampered() -> str:
    """A real cursor with its first character changed (it encodes the JSON's opening `[`).

    A change that still decodes to a well-formed keyset is accepted by design: the cursor carries
    no authority, it only positions the caller's own list."""
    valid = encode_cursor((datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC), "cabc123"))
    return ("A" if valid[0] != "A" else "B") + valid[1:]


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "x" * 201,
        _b64(b"not json"),
        _b64(json.dumps({"t": "2026-01-01T00:00:00.000Z", "id": "c1"}).encode()),
        _b64(json.dumps(["2026-01-01T00:00:00.000Z"]).encode()),
        _b64(json.dumps(["2026-01-01 00:00:00", "c1"]).encode()),
        _b64(json.dumps(["2026-13-01T00:00:00.000Z", "c1"]).encode()),
        _b64(json.dumps(["2026-01-01T00:00:00.000Z", "c1; DROP TABLE"]).encode()),
        _b64(json.dumps(["2026-01-01T00:00:00.000Z", 7]).encode()),
        _b64(b"\xff\xfe"),
        _b64(b"[" * 3000),  # nested past the JSON decoder's recursion limit: was a 500
        encode_cursor((datetime(2026, 1, 1, tzinfo=UTC), "c1")) + "==",  # not canonical
        _tampered(),
    ],
)
def test_malformed_or_tampered_cursors_are_refused(call: Caller, cursor: str) -> None:
    result = call("history", "GET", "/api/history", user="user_a", query={"cursor": cursor})
    assert (result.status, result.json["message"]) == (400, "Invalid cursor")


@pytest.mark.parametrize(
    "keyset",
    [
        (datetime(1, 1, 1, tzinfo=UTC), "a"),
        (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC), "z" * 64),
        (datetime(2028, 2, 29, 23, 59, 59, 999000, tzinfo=UTC), "-_-"),
    ],
)
def test_a_well_formed_cursor_at_any_time_only_positions_the_page(
    call: Caller, keyset: tuple[datetime, str]
) -> None:
    """A client may forge a canonical cursor at the ends of time: it positions the page, it
    never fails."""
    seed("user_a", 2, start=datetime(2028, 2, 29, 12, tzinfo=UTC))
    body = page(call, cursor=encode_cursor(keyset))
    expected = 0 if keyset[0].year == 1 else 2
    assert len(body["history"]) == expected and "nextCursor" not in body


def test_history_requires_auth(call: Caller) -> None:
    for module, path in (("history", "/api/history"), ("history_stats", "/api/history/stats")):
        result = call(module, "GET", path, query={"limit": "0", "days": "0"})
        assert (result.status, result.json["message"]) == (401, "Authentication required")


# --- /api/history/stats -----------------------------------------------------------------------


def test_stats_cover_the_window_per_provider(call: Caller) -> None:
    now = utcnow()
    seed("user_a", 3, provider="mock", cache_hit=True, response_time=10)
    seed("user_a", 1, provider="dataforseo", response_time=400)
    seed("user_a", 1, provider="dataforseo", response_time=201, cache_hit=True)
    seed("user_a", 2, start=now - timedelta(days=40), provider="google-ads")  # outside 30 days
    seed("user_b", 4, provider="mock", response_time=999)
    result = call("history_stats", "GET", "/api/history/stats", user="user_a")
    assert result.status == 200, result.text
    body = result.json
    assert TIMESTAMP.match(body["since"]) and TIMESTAMP.match(body["until"])
    since = datetime.strptime(body["since"], "%Y-%m-%dT%H:%M:%S.%fZ")
    until = datetime.strptime(body["until"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert until - since == timedelta(days=30)
    assert body["searches"] == 5
    assert body["avgResponseTime"] == round((30 + 400 + 201) / 5, 1)
    assert body["cacheHitRate"] == 0.8
    assert body["providers"] == {
        "dataforseo": {"searches": 2, "avgResponseTime": 300.5, "cacheHitRate": 0.5},
        "mock": {"searches": 3, "avgResponseTime": 10.0, "cacheHitRate": 1.0},
    }
    year = call("history_stats", "GET", "/api/history/stats", user="user_a", query={"days": "365"})
    assert year.json["searches"] == 7 and set(year.json["providers"]) == {
        "dataforseo",
        "google-ads",
        "mock",
    }


def test_stats_without_searches_omit_the_averages(call: Caller) -> None:
    result = call("history_stats", "GET", "/api/history/stats", user="user_a", query={"days": "1"})
    assert result.status == 200
    assert set(result.json) == {"since", "until", "searches", "providers"}
    assert (result.json["searches"], result.json["providers"]) == (0, {})


@pytest.mark.parametrize("days", ["0", "366", "x", "-3", "7.5", ""])
def test_bad_days_are_refused(call: Caller, days: str) -> None:
    result = call("history_stats", "GET", "/api/history/stats", user="user_a", query={"days": days})
    assert result.status == 400
    assert result.json["message"] == "days must be a whole number from 1 to 365"
