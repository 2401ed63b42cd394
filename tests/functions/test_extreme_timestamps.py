"""Rows another writer dated past what Python's datetime holds (`infinity`, year 10000, BC,
`-infinity`: the column takes them, from psql or raw SQL, and from the Prisma app past year
9999, as a JS Date reaches year 275760) answer clamped to 9999-12-31T23:59:59.999Z /
0001-01-01T00:00:00.000Z on every route that returns them, never a 500. Rows inserted in SQL,
read through HTTP, both lanes."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.support.http import Caller

LATEST = "9999-12-31T23:59:59.999Z"
EARLIEST = "0001-01-01T00:00:00.000Z"
# What the server stores → what the routes answer.
EXTREMES = {
    "infinity": LATEST,
    "10000-01-01 00:00:00": LATEST,
    "9999-12-31 23:59:59.999": LATEST,  # the largest a TIMESTAMP(3) in range holds: as it is
    "0001-12-31 19:00:00 BC": EARLIEST,  # JS `new Date('0001-01-01T00:00:00+05:00')`
    "-infinity": EARLIEST,
}


@pytest.fixture
def user_a(admin_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    admin_conn.execute(
        """INSERT INTO users (id, email, "createdAt", "updatedAt")
           VALUES ('user_a', 'a@example.com', now(), now())"""
    )
    return admin_conn


def add_history(conn: psycopg.Connection[Any], row_id: str, searched_at: str) -> None:
    conn.execute(
        """INSERT INTO search_history (id, "userId", keywords, location, language, "matchType",
                                       provider, "responseTime", "keywordCount", "searchedAt")
           VALUES (%s, 'user_a', ARRAY['p'], 'US', 'en', 'phrase', 'mock', 1, 1, %s)""",
        (row_id, searched_at),
    )


def test_history_answers_every_row_clamped(call: Caller, user_a: psycopg.Connection[Any]) -> None:
    for n, stored in enumerate(EXTREMES):
        add_history(user_a, f"x{n}", stored)
    add_history(user_a, "normal", "2026-12-06 10:00:00.123")
    result = call("history", "GET", "/api/history", user="user_a", query={"limit": "100"})
    assert result.status == 200, result.text
    answered = {item["id"]: item["searchedAt"] for item in result.json["history"]}
    expected = {f"x{n}": shown for n, shown in enumerate(EXTREMES.values())}
    assert answered == {**expected, "normal": "2026-12-06T10:00:00.123Z"}


def test_history_pages_walk_rows_past_the_range_in_order_once(
    call: Caller, user_a: psycopg.Connection[Any]
) -> None:
    # Newest first by the stored time: several rows load as one bound, and a page may end at
    # any of them; the next page goes on from that row's own time.
    stored = [
        ("b", "infinity"), ("a", "infinity"), ("c", "20000-01-01 00:00:00"),
        ("d", "10000-01-01 00:00:00"), ("e", "9999-12-31 23:59:59.999"),
        ("f", "2026-12-06 10:00:00.123"), ("g", "0001-01-01 00:00:00"),
        ("h", "0001-12-31 19:00:00 BC"), ("i", "0044-03-15 00:00:00 BC"), ("k", "-infinity"),
        ("j", "-infinity"),
    ]  # fmt: skip
    for row_id, searched_at in stored:
        add_history(user_a, row_id, searched_at)
    for limit in ("1", "2", "3"):
        seen: list[str] = []
        query = {"limit": limit}
        for _ in range(len(stored)):
            result = call("history", "GET", "/api/history", user="user_a", query=query)
            assert result.status == 200, result.text
            seen += [item["id"] for item in result.json["history"]]
            if "nextCursor" not in result.json:
                break
            query = {"limit": limit, "cursor": result.json["nextCursor"]}
        assert seen == [row_id for row_id, _ in stored], limit


def test_saved_searches_and_me_answer_their_dates_clamped(
    call: Caller, user_a: psycopg.Connection[Any]
) -> None:
    user_a.execute(
        """UPDATE users SET tier = 'PRO', "subscriptionStatus" = 'active',
                  "subscriptionEndsAt" = '10000-06-01', "createdAt" = '-infinity'
            WHERE id = 'user_a'"""
    )
    user_a.execute(
        """INSERT INTO saved_searches (id, "userId", name, keywords, "createdAt",
                                       "updatedAt", "lastAccessedAt", "lastRunAt")
           VALUES ('00000000-0000-4000-8000-000000000001', 'user_a', 'far', ARRAY['p'],
                   '0044-03-15 00:00:00 BC', 'infinity', 'infinity', '-infinity')"""
    )
    me = call("me", "GET", "/api/me", user="user_a")
    assert me.status == 200, me.text
    assert me.json["subscription"]["endsAt"] == LATEST
    listed = call("searches", "GET", "/api/searches", user="user_a")
    assert listed.status == 200, listed.text
    (search,) = listed.json["searches"]
    assert (search["metadata"]["createdAt"], search["metadata"]["updatedAt"]) == (EARLIEST, LATEST)
    one = call("search_item", "GET", f"/api/searches/{search['id']}", user="user_a")
    assert one.status == 200, one.text
    assert one.json["search"]["metadata"]["lastRunAt"] == EARLIEST


def test_the_export_answers_the_dates_clamped(
    call: Caller, user_a: psycopg.Connection[Any]
) -> None:
    user_a.execute(
        """UPDATE users SET "createdAt" = '-infinity', "updatedAt" = 'infinity'
            WHERE id = 'user_a'"""
    )
    add_history(user_a, "far", "infinity")
    result = call("me_export", "GET", "/api/me/export", user="user_a",
                  headers={"accept-encoding": "identity"})  # fmt: skip
    assert result.status == 200, result.text
    document = json.loads(result.text)
    assert document["user"]["createdAt"] == EARLIEST
    assert document["user"]["updatedAt"] == LATEST
    assert [row["searchedAt"] for row in document["searchHistory"]] == [LATEST]
