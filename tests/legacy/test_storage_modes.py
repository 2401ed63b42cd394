"""STORAGE_MODE (shared.storage): each phase's read and write paths through the real functions.

Redis is the Upstash emulator, driven by the real SDK on both sides (the functions and these
assertions); Postgres is the lane's real database. Failures are real: Redis is pointed at a
closed port, Postgres at a closed port, never mocked. User ids are unique per test because the
emulator's Redis is shared by the session and never flushed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from upstash_redis import Redis

from devkit._host import free_port
from devkit.upstash_emulator import UpstashEmulator
from shared.clock import iso_ms, utcnow
from shared.legacy import keys
from shared.legacy.schemas import LegacyRecordError, parse_saved_search, parse_user
from tests.support.http import Caller, Keys
from tests.support.legacy import (
    Writer,
    keyword_result,
    search_record,
    user_record,
    write_search,
    write_user,
)
from tests.support.processes import ROOT, fresh_interpreter

BODY = {
    "name": "Trail running",
    "description": "Q3",
    "searchParams": {"keywords": ["trail shoes"], "matchType": "exact", "location": "US"},
    "results": [keyword_result("trail shoes", 1200)],
}


class Stores:
    """Switch the mode, break and restore the stores, and look inside them."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        upstash: UpstashEmulator,
        lane_url: str,
        direct_url: str,
    ) -> None:
        self.monkeypatch = monkeypatch
        self.upstash = upstash
        self.lane_url = lane_url
        self.direct_url = direct_url
        self.redis = Redis(url=upstash.url, token=upstash.token)

    def _reload(self) -> None:
        from shared import db, redis
        from shared.config import get_settings

        get_settings.cache_clear()
        db.dispose_engine()
        redis.reset_redis()

    def mode(self, mode: str) -> None:
        self.monkeypatch.setenv("STORAGE_MODE", mode)
        self._reload()

    def break_redis(self) -> None:
        self.monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
        self._reload()

    def restore_redis(self) -> None:
        self.monkeypatch.setenv("UPSTASH_REDIS_REST_URL", self.upstash.url)
        self._reload()

    def break_postgres(self) -> None:
        self.monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
        self.monkeypatch.setenv("DB_RETRY_BUDGET_S", "0.3")
        self._reload()

    def restore_postgres(self) -> None:
        self.monkeypatch.setenv("DATABASE_URL", self.lane_url)
        self._reload()

    def item(self, uid: str, sid: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.saved_search(uid, sid))
        return None if raw is None else dict(json.loads(raw))

    def index(self, uid: str) -> set[str]:
        return set(self.redis.smembers(keys.saved_searches(uid)))

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.direct_url, autocommit=True) as conn:
            cursor = conn.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def repairs(self) -> list[tuple[Any, ...]]:
        return self.sql("SELECT key, kind, attempts, error FROM legacy_repairs ORDER BY key")


@pytest.fixture
def stores(
    api_env: Keys,
    db_env: str,
    direct_database_url: str,
    upstash: UpstashEmulator,
    admin_conn: psycopg.Connection[Any],  # empties the tables after the test
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stores]:
    yield Stores(monkeypatch, upstash, db_env, direct_database_url)


@pytest.fixture
def one(api_env: Keys) -> Caller:
    """One invocation style for the failure tests (the paths below the handler are the same)."""
    return Caller("lambda_v2", api_env)


def new_user() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def create(call: Caller, uid: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    result = call("searches", "POST", "/api/searches", user=uid, json_body=body or BODY)
    assert result.status == 201, result.text
    search: dict[str, Any] = result.json["search"]
    return search


def seed_legacy_user(stores: Stores, uid: str, *, searches: int = 0, **options: Any) -> list[str]:
    """A user (and searches) only the TypeScript app knows: in Redis, not in Postgres."""
    created = utcnow() - timedelta(days=2)
    w = Writer(stores.redis)
    write_user(w, user_record(uid, f"{uid}@example.com", created=created, **options))
    ids = [str(uuid.uuid4()) for _ in range(searches)]
    for n, sid in enumerate(ids):
        write_search(w, search_record(uid, sid, created=created, name=f"Legacy {n}"))
    w.flush()
    return ids


# --- the read and write paths of each mode ------------------------------------------------------


def test_dual_writes_both_stores_and_reads_redis(call: Caller, stores: Stores) -> None:
    stores.mode("dual")
    uid = new_user()
    search = create(call, uid)
    sid = search["id"]

    # Written in the original layout, readable by the original's schemas (the TS app's view).
    stored = stores.item(uid, sid)
    assert stored == search
    parse_saved_search(keys.saved_search(uid, sid), json.dumps(stored), original_rules=True)
    assert stores.index(uid) == {sid}
    user_raw = stores.redis.get(keys.user(uid))
    assert user_raw is not None
    assert parse_user(keys.user(uid), user_raw).tier == "trial"
    assert stores.redis.get(keys.email(f"{uid}@keyflash.local")) == uid
    assert stores.sql("SELECT name FROM saved_searches WHERE id = %s", sid) == [("Trail running",)]
    assert stores.repairs() == []

    # Reads come from Redis: a change made there (by the TypeScript app) is what we serve.
    stores.redis.set(keys.saved_search(uid, sid), json.dumps({**search, "name": "Renamed in TS"}))
    got = call("search_item", "GET", f"/api/searches/{sid}", user=uid)
    assert (got.status, got.json["search"]["name"]) == (200, "Renamed in TS")
    listed = call("searches", "GET", "/api/searches", user=uid)
    assert [s["name"] for s in listed.json["searches"]] == ["Renamed in TS"]

    updated = call(
        "search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "New"}
    )
    assert updated.status == 200
    assert updated.json["search"]["name"] == "New"
    assert stores.item(uid, sid) == updated.json["search"]
    assert stores.sql("SELECT name FROM saved_searches WHERE id = %s", sid) == [("New",)]

    deleted = call("search_item", "DELETE", f"/api/searches/{sid}", user=uid)
    assert (deleted.status, deleted.json) == (200, {"success": True})
    assert stores.item(uid, sid) is None and stores.index(uid) == set()
    assert stores.sql("SELECT id FROM saved_searches") == []
    assert stores.repairs() == []


def test_postgres_mode_leaves_the_legacy_layout_alone(one: Caller, stores: Stores) -> None:
    uid = new_user()
    sid = create(one, uid)["id"]
    assert stores.redis.get(keys.user(uid)) is None
    assert stores.item(uid, sid) is None and stores.index(uid) == set()
    assert stores.sql("SELECT id FROM saved_searches") == [(sid,)]


POSTGRES_MODE_SCRIPT = r"""
import json, sys
from shared import storage
from shared.quotas import Limits
from shared.repositories.saved_searches import NewSavedSearch

uid = sys.argv[1]
if sys.argv[2] == "returning":  # signed in before: a row, so no legacy lookup
    from shared import db
    from shared.repositories import users
    db.run(lambda conn: users.get_or_create(conn, uid, f"{uid}@example.com"), idempotent=True)
storage.provision_user(uid, f"{uid}@example.com")
storage.usage(uid, Limits(300, 1000, 10_000))
new = NewSavedSearch("Trail", ["trail shoes"], "US", "en", "exact")
sid = storage.create_search(uid, new).id
storage.update_search(uid, sid, name="Trails", description=None)
assert [s.id for s in storage.list_searches(uid)] == [sid]
assert storage.get_search(uid, sid).name == "Trails"
assert storage.delete_search(uid, sid)
storage.mirror_user(uid)
storage.mirror_usage(uid)
loaded = [m for m in sys.modules if m.split(".")[0] in ("upstash_redis", "httpx")]
print("@@" + json.dumps(sorted(loaded + [m for m in sys.modules if m.startswith("shared.legacy")])))
"""


def test_postgres_mode_loads_no_legacy_layer(db_env: str, clean_tables: None) -> None:
    """The switch's postgres path (every request's sign-in, usage and saved searches) runs in a
    fresh interpreter without importing the legacy bridge, its schemas or the Upstash SDK, with
    Redis configured: a function pays for them only in the migration's modes (or at a user's
    very first sign-in, to reattach them if Redis holds their legacy record, or to erase
    one's keys). That first sign-in, with Redis down, still provisions them."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STORAGE_MODE": "postgres",
        "UPSTASH_REDIS_REST_URL": f"http://127.0.0.1:{free_port()}",  # never called
        "UPSTASH_REDIS_REST_TOKEN": "unused",
    }
    assert fresh_interpreter(POSTGRES_MODE_SCRIPT, new_user(), "returning", env=env) == []
    first = fresh_interpreter(POSTGRES_MODE_SCRIPT, new_user(), "first", env=env)
    assert "shared.legacy.bridge" in first  # looked up (Redis down: provisioned as new)


def test_dual_serves_and_imports_what_only_the_typescript_app_wrote(
    one: Caller, stores: Stores
) -> None:
    stores.mode("dual")
    uid = new_user()
    kept, dropped = seed_legacy_user(stores, uid, searches=2, tier="pro", customer="cus_" + uid)
    stores.redis.set(keys.usage(uid, utcnow()), "412")

    listed = one("searches", "GET", "/api/searches", user=uid)
    assert listed.status == 200
    assert {s["id"] for s in listed.json["searches"]} == {kept, dropped}
    # Signing in imported the user with the real counter; reading imported no searches.
    assert stores.sql(
        'SELECT tier::text, "keywordSearchesThisMonth", "stripeCustomerId" FROM users'
    ) == [("PRO", 412, "cus_" + uid)]
    assert stores.sql("SELECT id FROM saved_searches") == []

    renamed = one("search_item", "PUT", f"/api/searches/{kept}", user=uid, json_body={"name": "R"})
    assert (renamed.status, renamed.json["search"]["name"]) == (200, "R")
    assert stores.sql("SELECT id, name FROM saved_searches") == [(kept, "R")]
    assert stores.item(uid, kept) == renamed.json["search"]

    gone = one("search_item", "DELETE", f"/api/searches/{dropped}", user=uid)
    assert gone.status == 200
    assert stores.item(uid, dropped) is None and stores.index(uid) == {kept}
    again = one("search_item", "DELETE", f"/api/searches/{dropped}", user=uid)
    assert again.status == 404
    assert stores.repairs() == []


def test_the_dual_list_shows_the_items_the_original_list_showed(
    one: Caller, stores: Stores
) -> None:
    stores.mode("dual")
    uid = new_user()
    [plain] = seed_legacy_user(stores, uid, searches=1)
    created = utcnow() - timedelta(days=1)
    long_name, half_emoji = str(uuid.uuid4()), str(uuid.uuid4())
    for sid, name in ((long_name, "🔥" * 51), (half_emoji, "trail \ud83d")):
        record = search_record(uid, sid, created=created, name=name)
        # As JSON.stringify writes it: the unpaired surrogate as an escape.
        stores.redis.set(keys.saved_search(uid, sid), json.dumps(record, ensure_ascii=True))
        stores.redis.sadd(keys.saved_searches(uid), sid)
    stores.redis.set(keys.saved_search(uid, "broken"), "{")  # not even JSON: still skipped
    stores.redis.sadd(keys.saved_searches(uid), "broken")

    listed = one("searches", "GET", "/api/searches", user=uid)

    assert listed.status == 200, listed.text
    names = {s["id"]: s["name"] for s in listed.json["searches"]}
    assert names == {plain: "Legacy 0", long_name: "🔥" * 51, half_emoji: "trail \ufffd"}


@pytest.mark.parametrize("mode", ["dual", "fallback"])
def test_half_an_emoji_reads_as_u_fffd_in_the_item_as_in_the_list(
    one: Caller, stores: Stores, mode: str
) -> None:
    """JS cut an emoji in half (`"🚀🚀🚀".slice(0, 5)`) in every free-text string of a
    search: the original served it, a UTF-8 response cannot carry it. The item shows each
    unpaired surrogate as U+FFFD, as the list does, never a 500."""
    stores.mode(mode)
    uid = new_user()
    [sid] = seed_legacy_user(stores, uid, searches=1)
    created = utcnow() - timedelta(days=1)

    def written(text: str) -> dict[str, Any]:
        record = search_record(
            uid, sid, created=created, name=text, description=text, keywords=[text, "trail"],
            results=[keyword_result(text, 10)],
        )  # fmt: skip
        record["searchParams"] |= {"location": text, "language": text}
        return record

    half, shown = "🚀🚀\ud83d", "🚀🚀\ufffd"
    stores.redis.set(keys.saved_search(uid, sid), json.dumps(written(half)))

    got = one("search_item", "GET", f"/api/searches/{sid}", user=uid)
    listed = one("searches", "GET", "/api/searches", user=uid)

    assert got.status == 200, got.text
    assert got.json["search"] == written(shown)
    assert listed.status == 200, listed.text
    [item] = listed.json["searches"]
    assert (item["name"], item["description"], item["location"]) == (shown, shown, shown)


@pytest.mark.parametrize("mode", ["dual", "fallback"])
@pytest.mark.parametrize(
    ("field", "text"),
    [("description", "Trail\x00 shoes"), ("keyword", "trail\x00"), ("keyword", "trail \ud83d")],
    ids=["nul-description", "nul-result", "surrogate-result"],
)
def test_renaming_a_legacy_search_postgres_cannot_hold_is_a_409_that_changes_nothing(
    one: Caller, stores: Stores, mode: str, field: str, text: str
) -> None:
    """The TypeScript app stored text with a NUL or half an emoji (JS strings hold both;
    Postgres text and jsonb cannot). Importing it to rename it would fail: the rename is
    refused with a clear 409, and the record stays as it was, in Redis only."""
    stores.mode(mode)
    uid = new_user()
    [sid] = seed_legacy_user(stores, uid, searches=1)
    record = stores.item(uid, sid) or {}
    if field == "description":
        record["description"] = text
    else:
        record["results"] = [keyword_result(text, 10)]
    stores.redis.set(keys.saved_search(uid, sid), json.dumps(record))

    renamed = one("search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "R"})
    assert renamed.status == 409, renamed.text
    assert renamed.json["message"] == (
        "This saved search holds text the database cannot store; delete it and save it again"
    )
    assert stores.item(uid, sid) == record
    assert stores.sql("SELECT id FROM saved_searches") == []
    assert stores.repairs() == []
    deleted = one("search_item", "DELETE", f"/api/searches/{sid}", user=uid)
    assert deleted.status == 200
    assert stores.item(uid, sid) is None and stores.index(uid) == set()


def test_fallback_reads_postgres_when_redis_misses_fails_or_cannot_read(
    one: Caller, stores: Stores
) -> None:
    stores.mode("fallback")
    uid = new_user()
    sid = create(one, uid)["id"]
    path = f"/api/searches/{sid}"
    assert stores.item(uid, sid) is not None  # fallback keeps writing Redis

    stores.redis.delete(keys.saved_search(uid, sid))  # expired, say
    assert one("search_item", "GET", path, user=uid).json["search"]["name"] == "Trail running"

    stores.redis.set(keys.saved_search(uid, sid), "{not json")
    assert one("search_item", "GET", path, user=uid).json["search"]["name"] == "Trail running"

    stores.redis.delete(keys.saved_searches(uid))
    listed = one("searches", "GET", "/api/searches", user=uid)
    assert [s["id"] for s in listed.json["searches"]] == [sid]

    stores.break_redis()
    assert one("search_item", "GET", path, user=uid).status == 200
    assert [
        s["id"] for s in one("searches", "GET", "/api/searches", user=uid).json["searches"]
    ] == [sid]


def test_fallback_never_serves_a_state_older_than_an_owed_copy(one: Caller, stores: Stores) -> None:
    """Redis comes back from an outage with what it held before (persisted, as Upstash
    keeps it) while the renames and deletes made meanwhile are still owed to it: what Postgres
    committed is served, a deleted search stays deleted, and renaming it imports nothing."""
    stores.mode("fallback")
    uid = new_user()
    renamed, deleted = create(one, uid)["id"], create(one, uid)["id"]

    stores.break_redis()
    put = one("search_item", "PUT", f"/api/searches/{renamed}", user=uid, json_body={"name": "New"})
    gone = one("search_item", "DELETE", f"/api/searches/{deleted}", user=uid)
    assert (put.status, gone.status) == (200, 200)
    stores.restore_redis()
    assert stores.item(uid, deleted) is not None and stores.index(uid) == {renamed, deleted}
    assert len(stores.repairs()) == 2

    got = one("search_item", "GET", f"/api/searches/{renamed}", user=uid)
    assert (got.status, got.json["search"]["name"]) == (200, "New")
    assert one("search_item", "GET", f"/api/searches/{deleted}", user=uid).status == 404
    listed = one("searches", "GET", "/api/searches", user=uid).json["searches"]
    assert [(s["id"], s["name"]) for s in listed] == [(renamed, "New")]
    again = one(
        "search_item", "PUT", f"/api/searches/{deleted}", user=uid, json_body={"name": "Back"}
    )
    assert again.status == 404
    assert one("search_item", "DELETE", f"/api/searches/{deleted}", user=uid).status == 404
    assert stores.sql("SELECT id, name FROM saved_searches") == [(renamed, "New")]

    from shared.legacy import bridge

    assert bridge.repair_pending().remaining == 0
    assert stores.item(uid, deleted) is None and stores.index(uid) == {renamed}
    got = one("search_item", "GET", f"/api/searches/{renamed}", user=uid)
    assert got.json["search"]["name"] == "New"


def test_a_dual_rename_never_imports_a_search_whose_delete_is_owed(
    one: Caller, stores: Stores
) -> None:
    """Dual reads Redis, so it may show the search until the copy is made (a documented
    lag), but a rename must not write the deleted search back into Postgres."""
    stores.mode("dual")
    uid = new_user()
    sid = create(one, uid)["id"]
    stores.break_redis()
    assert one("search_item", "DELETE", f"/api/searches/{sid}", user=uid).status == 200
    stores.restore_redis()

    put = one("search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "Back"})
    assert put.status == 404
    assert stores.sql("SELECT id FROM saved_searches") == []
    assert [key for key, *_ in stores.repairs()] == [keys.saved_search(uid, sid)]


def test_the_fallback_list_shows_every_search_postgres_holds_after_redis_lost_data(
    one: Caller, stores: Stores
) -> None:
    """Redis lost the user's keys (a FLUSHALL, a crash without persistence); a later write
    recreates the index with its one search. The list still shows what Postgres holds, with
    what only Redis has (the TypeScript app's searches); the repair changes nothing of it."""
    from shared.legacy import bridge

    stores.mode("fallback")
    uid = new_user()
    [legacy] = seed_legacy_user(stores, uid, searches=1)
    held = [create(one, uid)["id"] for _ in range(3)]
    for sid in held:
        stores.redis.delete(keys.saved_search(uid, sid))
    stores.redis.srem(keys.saved_searches(uid), *held)
    newest = create(one, uid)["id"]
    assert stores.index(uid) == {legacy, newest}
    everything = {legacy, newest, *held}

    listed = one("searches", "GET", "/api/searches", user=uid).json["searches"]
    assert {s["id"] for s in listed} == everything
    assert [s["id"] for s in listed][:2] == [newest, held[-1]]  # newest first

    stores.break_redis()  # a rename owed to Redis, then repaired into the partial index
    one("search_item", "PUT", f"/api/searches/{held[0]}", user=uid, json_body={"name": "R"})
    stores.restore_redis()
    assert bridge.repair_pending().remaining == 0
    listed = one("searches", "GET", "/api/searches", user=uid).json["searches"]
    assert {s["id"] for s in listed} == everything


def test_dual_answers_503_when_redis_fails_or_holds_an_unreadable_record(
    one: Caller, stores: Stores
) -> None:
    stores.mode("dual")
    uid = new_user()
    sid = create(one, uid)["id"]
    stores.redis.set(keys.saved_search(uid, sid), '{"id": "truncated')
    got = one("search_item", "GET", f"/api/searches/{sid}", user=uid)
    assert got.status == 503  # what the original answered for such a record
    assert got.json["error"] == "Service Unavailable" and got.headers["retry-after"] == "60"

    stores.break_redis()
    listed = one("searches", "GET", "/api/searches", user=uid)
    assert listed.status == 503
    other = one("searches", "GET", "/api/searches", user=new_user())  # provisioning reads Redis
    assert other.status == 503


ANSWERED_ROWS = [  # as POST /api/keywords answers them (docs/keyword-search.md)
    {"keyword": "trail shoes", "searchVolume": 9_007_199_254_740_993, "cpc": None,
     "competition": "low", "intent": None,
     "trends": [{"month": 1, "year": 2026, "volume": None},
                {"month": 2, "year": 2026, "volume": 7}]},
    {"keyword": "fell shoes", "searchVolume": None, "cpc": None, "competition": None,
     "intent": None, "noData": True},
    {"keyword": "trail shoes guide", "searchVolume": 10, "cpc": 1.5, "competition": "medium",
     "intent": "navigational", "relevance": 97},
]  # fmt: skip


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_rows_with_missing_data_are_read_back_from_redis_as_saved(
    call: Caller, stores: Stores, name: str
) -> None:
    """What the keyword routes answer is saved, mirrored and read back from Redis unchanged;
    the TypeScript app's read schema refuses it (and the backfill leaves it to Postgres)."""
    stores.mode(name)
    uid = new_user()
    search = create(call, uid, {**BODY, "results": ANSWERED_ROWS})
    sid = search["id"]
    assert search["results"] == ANSWERED_ROWS
    stored = stores.item(uid, sid)
    assert stored is not None and stored["results"] == ANSWERED_ROWS
    got = call("search_item", "GET", f"/api/searches/{sid}", user=uid)
    assert (got.status, got.json["search"]["results"]) == (200, ANSWERED_ROWS), got.text
    renamed = call("search_item", "PUT", f"/api/searches/{sid}", user=uid,
                   json_body={"name": "Renamed"})  # fmt: skip
    assert (renamed.status, renamed.json["search"]["results"]) == (200, ANSWERED_ROWS)
    listed = call("searches", "GET", "/api/searches", user=uid).json["searches"]
    assert [row["id"] for row in listed] == [sid]
    with pytest.raises(LegacyRecordError, match="which the original read schema refuses"):
        parse_saved_search(keys.saved_search(uid, sid), json.dumps(stored), original_rules=True)


# --- dual-write failure policy: Postgres commits, Redis is repaired ---------------------------


@pytest.mark.parametrize("mode", ["dual", "fallback"])
def test_a_write_while_redis_is_down_commits_and_is_repaired_later(
    one: Caller, stores: Stores, mode: str
) -> None:
    from shared.legacy import bridge

    stores.mode(mode)
    uid = new_user()
    assert one("searches", "GET", "/api/searches", user=uid).status == 200  # signed in

    stores.break_redis()
    created = one("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert created.status == 201  # committed in Postgres: the write is not lost
    sid = created.json["search"]["id"]
    renamed = one("search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "R2"})
    assert renamed.status == 200
    key = keys.saved_search(uid, sid)
    assert stores.repairs() == [(key, "saved_search", 2, "redis: ConnectError")]
    assert stores.sql("SELECT name FROM saved_searches") == [("R2",)]

    stores.restore_redis()
    assert stores.item(uid, sid) is None  # Redis lags until the repair
    summary = bridge.repair_pending()
    assert (summary.repaired, summary.failed, summary.remaining) == (1, 0, 0)
    assert stores.item(uid, sid) == {**created.json["search"], **renamed.json["search"]}
    assert stores.index(uid) == {sid}
    got = one("search_item", "GET", f"/api/searches/{sid}", user=uid)
    assert (got.status, got.json["search"]["name"]) == (200, "R2")
    assert stores.repairs() == []


def test_a_write_while_postgres_is_down_fails_cleanly_and_touches_no_store(
    one: Caller, stores: Stores
) -> None:
    stores.mode("dual")
    uid = new_user()
    sid = create(one, uid)["id"]
    before = stores.item(uid, sid)

    stores.break_postgres()
    created = one("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert created.status == 503 and created.json["error"] == "Service Unavailable"
    renamed = one("search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "X"})
    deleted = one("search_item", "DELETE", f"/api/searches/{sid}", user=uid)
    assert (renamed.status, deleted.status) == (503, 503)
    assert stores.index(uid) == {sid} and stores.item(uid, sid) == before

    stores.restore_postgres()
    assert stores.sql("SELECT id, name FROM saved_searches") == [(sid, "Trail running")]
    assert stores.repairs() == []


def test_a_crash_between_commit_and_copy_leaves_a_mark_the_repair_finishes(
    one: Caller, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.legacy import bridge

    stores.mode("dual")
    uid = new_user()
    one("searches", "GET", "/api/searches", user=uid)
    with monkeypatch.context() as crash:
        crash.setattr(bridge, "_sync", lambda key: False)  # the process dies after COMMIT
        sid = create(one, uid)["id"]
    assert stores.item(uid, sid) is None
    assert stores.repairs() == [(keys.saved_search(uid, sid), "saved_search", 0, None)]
    assert bridge.repair_pending().repaired == 1
    assert stores.item(uid, sid) is not None and stores.repairs() == []


def test_an_unreadable_user_record_is_never_overwritten(one: Caller, stores: Stores) -> None:
    from shared.legacy import bridge

    stores.mode("fallback")
    uid = new_user()
    stores.redis.set(keys.user(uid), '{"clerkUserId": "' + uid + '", "tier": "gold"}')
    assert one("searches", "GET", "/api/searches", user=uid).status == 200  # served by Postgres
    assert stores.redis.get(keys.user(uid)) == '{"clerkUserId": "' + uid + '", "tier": "gold"}'
    [(key, kind, attempts, error)] = stores.repairs()
    assert (key, kind, attempts) == (keys.user(uid), "user", 1)
    assert error.startswith("legacy key left untouched: email: Field required")
    assert bridge.repair_pending().failed == 1  # still refused: an operator must look


def test_concurrent_writers_of_one_key_leave_redis_at_the_latest_state(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import storage
    from shared.repositories.saved_searches import NewSavedSearch

    monkeypatch.setenv("DB_POOL_SIZE", "6")
    stores.mode("dual")
    uid = new_user()
    storage.provision_user(uid, f"{uid}@example.com")
    sid = storage.create_search(uid, NewSavedSearch("n", ["k"], "US", "en", "exact")).id
    errors: list[BaseException] = []

    def rename(worker: int) -> None:
        try:
            for n in range(5):
                storage.update_search(uid, sid, name=f"w{worker}-{n}", description=None)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=rename, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [(final,)] = stores.sql("SELECT name FROM saved_searches WHERE id = %s", sid)
    stored = stores.item(uid, sid)
    assert stored is not None and stored["name"] == final
    assert stores.repairs() == []


def test_postgres_failing_after_the_commit_leaves_the_mark_for_the_repair(
    one: Caller, stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.legacy import bridge

    stores.mode("dual")
    uid = new_user()
    one("searches", "GET", "/api/searches", user=uid)
    client = bridge._client()

    def postgres_dies_now() -> Redis:
        stores.break_postgres()  # between the data COMMIT and the copy's transaction
        return client

    with monkeypatch.context() as timing:
        timing.setattr(bridge, "_client", postgres_dies_now)
        created = one("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert created.status == 201  # committed before Postgres went away
    stores.restore_postgres()
    sid = created.json["search"]["id"]
    assert stores.repairs() == [(keys.saved_search(uid, sid), "saved_search", 0, None)]
    assert bridge.repair_pending().repaired == 1
    assert stores.item(uid, sid) == created.json["search"]


def test_the_repair_skips_marks_in_use_and_records_what_it_cannot_copy(stores: Stores) -> None:
    from shared import storage
    from shared.legacy import bridge

    stores.mode("dual")
    uid = new_user()
    storage.provision_user(uid, f"{uid}@example.com")
    stores.sql(
        "INSERT INTO legacy_repairs (key, kind, \"userId\", \"updatedAt\") VALUES "
        "(%s, 'saved_search', %s, now()), (%s, 'user', %s, now())",
        "saved-search:broken", uid, keys.user(uid), uid,
    )  # fmt: skip
    with psycopg.connect(stores.direct_url) as holder:  # a request mid-write holds the user's
        holder.execute("SELECT 1 FROM legacy_repairs WHERE key = %s FOR UPDATE", (keys.user(uid),))
        summary = bridge.repair_pending()
    assert (summary.repaired, summary.failed, summary.skipped, summary.remaining) == (0, 1, 1, 2)
    assert stores.sql("SELECT error FROM legacy_repairs WHERE key = 'saved-search:broken'") == [
        ("legacy key left untouched: not a saved-search:{userId}:{searchId} key",)
    ]
    assert bridge.repair_pending().repaired == 1  # the lock is gone
    assert bridge.pending_repairs() == 1


def test_dual_mode_refusals_write_nothing_anywhere(one: Caller, stores: Stores) -> None:
    stores.mode("dual")
    uid = new_user()
    one("searches", "GET", "/api/searches", user=uid)
    stores.sql(
        'INSERT INTO saved_searches (id, "userId", name, keywords, "updatedAt") '
        "SELECT gen_random_uuid()::text, %s, 'n', '{k}', now() FROM generate_series(1, 50)",
        uid,
    )
    full = one("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert (full.status, full.json["message"]) == (400, contract_limit())
    unknown = str(uuid.uuid4())
    put = one("search_item", "PUT", f"/api/searches/{unknown}", user=uid, json_body={"name": "n"})
    gone = one("search_item", "DELETE", f"/api/searches/{unknown}", user=uid)
    assert (put.status, gone.status) == (404, 404)
    assert stores.index(uid) == set() and stores.repairs() == []

    stores.mode("fallback")
    stores.break_redis()
    gone = one("search_item", "DELETE", f"/api/searches/{unknown}", user=uid)
    assert gone.status == 404  # Redis cannot say, Postgres has none


def contract_limit() -> str:
    from shared.contracts.saved_searches import LIMIT_REACHED

    return LIMIT_REACHED


def test_importing_a_user_whose_email_postgres_gives_another_reattaches_them(
    one: Caller, stores: Stores
) -> None:
    """The address stays with its holder; the legacy user gets their own row under their
    Clerk id with the placeholder email (`shared.legacy.bridge.reattach_user`), never a 409
    forever."""
    from shared import storage

    stores.mode("dual")
    holder, twin = new_user(), new_user()
    storage.provision_user(holder, f"{twin}@EXAMPLE.com")  # created in Postgres and Redis
    seed_legacy_user(stores, twin)  # the TS app's user, same email in another case
    assert one("searches", "GET", "/api/searches", user=twin).status == 200
    emails = dict(stores.sql("SELECT id, email FROM users WHERE id IN (%s, %s)", holder, twin))
    assert emails == {holder: f"{twin}@EXAMPLE.com", twin: f"{twin}@keyflash.local"}

    other = new_user()
    stores.sql("UPDATE users SET \"stripeCustomerId\" = 'cus_shared' WHERE id = %s", holder)
    seed_legacy_user(stores, other, tier="pro", customer="cus_shared")
    storage.provision_user(other, f"{other}@example.com")  # reattached without the customer id
    assert stores.sql('SELECT email, tier, "stripeCustomerId" FROM users WHERE id = %s', other) == [
        (f"{other}@example.com", "PRO", None)
    ]


@pytest.mark.parametrize("name", ["postgres", "dual", "fallback"])
def test_a_quarantined_user_is_reattached_by_clerk_id_whatever_their_email_claim(
    one: Caller, stores: Stores, name: str
) -> None:
    """A user the backfill quarantined as a conflict signs in with no email claim, or with a
    changed address: they get their own legacy record (trial dates, usage, tier, indexed
    searches), never a second trial. What another row holds is left out: a taken address
    becomes the placeholder, a taken Stripe customer id is dropped (the rest is kept)."""
    holder, quiet, moved, paying = new_user(), new_user(), new_user(), new_user()
    created = utcnow().replace(microsecond=0) - timedelta(days=2)
    stores.sql(
        'INSERT INTO users (id, email, "stripeCustomerId", "updatedAt") VALUES (%s, %s, %s, now())',
        holder, f"{quiet}@EXAMPLE.com", f"cus_{paying}",
    )  # fmt: skip
    stores.sql('INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
               holder + "_2", f"{moved}@EXAMPLE.com")  # fmt: skip
    w = Writer(stores.redis)
    for uid in (quiet, moved):
        write_user(w, user_record(uid, f"{uid}@example.com", created=created))
        w.set(keys.trial_usage(uid, created), "299")
        write_search(w, search_record(uid, str(uuid.uuid4()), created=created))
    record = user_record(
        paying, f"{paying}@example.com", created=created, tier="pro",
        customer=f"cus_{paying}", subscription=f"sub_{paying}", status="active",
    )  # fmt: skip
    write_user(w, record)
    w.set(keys.usage(paying, utcnow()), "123")
    w.flush()
    stores.mode(name)

    no_claim = one("me", "GET", "/api/me", user=quiet)  # the placeholder case (D19)
    changed = {"authorization": f"Bearer {one.token(moved, email=f'new-{moved}@example.com')}"}
    moved_me = one("me", "GET", "/api/me", headers=changed)
    own = {"authorization": f"Bearer {one.token(paying, email=f'{paying}@example.com')}"}
    paying_me = one("me", "GET", "/api/me", headers=own)
    for result in (no_claim, moved_me, paying_me):
        assert result.status == 200, result.text
    for result in (no_claim, moved_me):
        assert result.json["usage"]["total"] == 299  # no quota came back
        assert result.json["trialEndsAt"] == iso_ms(created + timedelta(days=7))  # no new trial
    assert paying_me.json["tier"] == "PRO"
    columns = 'id, email, tier, "keywordSearchesTotal", "trialEndsAt", "stripeCustomerId", '
    columns += '"stripeSubscriptionId", "subscriptionStatus"'
    rows = stores.sql(
        f"SELECT {columns} FROM users WHERE id IN (%s, %s, %s) ORDER BY id", quiet, moved, paying
    )
    ends = created + timedelta(days=7)
    rows = [(*row[:4], row[4].replace(tzinfo=UTC), *row[5:]) for row in rows]
    assert sorted(rows) == sorted([
        (quiet, f"{quiet}@keyflash.local", "FREE", 299, ends, None, None, None),
        (moved, f"{moved}@keyflash.local", "FREE", 299, ends, None, None, None),
        (paying, f"{paying}@example.com", "PRO", 123, ends, None, f"sub_{paying}", "active"),
    ])  # fmt: skip
    for uid in (quiet, moved):
        listed = one("searches", "GET", "/api/searches", user=uid)
        assert listed.status == 200 and len(listed.json["searches"]) == 1, listed.text
        assert stores.sql('SELECT count(*) FROM saved_searches WHERE "userId" = %s', uid) == [(1,)]
    assert stores.sql("SELECT id FROM users WHERE id = %s", holder) == [(holder,)]


@pytest.mark.parametrize("name", ["postgres", "dual", "fallback"])
def test_a_case_variant_address_goes_to_the_user_the_email_index_names(
    one: Caller, stores: Stores, name: str
) -> None:
    """Two legacy users on one address in two cases: the original's `email:` index names the
    owner. Whoever signs in first, the owner gets the address and the other the placeholder,
    in every mode; Redis keeps both records and the index as they were."""
    other, owner = new_user(), new_user()
    address = f"mix-{uuid.uuid4().hex[:8]}@example.com"
    created = utcnow() - timedelta(days=2)
    w = Writer(stores.redis)
    write_user(w, user_record(other, address.upper(), created=created))
    write_user(w, user_record(owner, address, created=created))  # the index now names owner
    w.flush()
    stored = {uid: stores.redis.get(keys.user(uid)) for uid in (other, owner)}
    stores.mode(name)

    for uid, claim in ((other, address.upper()), (owner, address)):
        headers = {"authorization": f"Bearer {one.token(uid, email=claim)}"}
        assert one("me", "GET", "/api/me", headers=headers).status == 200

    emails = dict(stores.sql("SELECT id, email FROM users WHERE id IN (%s, %s)", other, owner))
    assert emails == {other: f"{other}@keyflash.local", owner: address}
    assert {uid: stores.redis.get(keys.user(uid)) for uid in (other, owner)} == stored
    assert stores.redis.get(keys.email(address)) == owner


@pytest.mark.parametrize(("name", "status"), [("postgres", 200), ("dual", 503), ("fallback", 200)])
def test_a_user_record_postgres_cannot_store_is_refused_at_sign_in_as_by_the_backfill(
    one: Caller, stores: Stores, name: str, status: int
) -> None:
    """A NUL in a Stripe id (JS strings hold it, Postgres text cannot): the sign-in cannot
    import the record, so it is unreadable here as the backfill's `invalid` says, never a 500:
    a 503 in dual, a new account elsewhere; the record is left as it was."""
    uid = new_user()
    record = user_record(
        uid, f"{uid}@example.com", created=utcnow() - timedelta(days=2), tier="pro",
        customer=f"cus_{uid}", subscription="sub_\x00", status="active",
    )  # fmt: skip
    stores.redis.set(keys.user(uid), json.dumps(record))
    stored = stores.redis.get(keys.user(uid))
    stores.mode(name)

    me = one("me", "GET", "/api/me", user=uid)

    assert me.status == status, me.text
    if status == 200:
        assert (me.json["tier"], me.json.get("subscription")) == ("FREE", None)
    assert stores.redis.get(keys.user(uid)) == stored


# --- users, usage, erasure ----------------------------------------------------------------------


def test_usage_is_read_from_the_mode_s_store_and_mirrored_by_increments(stores: Stores) -> None:
    from shared import storage
    from shared.quotas import Limits

    limits = Limits(trial=300, pro=1000, enterprise=10_000)
    uid = new_user()
    seed_legacy_user(stores, uid, tier="pro")
    now = utcnow()
    stores.redis.set(keys.usage(uid, now), "412")

    stores.mode("dual")
    storage.provision_user(uid, f"{uid}@example.com")  # imports the row with the real counter
    assert storage.usage(uid, limits).used == 412
    stores.redis.set(keys.usage(uid, now), "415")  # the TypeScript app counted three more
    assert storage.usage(uid, limits).used == 415  # dual reads Redis

    stores.mode("postgres")
    assert storage.usage(uid, limits).used == 412  # Postgres's own count

    stores.mode("fallback")
    count_usage(stores, uid, 15)  # a reservation of ours: Postgres 412 -> 427, owed to Redis
    storage.mirror_usage(uid)
    assert stores.redis.get(keys.usage(uid, now)) == "430"  # 415 + 15: an increment, no copy
    assert 0 < stores.redis.ttl(keys.usage(uid, now)) <= 31 * 86_400
    storage.mirror_usage(uid)  # nothing owed any more: applying again adds nothing
    assert stores.redis.get(keys.usage(uid, now)) == "430"
    stores.break_redis()
    assert storage.usage(uid, limits).used == 430  # Postgres learned the original's 3
    with pytest.raises(Exception, match="not found"):
        storage.usage(new_user(), limits)


def count_usage(stores: Stores, uid: str, n: int) -> None:
    """What a keyword reservation does in dual/fallback: the Postgres counters move and the
    legacy counter's delta is recorded, in one transaction."""
    from shared import db, storage

    def reserve(conn: Any) -> None:
        stores.sql(
            'UPDATE users SET "keywordSearchesThisMonth" = "keywordSearchesThisMonth" + %s, '
            '"keywordSearchesTotal" = "keywordSearchesTotal" + %s WHERE id = %s',
            n, n, uid,
        )  # fmt: skip
        storage.count_legacy_usage(conn, uid, n, utcnow())

    db.transaction(reserve)


@pytest.mark.parametrize("name", ["postgres", "dual", "fallback"])
def test_a_trial_started_a_hair_before_midnight_counts_on_the_original_s_counter(
    stores: Stores, name: str
) -> None:
    """`…T23:59:59.9996Z` is 23:59:59.999 to JS `Date`, so the original's trial counter is
    dated that day: its count is read, and ours is added to it, never to the next day's."""
    from shared import storage
    from shared.quotas import Limits

    uid = new_user()
    day = (utcnow() - timedelta(days=1)).date().isoformat()
    started = f"{day}T23:59:59.9996Z"
    record = user_record(uid, f"{uid}@example.com", created=utcnow() - timedelta(days=1))
    record |= {"trialStartedAt": started, "createdAt": started, "updatedAt": started}
    counter = f"trial-usage:{uid}:{day}"  # new Date(started).toISOString().slice(0, 10)
    w = Writer(stores.redis)
    write_user(w, record)
    w.set(counter, "100")
    w.flush()
    stores.mode(name)

    storage.provision_user(uid, f"{uid}@example.com")
    assert stores.sql('SELECT "keywordSearchesTotal" FROM users') == [(100,)]
    assert storage.usage(uid, Limits(300, 1000, 10_000)).used == 100
    if name != "postgres":
        count_usage(stores, uid, 2)
        storage.mirror_usage(uid)
        assert stores.redis.scan(0, match=f"trial-usage:{uid}:*", count=10_000)[1] == [counter]
        assert stores.redis.get(counter) == "102"


def test_a_trial_user_created_in_dual_mode_is_readable_by_the_original(
    one: Caller, stores: Stores
) -> None:
    from shared import storage
    from shared.quotas import Limits

    stores.mode("dual")
    uid = new_user()
    assert one("searches", "GET", "/api/searches", user=uid).status == 200
    raw = stores.redis.get(keys.user(uid))
    assert raw is not None
    record = parse_user(keys.user(uid), raw)
    assert record.trialExpiresAt - record.trialStartedAt == timedelta(days=7)
    count_usage(stores, uid, 25)
    storage.mirror_usage(uid)
    assert stores.redis.get(keys.trial_usage(uid, record.trialStartedAt)) == "25"
    assert storage.usage(uid, Limits(300, 1000, 10_000)).used == 25


def test_erasure_deletes_the_legacy_keys_or_leaves_a_mark_to_finish_it(stores: Stores) -> None:
    from shared import storage
    from shared.legacy import bridge

    uid = new_user()
    seed_legacy_user(stores, uid, searches=2, customer="cus_" + uid)
    stores.break_redis()
    assert storage.erase_legacy_user(uid, f"{uid}@example.com", "cus_" + uid) is False
    assert stores.repairs() == [(keys.erasure(uid), "erasure", 0, None)]

    stores.restore_redis()
    assert bridge.repair_pending().repaired == 1  # the user row is gone: erase the keys
    assert [k for k in stores.redis.scan(0, match=f"*{uid}*", count=10_000)[1]] == []
    assert stores.redis.get(keys.stripe("cus_" + uid)) is None
    assert storage.erase_legacy_user(uid, None, None) is True  # repeatable

    alive = new_user()  # a pending erasure never deletes the keys of a user Postgres has
    stores.mode("dual")
    storage.provision_user(alive, f"{alive}@example.com")
    stores.sql(
        "INSERT INTO legacy_repairs (key, kind, \"userId\", \"updatedAt\") "
        "VALUES (%s, 'erasure', %s, now())",
        keys.erasure(alive), alive,
    )  # fmt: skip
    assert bridge.repair_pending().repaired == 1
    assert stores.redis.get(keys.user(alive)) is not None


def test_an_erased_user_whose_legacy_keys_linger_is_not_reattached(
    one: Caller, stores: Stores
) -> None:
    """Postgres mode: an erasure made while Redis was down leaves the legacy keys until the
    repair job runs. Signing in again meanwhile gives the fresh account erasure promises (the
    tombstone keeps the trial), not the erased record and searches back."""
    from shared import auth

    stores.mode("postgres")
    uid = new_user()
    seed_legacy_user(stores, uid, searches=1)
    assert one("me", "GET", "/api/me", user=uid).status == 200  # reattached, 1 search
    assert stores.sql('SELECT count(*) FROM saved_searches WHERE "userId" = %s', uid) == [(1,)]
    stores.break_redis()
    assert one("me", "DELETE", "/api/me", user=uid).status == 200
    stores.restore_redis()
    assert stores.redis.get(keys.user(uid)) is not None  # still owed to the repair job
    auth.forget(uid)

    assert one("me", "GET", "/api/me", user=uid).status == 200
    assert stores.sql('SELECT count(*) FROM saved_searches WHERE "userId" = %s', uid) == [(0,)]
    assert stores.sql("SELECT email FROM users WHERE id = %s", uid) == [(f"{uid}@keyflash.local",)]


def rows_naming(stores: Stores, text: str) -> list[str]:
    """The tables (partitions included) with a row whose text holds `text`, in any column."""
    tables = stores.sql(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    return sorted(
        name
        for (name,) in tables
        if stores.sql(f'SELECT count(*) FROM "{name}" t WHERE t::text LIKE %s', f"%{text}%")
        != [(0,)]
    )


def test_an_erasure_redis_missed_is_finished_by_the_prune_cron_and_keeps_no_raw_id(
    one: Caller, stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres mode (the default): `DELETE /api/me` during an Upstash outage owes the legacy
    keys' deletion, under a mark naming the raw Clerk id. The daily prune finishes it once
    Redis answers again, and then nothing in Postgres names the id (report s46 t1, F3: the mark
    stayed for ever, no cron processing it). No log line names it either, however often the
    prune finds Redis still down (a reviewer found `legacy_mirror_failed` logging the mark)."""
    from shared.cron import prune
    from shared.cron.runner import run_job

    stores.mode("postgres")
    uid = new_user()
    seed_legacy_user(stores, uid, searches=1)
    assert one("me", "GET", "/api/me", user=uid).status == 200  # reattached
    stores.break_redis()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    assert one("me", "DELETE", "/api/me", user=uid).status == 200
    assert [row[:2] for row in stores.repairs()] == [(keys.erasure(uid), "erasure")]
    still_down = run_job(prune.JOB)["legacyErasures"]
    assert still_down == {"finished": 0, "failed": 1}
    assert [r.getMessage() for r in caplog.records if uid in r.getMessage()] == []
    assert [row[:3] for row in stores.repairs()] == [(keys.erasure(uid), "erasure", 1)]

    stores.restore_redis()
    assert stores.redis.get(keys.user(uid)) is not None  # still owed
    assert run_job(prune.JOB)["legacyErasures"] == {"finished": 1, "failed": 0}
    assert stores.redis.scan(0, match=f"*{uid}*", count=10_000)[1] == []
    assert rows_naming(stores, uid) == []
    assert run_job(prune.JOB)["legacyErasures"] == {"finished": 0, "failed": 0}


def test_erasure_leaves_the_keys_of_an_id_that_extends_the_erased_one(stores: Stores) -> None:
    from shared import storage

    uid = new_user()
    neighbour = f"{uid}:victim"  # legacy ids may contain colons (the backfill accepts them)
    now = utcnow()
    for who in (uid, neighbour):
        seed_legacy_user(stores, who, searches=1)
        stores.redis.set(keys.trial_usage(who, now), "9")
        stores.redis.set(keys.usage(who, now), "4")
    before = set(stores.redis.scan(0, match=f"*{neighbour}*", count=10_000)[1])
    assert len(before) == 6  # user:, saved-searches:, saved-search:, two counters, email:

    assert storage.erase_legacy_user(uid, None, None) is True

    assert set(stores.redis.scan(0, match=f"*{neighbour}*", count=10_000)[1]) == before
    left = set(stores.redis.scan(0, match=f"*{uid}*", count=10_000)[1]) - before
    assert left == set()


def _waits_on_a_lock(stores: Stores) -> bool:
    """Whether a backend of this database is blocked on a lock another one holds."""
    return (
        stores.sql(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND cardinality(pg_blocking_pids(pid)) > 0"
        )
        != []
    )


def _in_thread(work: Any, failures: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as error:  # surfaced by the test
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _hold_inside(stores: Stores, name: str) -> tuple[threading.Event, threading.Event]:
    """Make `shared.legacy.store.<name>` stop until released, saying when it is reached: the
    caller is then inside its transaction, with whatever locks it took before the call."""
    from shared.legacy import store

    reached, release = threading.Event(), threading.Event()
    real = getattr(store, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    stores.monkeypatch.setattr(store, name, held)
    return reached, release


def test_an_erasure_racing_the_counter_mirror_waits_for_it_and_never_deadlocks(
    stores: Stores,
) -> None:
    from devkit._host import wait_for
    from shared import accounts, db, storage

    stores.monkeypatch.setenv("DB_POOL_SIZE", "4")  # two transactions at once
    stores.mode("dual")
    uid = new_user()
    seed_legacy_user(stores, uid, searches=1)
    storage.provision_user(uid, f"{uid}@example.com")
    count_usage(stores, uid, 3)  # a reservation's delta, owed to the legacy counter
    reached, release = _hold_inside(stores, "apply_deltas")
    failures: list[BaseException] = []

    mirror = _in_thread(lambda: storage.mirror_usage(uid), failures)
    assert reached.wait(60)  # the mirror holds what it locks before the INCRBY
    erasure = _in_thread(lambda: db.transaction(lambda c: accounts.erase(c, uid)), failures)
    assert wait_for(lambda: _waits_on_a_lock(stores), timeout=30)  # the erasure waits
    release.set()
    mirror.join(60)
    erasure.join(60)

    assert failures == []  # and no deadlock was retried (the autouse fixture)
    assert stores.sql("SELECT id FROM users WHERE id = %s", uid) == []
    assert stores.sql("SELECT count(*) FROM legacy_counter_deltas") == [(0,)]


def test_a_reservation_does_not_wait_for_the_counter_mirror_s_redis_call(stores: Stores) -> None:
    """The mirror holds the user's row only against an erasure (`FOR KEY SHARE`): a keyword
    reservation, which updates the row without touching its key, goes on meanwhile."""
    from sqlalchemy import text

    from devkit._host import wait_for
    from shared import db, storage

    stores.monkeypatch.setenv("DB_POOL_SIZE", "4")  # two transactions at once
    stores.mode("dual")
    uid = new_user()
    seed_legacy_user(stores, uid, searches=1)
    storage.provision_user(uid, f"{uid}@example.com")
    count_usage(stores, uid, 3)  # a delta owed, so the mirror reaches its INCRBY
    reached, release = _hold_inside(stores, "apply_deltas")
    failures: list[BaseException] = []
    reserved = threading.Event()

    def reserve(conn: Any) -> None:
        conn.connection.execute(
            text(
                'UPDATE users SET "keywordSearchesThisMonth" = "keywordSearchesThisMonth" + 1 '
                "WHERE id = :id"
            ),
            {"id": uid},
        )

    mirror = _in_thread(lambda: storage.mirror_usage(uid), failures)
    reservation: threading.Thread | None = None  # unstarted if the mirror never gets there
    try:
        assert reached.wait(60)  # the mirror holds the user's row, waiting on Redis
        reservation = _in_thread(lambda: (db.transaction(reserve), reserved.set()), failures)
        assert wait_for(lambda: reserved.is_set() or _waits_on_a_lock(stores), timeout=30)
        assert reserved.is_set()
    finally:
        release.set()
        mirror.join(60)
        if reservation is not None:
            reservation.join(60)
    assert failures == []


def test_no_legacy_search_of_an_erased_identity_is_imported_into_its_next_account(
    stores: Stores,
) -> None:
    from shared import accounts, db, storage
    from shared.repositories import users

    stores.mode("dual")
    uid = new_user()
    [sid] = seed_legacy_user(stores, uid, searches=1)
    storage.provision_user(uid, f"{uid}@example.com")
    db.transaction(lambda c: accounts.erase(c, uid))  # committed; its Redis keys not gone yet
    # A concurrent request of the same session provisions the next account meanwhile.
    db.run(lambda c: users.get_or_create(c, uid, f"{uid}@example.com"), idempotent=True)

    assert storage.update_search(uid, sid, name="after", description=None) is None
    assert stores.sql("SELECT id FROM saved_searches") == []
    assert storage.erase_legacy_user(uid, None, None) is True  # the erasure's own finish
    assert stores.item(uid, sid) is None
    assert storage.update_search(uid, sid, name="after", description=None) is None


def test_signing_in_again_before_the_erased_keys_are_gone_imports_nothing_of_them(
    stores: Stores,
) -> None:
    from shared import accounts, db, storage

    stores.mode("dual")
    uid = new_user()
    [sid] = seed_legacy_user(stores, uid, searches=1, tier="pro", customer="cus_" + uid)
    storage.provision_user(uid, f"{uid}@example.com")
    db.transaction(lambda c: accounts.erase(c, uid))  # committed; its Redis keys not gone yet

    storage.provision_user(uid, f"{uid}@example.com")  # the person's next request

    assert stores.sql('SELECT tier::text, "stripeCustomerId" FROM users') == [("FREE", None)]
    assert stores.sql("SELECT id FROM saved_searches") == []
    assert stores.item(uid, sid) is None and stores.index(uid) == set()
    assert stores.repairs() == []


def test_an_erasure_racing_a_legacy_import_waits_for_it_and_then_takes_the_import_too(
    stores: Stores,
) -> None:
    from devkit._host import wait_for
    from shared import accounts, db, storage

    stores.monkeypatch.setenv("DB_POOL_SIZE", "4")  # two transactions at once
    stores.mode("dual")
    uid = new_user()
    [sid] = seed_legacy_user(stores, uid, searches=1)
    storage.provision_user(uid, f"{uid}@example.com")
    reached, release = _hold_inside(stores, "read_saved_search")
    failures: list[BaseException] = []
    renamed: list[Any] = []

    rename = _in_thread(
        lambda: renamed.append(storage.update_search(uid, sid, name="R", description=None)),
        failures,
    )
    assert reached.wait(60)  # the import has locked the owner's row, and reads Redis now
    erasure = _in_thread(lambda: db.transaction(lambda c: accounts.erase(c, uid)), failures)
    assert wait_for(lambda: _waits_on_a_lock(stores), timeout=30)  # the erasure waits
    release.set()
    rename.join(60)
    erasure.join(60)

    assert failures == []
    assert [s.name for s in renamed] == ["R"]  # it was the user's own rename, before erasure
    assert stores.sql("SELECT id FROM saved_searches") == []  # and the erasure took it
    assert stores.sql("SELECT id FROM users WHERE id = %s", uid) == []


def test_mirror_user_moves_the_index_keys_with_the_row(stores: Stores) -> None:
    from shared import storage

    stores.mode("dual")
    uid, neighbour = new_user(), new_user()
    storage.provision_user(uid, f"{uid}@old.example")
    stores.redis.set(keys.email(f"{uid}@shared.example"), neighbour)  # another user's index key
    stores.sql(
        "UPDATE users SET email = %s, \"stripeCustomerId\" = %s, tier = 'PRO', "
        "\"subscriptionStatus\" = 'trialing' WHERE id = %s",
        f"{uid}@New.example", "cus_" + uid, uid,
    )  # fmt: skip
    storage.mirror_user(uid)
    raw = stores.redis.get(keys.user(uid))
    assert raw is not None
    record = parse_user(keys.user(uid), raw)
    assert (record.email, record.tier, record.stripeCustomerId) == (
        f"{uid}@New.example", "pro", "cus_" + uid,
    )  # fmt: skip
    assert record.subscriptionStatus is None  # not a status the original knew: left out
    assert stores.redis.get(keys.email(f"{uid}@old.example")) is None
    assert stores.redis.get(keys.email(f"{uid}@new.example")) == uid
    assert stores.redis.get(keys.stripe("cus_" + uid)) == uid
    assert stores.redis.get(keys.email(f"{uid}@shared.example")) == neighbour
    assert stores.repairs() == []
    stores.mode("postgres")
    storage.mirror_user(uid)  # a no-op
    storage.mirror_usage(uid)

    stores.mode("dual")
    stranger = new_user()  # only the TypeScript app knows them
    seed_legacy_user(stores, stranger, searches=1)
    storage.mirror_user(stranger)
    storage.mirror_usage(stranger)
    assert stores.redis.get(keys.user(stranger)) is not None  # nothing copied, nothing erased
    assert len(stores.index(stranger)) == 1 and stores.repairs() == []


def test_erasure_without_redis_configured_has_nothing_to_delete(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import storage

    monkeypatch.delenv("UPSTASH_REDIS_REST_URL")
    stores.mode("postgres")
    assert storage.erase_legacy_user(new_user(), None, None) is True
    assert stores.repairs() == []


def test_dual_mode_requires_the_upstash_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import ConfigurationError, get_settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@localhost/db")
    monkeypatch.setenv("STORAGE_MODE", "dual")
    monkeypatch.delenv("UPSTASH_REDIS_REST_URL", raising=False)
    monkeypatch.delenv("UPSTASH_REDIS_REST_TOKEN", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(
            ConfigurationError, match=r"STORAGE_MODE=dual .* UPSTASH_REDIS_REST_URL"
        ):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_old_counter_dates_are_utc() -> None:
    from shared.legacy.mapping import counter_target, counter_ttl
    from shared.models import UserTier
    from shared.models.users import User

    user = User(
        id="u", email="u@x.io", tier=UserTier.PRO, keyword_searches_this_month=3,
        keyword_searches_total=3, monthly_reset_at=datetime(2026, 12, 1, tzinfo=UTC),
        created_at=datetime(2026, 11, 1, tzinfo=UTC), updated_at=datetime(2026, 11, 1, tzinfo=UTC),
    )  # fmt: skip
    at = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    key, expires_at = counter_target(user, at)
    assert (key, expires_at) == ("usage:u:2026-12", datetime(2027, 1, 1, tzinfo=UTC))
    assert counter_ttl(expires_at, at) == 2_676_600
    assert counter_ttl(expires_at, expires_at) == 3600  # the original's floor
