"""The Redis → Postgres migration on a production-shaped keyspace, with the original app alive.

Redis is a real redis-server behind the Upstash REST emulator. What the TypeScript app does is
done with redis-py straight into that server, as a separate writer would: bytes that are not
UTF-8 (which the SDK cannot even send), counters incremented with INCRBY + EXPIRE as its
`incrementKeywordUsage` does, records written with SET/SADD. Our side is the real SDK, the real
functions and the lane's real Postgres.
"""

from __future__ import annotations

import json
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from upstash_redis import Redis

from devkit.legacy import Tally, backfill, reattach, verify
from devkit.upstash_emulator import UpstashEmulator
from shared.clock import iso_ms, month_start, next_month_start, utcnow
from shared.legacy import keys
from shared.legacy.mapping import counter_ttl
from shared.legacy.schemas import parse_saved_search, parse_user
from tests.support.breaker_clock import BreakerClock
from tests.support.http import Caller, Keys
from tests.support.legacy import (
    LegacyDataset,
    assert_outcomes,
    dumps,
    search_record,
    user_record,
    write_mess,
)
from tests.support.redis import LocalRedis

BODY = {
    "name": "Trail running",
    "searchParams": {"keywords": ["trail shoes"], "location": "US", "matchType": "phrase"},
}
ORIGINAL_INCREMENTS = 40  # keywords the TypeScript app counts while our API runs
OUR_SEARCHES = 12  # keyword searches through our API meanwhile, 2 keywords each


@pytest.fixture(scope="module")
def server() -> Iterator[LocalRedis]:
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-legacy-prod-") as tmp,
        LocalRedis(Path(tmp)) as local,
    ):
        yield local


@pytest.fixture(scope="module")
def emulator(server: LocalRedis) -> Iterator[UpstashEmulator]:
    with UpstashEmulator(server.url) as up:
        yield up


@pytest.fixture
def original(server: LocalRedis) -> Iterator[redis.Redis]:
    """The TypeScript app's connection: straight to Redis, bytes in and out."""
    with redis.Redis.from_url(server.url) as client:
        yield client


@pytest.fixture
def sdk(emulator: UpstashEmulator) -> Redis:
    return Redis(url=emulator.url, token=emulator.token)


_databases = iter(range(1, 16))


@pytest.fixture
def keyspace(server: LocalRedis) -> Iterator[tuple[Redis, redis.Redis]]:
    """An empty keyspace of its own (another database of the private server), through the SDK
    and straight, for a whole-keyspace backfill."""
    url = f"{server.url.rsplit('/', 1)[0]}/{next(_databases)}"
    with UpstashEmulator(url) as up, redis.Redis.from_url(url) as straight:
        yield Redis(url=up.url, token=up.token), straight


@pytest.fixture
def app(
    api_env: Keys,
    emulator: UpstashEmulator,
    admin_conn: psycopg.Connection[Any],  # empties the tables after the test
    monkeypatch: pytest.MonkeyPatch,
) -> Caller:
    """The functions on that Redis (not the suite's in-process one)."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", emulator.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", emulator.token)
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    reload()
    return Caller("lambda_v2", api_env)


def reload() -> None:
    from shared import db
    from shared import redis as shared_redis
    from shared.config import get_settings

    get_settings.cache_clear()
    db.dispose_engine()
    shared_redis.reset_redis()


def mode(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("STORAGE_MODE", name)
    reload()


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode(), params)
        return cursor.fetchall() if cursor.description else []


def new_user() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def seed_pro(original: redis.Redis, uid: str, used: int) -> str:
    """A pro user only the TypeScript app knows, with this month's counter at `used`."""
    record = user_record(
        uid, f"{uid}@example.com", created=utcnow() - timedelta(days=3), tier="pro"
    )
    original.set(keys.user(uid), dumps(record), ex=keys.ONE_YEAR_S)
    original.set(keys.email(record["email"]), uid, ex=keys.ONE_YEAR_S)
    counter = keys.usage(uid, utcnow())
    original.set(counter, str(used), ex=3600)
    return counter


def keyword_search(call: Caller, uid: str, n: int) -> None:
    body = {"keywords": [f"espresso {n}", f"grinder {n}"], "matchType": "phrase"}
    result = call("keywords", "POST", "/api/keywords", user=uid, json_body=body)
    assert result.status == 200, result.text


# --- the backfill ---------------------------------------------------------------------------------


def test_a_messy_production_keyspace_backfills_with_exact_counts_per_outcome(
    keyspace: tuple[Redis, redis.Redis], db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    sdk, original = keyspace
    data = LegacyDataset(users=40, searches_per_user=3, seed=24).write(sdk)
    write_mess(data, original)
    expected = data.expected

    report = backfill(sdk, batch_size=25, scan_count=20, report_path=tmp_path / "r.json")

    assert report.complete
    assert_outcomes(report, expected)
    reasons = {q.key: q.reason for q in report.quarantined}
    assert reasons[keys.user("mess_bytes")] == "holds bytes that are not valid UTF-8"
    assert reasons[keys.user("mess_deep")] == "JSON nested too deeply to read"
    [(far,)] = sql(direct_database_url, """SELECT "createdAt" FROM users WHERE id = %s""",
                   "mess_far_future")  # fmt: skip
    assert far == datetime(9999, 12, 31, 23, 59, 59, 999_000)  # …59.9999Z as JS reads it
    said = json.dumps(list(reasons.values()), ensure_ascii=False)
    assert "🔥" not in said and "caf" not in said and "\\x" not in said  # never a value
    huge = keys.usage("mess_huge_counter", data.now)
    assert reasons[huge].startswith("usage counter is larger than 2147483647")
    # The case-only twins: the user the email: index names is the one copied.
    assert reasons["user:pair_a_0"] == "the email: index key of its address names user:pair_b_0"
    # The emoji name is 50 code points and 100 UTF-16 units: copied, and read back unchanged.
    [(name, keywords)] = sql(
        direct_database_url, "SELECT name, keywords FROM saved_searches WHERE name = %s", "🔥" * 50
    )
    assert (name, keywords) == ("🔥" * 50, ["☕ café", "😀 smile"])
    # A user whose counter was quarantined is copied with that counter missing (0).
    assert sql(
        direct_database_url,
        'SELECT "keywordSearchesThisMonth" FROM users WHERE id = %s',
        "mess_hash_counter",
    ) == [(0,)]

    again = backfill(sdk, batch_size=25, scan_count=20, report_path=tmp_path / "again.json")
    assert again.users == Tally(unchanged=expected.users)
    assert again.saved_searches == Tally(unchanged=expected.searches)
    assert len(again.quarantined) == len(report.quarantined)
    assert verify(sdk) == []


@pytest.mark.parametrize("name", ["postgres", "dual"])
def test_the_quarantined_case_only_twin_signs_in_and_gets_their_own_data(
    app: Caller,
    sdk: Redis,
    original: redis.Redis,
    direct_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """The email: index names A, so the backfill copies A and quarantines B with B's searches.
    B signs in (their Clerk email is the same address): B gets their own account under their
    Clerk id, with the placeholder email, their trial dates, their usage and their searches;
    A is untouched, and the TypeScript app still sees B's real address."""
    from shared import storage

    winner, twin = new_user(), new_user()
    address = f"{twin}@Example.com"
    created = utcnow() - timedelta(days=3)
    for uid, email in ((winner, address.lower()), (twin, address)):
        original.set(keys.user(uid), dumps(user_record(uid, email, created=created)))
    original.set(keys.email(address), winner, ex=keys.ONE_YEAR_S)
    original.set(keys.trial_usage(twin, created), "30", ex=3600)
    theirs = [str(uuid.uuid4()) for _ in range(2)]
    for n, sid in enumerate(theirs):
        record = search_record(twin, sid, created=created + timedelta(minutes=n), name=f"B {n}")
        original.set(keys.saved_search(twin, sid), dumps(record), ex=keys.ONE_YEAR_S)
        original.sadd(keys.saved_searches(twin), sid)

    report = backfill(sdk, report_path=tmp_path / "r.json")
    reasons = {q.key: (q.kind, q.reason) for q in report.quarantined}
    assert reasons[keys.user(twin)] == (
        "conflict",
        f"the email: index key of its address names {keys.user(winner)}",
    )
    for sid in theirs:
        owner_gone = f"its owner {keys.user(twin)} was quarantined"
        assert reasons[keys.saved_search(twin, sid)] == ("orphan", owner_gone)

    mode(monkeypatch, name)
    signed_in = {"authorization": f"Bearer {app.token(twin, email=address)}"}
    listed = app("searches", "GET", "/api/searches", headers=signed_in)
    assert listed.status == 200, listed.text
    assert [s["id"] for s in listed.json["searches"]] == theirs[::-1]
    row = 'SELECT email, "trialStartedAt", "keywordSearchesTotal" FROM users WHERE id = %s'
    [(email, started, used)] = sql(direct_database_url, row, twin)
    assert (email, started.replace(tzinfo=UTC), used) == (f"{twin}@keyflash.local", created, 30)
    assert sql(direct_database_url, "SELECT email FROM users WHERE id = %s", winner) == [
        (address.lower(),)
    ]
    mine = 'SELECT id FROM saved_searches WHERE "userId" = %s ORDER BY "createdAt"'
    assert [sid for (sid,) in sql(direct_database_url, mine, twin)] == theirs
    me = app("me", "GET", "/api/me", headers=signed_in)
    assert me.status == 200, me.text
    assert me.json["usage"]["total"] == 30  # no second trial: its usage and dates came along
    assert me.json["trialEndsAt"] == iso_ms(created + timedelta(days=7))

    storage.mirror_user(twin)  # a no-op in postgres mode; in dual the real address stays
    stored = original.get(keys.user(twin))
    assert stored is not None and parse_user(keys.user(twin), stored.decode()).email == address
    assert original.get(keys.email(address)) == winner.encode()
    assert original.get(keys.email(f"{twin}@keyflash.local")) is None

    again = backfill(sdk, report_path=tmp_path / "again.json")
    still = {q.key for q in again.quarantined}
    assert keys.user(twin) in still  # A keeps the address; B's row stays as reattached
    assert not {keys.saved_search(twin, sid) for sid in theirs} & still  # no longer orphans
    assert app("searches", "GET", "/api/searches", headers=signed_in).status == 200
    assert [sid for (sid,) in sql(direct_database_url, mine, twin)] == theirs


def test_a_twin_whose_legacy_record_cannot_be_read_still_gets_409_and_nothing_else(
    app: Caller,
    original: redis.Redis,
    emulator: UpstashEmulator,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Postgres mode: reattaching needs a readable `user:` record; an unreadable one (or Redis
    down) leaves the sign-in a 409, as before, with no row created. A readable record whose
    index set is of the wrong type is reattached without searches (the backfill copies them
    once its owner exists)."""
    mode(monkeypatch, "postgres")
    holder, broken, listless = new_user(), new_user(), new_user()
    sql(direct_database_url, 'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
        holder, f"{broken}@example.com")  # fmt: skip
    sql(direct_database_url, 'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
        holder + "_2", f"{listless}@example.com")  # fmt: skip
    original.set(keys.user(broken), b'{"clerkUserId": "' + broken.encode() + b'", "email": ')
    created = utcnow() - timedelta(days=1)
    record = user_record(listless, f"{listless}@Example.com", created=created)
    original.set(keys.user(listless), dumps(record))
    original.set(keys.saved_searches(listless), "not a set")

    def sign_in(uid: str) -> Any:
        token = app.token(uid, email=f"{uid}@EXAMPLE.com")
        return app("me", "GET", "/api/me", headers={"authorization": f"Bearer {token}"})

    refused = sign_in(broken)
    assert refused.status == 409
    assert refused.json["message"] == "This email address already belongs to another account"
    assert sql(direct_database_url, "SELECT id FROM users WHERE id = %s", broken) == []

    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")  # Redis down
    reload()
    assert sign_in(listless).status == 409
    assert sql(direct_database_url, "SELECT id FROM users WHERE id = %s", listless) == []

    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", emulator.url)  # Redis back
    reload()
    assert sign_in(listless).status == 200
    assert sql(
        direct_database_url, 'SELECT count(*) FROM saved_searches WHERE "userId" = %s', listless
    ) == [(0,)]


def test_a_trial_record_counts_only_its_trial_counter_on_both_import_paths(
    app: Caller,
    sdk: Redis,
    original: redis.Redis,
    direct_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/original-app.md#redis-to-postgres-field-mapping: a `trial` record's usage is its
    `trial-usage:` counter. A month counter `usage:` beside it (an upgrade and a downgrade
    during the trial leave one) is the pro tier's: neither the sign-in import nor the backfill
    adds it, so both give the original's 295 remaining; a month counter with no record at all
    gives the fresh account nothing on either path."""
    monkeypatch.setenv("BILLING_ENABLED", "true")
    mode(monkeypatch, "dual")
    at_sign_in, by_backfill, gone = new_user(), new_user(), new_user()
    now = utcnow()
    created = now - timedelta(days=2)
    for uid in (at_sign_in, by_backfill):
        original.set(keys.user(uid), dumps(user_record(uid, f"{uid}@example.com", created=created)))
        original.set(keys.trial_usage(uid, created), "5", ex=600_000)
        original.set(keys.usage(uid, now), "70", ex=600_000)
    original.set(keys.usage(gone, now), "50", ex=600_000)

    for uid in (at_sign_in, gone):
        assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported
    backfill(sdk, report_path=tmp_path / "r.json")

    counts = 'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s'
    for uid, used in ((at_sign_in, 5), (by_backfill, 5), (gone, 0)):
        assert sql(direct_database_url, counts, uid) == [(used, used)], uid
        usage = app("me", "GET", "/api/me", user=uid).json["usage"]
        assert (usage["total"], usage["remaining"]) == (used, 300 - used), uid


def test_the_reattach_command_imports_a_quarantined_user_once(
    sdk: Redis, original: redis.Redis, db_env: str, direct_database_url: str, capsys: Any
) -> None:
    """The operator's way, ahead of a sign-in: `python -m devkit.legacy reattach USER_ID`."""
    winner, twin = new_user(), new_user()
    created = utcnow() - timedelta(days=1)
    address = f"{twin}@example.com"
    sql(direct_database_url, 'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
        winner, address.upper())  # fmt: skip
    original.set(keys.user(twin), dumps(user_record(twin, address, created=created, tier="pro")))
    sid = str(uuid.uuid4())
    original.set(keys.saved_search(twin, sid), dumps(search_record(twin, sid, created=created)))
    original.sadd(keys.saved_searches(twin), sid)

    assert reattach(sdk, [twin]) == 0
    assert reattach(sdk, [twin]) == 0  # a repeat imports nothing
    assert reattach(sdk, [new_user()]) == 1  # Redis has no such user
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"user:{twin}: reattached, 1 saved search(es) imported",
        f"user:{twin}: reattached, 0 saved search(es) imported",
    ]
    assert lines[2].endswith(": no such record in Redis")
    assert sql(direct_database_url, "SELECT email, tier FROM users WHERE id = %s", twin) == [
        (f"{twin}@keyflash.local", "PRO")
    ]
    assert sql(direct_database_url, 'SELECT id FROM saved_searches WHERE "userId" = %s', twin) == [
        (sid,)
    ]


def test_verify_is_clean_for_users_who_search_in_dual_mode_and_still_sees_the_original_s_changes(
    app: Caller, sdk: Redis, original: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s44t2 F3: a keyword search stamps the Postgres row's `updatedAt`, while the original
    never stamps its record for a count (INCRBY on the counter only), so dual mode mirrors
    only the increment. That is not a difference; a change the original made to the record
    still is, whether stamped before our last write or after it."""
    mode(monkeypatch, "dual")
    ours, theirs = new_user(), new_user()  # created here; known only to the TypeScript app
    seed_pro(original, theirs, 10)
    for uid in (ours, theirs):
        assert app("searches", "GET", "/api/searches", user=uid).status == 200  # signs in
        keyword_search(app, uid, 1)

    def mine() -> set[tuple[str, str]]:
        return {
            (d.key, d.field) for d in verify(sdk) if d.key in (keys.user(ours), keys.user(theirs))
        }

    assert mine() == set()

    record = json.loads(original.get(keys.user(theirs)) or b"")
    moved = {**record, "stripeCustomerId": f"cus_{theirs}"}
    original.set(keys.user(theirs), dumps(moved))  # stamped before our keyword search
    assert mine() == {(keys.user(theirs), "stripeCustomerId")}
    original.set(keys.user(theirs), dumps({**record, "updatedAt": iso_ms(utcnow())}))
    assert mine() == {(keys.user(theirs), "updatedAt")}  # a rewrite Postgres has not had


def test_verify_leaves_out_what_the_backfill_quarantined_also_once_reattached(
    app: Caller, sdk: Redis, original: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s51t6 D1, D2: a counter the backfill quarantined is not compared (never read as 0),
    and a reattached conflict is settled: the address and Stripe customer another row holds,
    which the reattach left out, are not differences. What else the record holds still is."""
    mode(monkeypatch, "dual")
    counted, winner, twin, payer, rival = (new_user() for _ in range(5))
    created = utcnow() - timedelta(days=3)
    original.set(seed_pro(original, counted, 0), "abc")
    address = f"{twin}@Example.com"
    for uid, email in ((winner, address.lower()), (twin, address)):
        original.set(keys.user(uid), dumps(user_record(uid, email, created=created)))
    original.set(keys.email(address), winner, ex=keys.ONE_YEAR_S)
    for uid in (payer, rival):
        record = user_record(uid, f"{uid}@example.com", created=created, tier="pro",
                             customer=f"cus_{payer}")  # fmt: skip
        original.set(keys.user(uid), dumps(record))
    original.set(keys.stripe(f"cus_{payer}"), payer, ex=keys.ONE_YEAR_S)
    report = backfill(sdk, report_path=tmp_path / "r.json")
    kinds = {(q.key, q.kind) for q in report.quarantined}
    assert (keys.usage(counted, utcnow()), "invalid") in kinds
    assert {(keys.user(twin), "conflict"), (keys.user(rival), "conflict")} <= kinds
    assert reattach(sdk, [twin, rival]) == 0
    keyword_search(app, counted, 1)  # Postgres counts 2; Redis still holds "abc"

    def mine() -> list[str]:
        ours = {keys.user(uid) for uid in (counted, winner, twin, payer, rival)}
        return [str(d) for d in verify(sdk) if d.key in ours]

    assert mine() == []
    stored = json.loads(original.get(keys.user(rival)) or b"")
    original.set(keys.user(rival), dumps({**stored, "subscriptionStatus": "canceled"}))
    assert mine() == [f'{keys.user(rival)} subscriptionStatus: redis="canceled" postgres=null']


def test_a_search_with_missing_data_is_the_backfill_s_invalid_key_and_no_verify_difference(
    app: Caller,
    sdk: Redis,
    direct_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s44t2 F4, the doc's side: a search saved with a row lacking `difficulty` is this port's
    own state in both stores. The backfill, which copies under the original read schema,
    lists it as `invalid` and leaves the row; verify, which compares what the backfill
    copies, says nothing of it, so it never blocks the switch, but still sees it vanish."""
    mode(monkeypatch, "dual")
    uid = new_user()
    rows = [{"keyword": "a", "searchVolume": 10, "cpc": 1.5, "competition": "low",
             "intent": "commercial"}]  # fmt: skip
    made = app("searches", "POST", "/api/searches", user=uid, json_body={**BODY, "results": rows})
    assert made.status == 201, made.text
    sid = made.json["search"]["id"]
    key = keys.saved_search(uid, sid)

    def mine() -> list[str]:
        return [str(d) for d in verify(sdk) if uid in d.key]

    assert mine() == []
    report = backfill(sdk, report_path=tmp_path / "r.json")
    [(kind, reason)] = [(q.kind, q.reason) for q in report.quarantined if q.key == key]
    assert kind == "invalid" and reason.endswith(
        "null or absent, which the original read schema refuses"
    )
    assert sql(direct_database_url, "SELECT results FROM saved_searches WHERE id = %s", sid) == [
        (rows,)
    ]
    assert mine() == []
    sdk.delete(key)  # the TypeScript app's delete
    assert mine() == [f'{key} row: redis="missing" postgres="present"']


def test_verify_also_reports_postgres_rows_redis_lacks(
    keyspace: tuple[Redis, redis.Redis], db_env: str, direct_database_url: str
) -> None:
    sdk, _ = keyspace
    uid, sid = new_user(), str(uuid.uuid4())
    sql(
        direct_database_url,
        'INSERT INTO users (id, email, "updatedAt") VALUES (%s, %s, now())',
        uid,
        f"{uid}@example.com",
    )
    sql(
        direct_database_url,
        'INSERT INTO saved_searches (id, "userId", name, keywords, "updatedAt") '
        "VALUES (%s, %s, 'n', '{k}', now())",
        sid,
        uid,
    )
    lines: list[str] = []
    differences = verify(sdk, echo=lines.append)
    assert {(d.key, d.field, d.redis, d.postgres) for d in differences} == {
        (keys.user(uid), "row", "missing", "present"),
        (keys.saved_search(uid, sid), "row", "missing", "present"),
    }
    assert f'{keys.user(uid)} row: redis="missing" postgres="present"' in lines


def test_a_search_the_original_deleted_in_dual_is_404_for_every_write_and_not_brought_back(
    app: Caller,
    original: redis.Redis,
    emulator: UpstashEmulator,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s55t6 F3: dual reads Redis, so once the TypeScript app has deleted a search (SREM, then
    DEL, as its delete does) a rename is the 404 its GET says, changing neither store, and a
    delete is the original's 404 that takes the row Postgres still held. A search whose copy
    to Redis is still owed (saved while Redis was down) is ours, not deleted: renamed."""
    mode(monkeypatch, "dual")
    uid = new_user()
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # signed in
    renamed, deleted = (
        app("searches", "POST", "/api/searches", user=uid, json_body=BODY).json["search"]["id"]
        for _ in range(2)
    )
    for sid in (renamed, deleted):
        original.srem(keys.saved_searches(uid), sid)
        original.delete(keys.saved_search(uid, sid))

    assert app("search_item", "GET", f"/api/searches/{renamed}", user=uid).status == 404
    put = app("search_item", "PUT", f"/api/searches/{renamed}", user=uid, json_body={"name": "R"})
    assert put.status == 404, put.text
    assert sql(direct_database_url, "SELECT name FROM saved_searches WHERE id = %s", renamed) == [
        (BODY["name"],)
    ]
    assert original.get(keys.saved_search(uid, renamed)) is None
    assert original.smembers(keys.saved_searches(uid)) == set()

    gone = app("search_item", "DELETE", f"/api/searches/{deleted}", user=uid)
    assert gone.status == 404, gone.text
    assert sql(direct_database_url, "SELECT id FROM saved_searches WHERE id = %s", deleted) == []
    assert sql(direct_database_url, "SELECT key FROM legacy_repairs") == []

    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")
    reload()
    ours = app("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert ours.status == 201
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", emulator.url)
    reload()
    sid = ours.json["search"]["id"]
    put = app("search_item", "PUT", f"/api/searches/{sid}", user=uid, json_body={"name": "Ours"})
    assert (put.status, put.json["search"]["name"]) == (200, "Ours")
    assert original.smembers(keys.saved_searches(uid)) == {sid.encode()}
    assert sql(direct_database_url, "SELECT key FROM legacy_repairs") == []


# --- the API on the same records -------------------------------------------------------------


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_the_list_read_from_redis_shows_each_search_once_and_at_most_fifty(
    app: Caller, original: redis.Redis, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """s51t6 D6: an index set listing 60 items (more than the original let a user create)
    lists the 50 newest, newest `updatedAt` first and ties by id, the original's order; a
    search saved here, so in both stores, is listed once."""
    mode(monkeypatch, name)
    uid = new_user()
    created = utcnow() - timedelta(days=30)
    legacy = [str(uuid.uuid4()) for _ in range(60)]
    for n, sid in enumerate(legacy):
        record = search_record(uid, sid, created=created + timedelta(hours=n // 2))  # pairs tie
        original.set(keys.saved_search(uid, sid), dumps(record), ex=keys.ONE_YEAR_S)
        original.sadd(keys.saved_searches(uid), sid)
    made = app("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert made.status == 201, made.text

    listed = app("searches", "GET", "/api/searches", user=uid)
    assert listed.status == 200, listed.text
    newest = sorted(legacy, key=lambda sid: (legacy.index(sid) // 2, sid), reverse=True)
    assert [s["id"] for s in listed.json["searches"]] == [made.json["search"]["id"], *newest[:49]]


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_invalid_bytes_and_wrong_types_through_the_api_are_503_or_postgres_never_500(
    app: Caller, original: redis.Redis, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    mode(monkeypatch, name)
    uid = new_user()
    created = app("searches", "POST", "/api/searches", user=uid, json_body=BODY)
    assert created.status == 201
    sid = created.json["search"]["id"]
    item = keys.saved_search(uid, sid)
    original.set(item, original.get(item).replace(b"Trail", b"Tr\xe4il"))  # type: ignore[union-attr]
    got = app("search_item", "GET", f"/api/searches/{sid}", user=uid)
    listed = app("searches", "GET", "/api/searches", user=uid)
    if name == "dual":
        assert (got.status, got.json["error"]) == (503, "Service Unavailable")
        assert listed.status == 200 and listed.json["searches"] == []  # skipped, as the original
    else:
        assert (got.status, got.json["search"]["name"]) == (200, "Trail running")
        assert [s["id"] for s in listed.json["searches"]] == [sid]

    original.delete(keys.saved_searches(uid))
    original.hset(keys.saved_searches(uid), "not", "a set")  # the wrong Redis type
    listed = app("searches", "GET", "/api/searches", user=uid)
    deleted = app("search_item", "DELETE", f"/api/searches/{sid}", user=uid)
    if name == "dual":
        assert listed.status == 503
    else:
        assert [s["id"] for s in listed.json["searches"]] == [sid]
    assert deleted.status == 200  # committed in Postgres; the index stays for an operator

    other = new_user()
    original.set(keys.user(other), b'{"clerkUserId": "' + other.encode() + b'", "email": "\xff"}')
    signed_in = app("searches", "GET", "/api/searches", user=other)
    assert signed_in.status == (503 if name == "dual" else 200)


def test_emoji_lengths_are_counted_in_utf16_units_as_the_original_did(
    app: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    mode(monkeypatch, "dual")
    uid = new_user()
    too_long = app(
        "searches", "POST", "/api/searches", user=uid, json_body={**BODY, "name": "🔥" * 60}
    )
    assert (too_long.status, too_long.json["message"]) == (400, "Name too long (max 100 chars)")
    fits = app("searches", "POST", "/api/searches", user=uid, json_body={**BODY, "name": "🔥" * 50})
    assert fits.status == 201
    sid = fits.json["search"]["id"]
    from shared.redis import get_redis

    client = get_redis()
    assert client is not None
    stored = client.get(keys.saved_search(uid, sid))
    assert stored is not None
    record = parse_saved_search(keys.saved_search(uid, sid), stored, original_rules=True)
    assert record.name == "🔥" * 50  # readable by the original's schema


# --- the original app writing while our API runs ------------------------------------------


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_no_count_or_record_is_lost_while_the_original_app_writes_too(
    app: Caller,
    original: redis.Redis,
    server: LocalRedis,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    from shared.legacy import bridge

    mode(monkeypatch, name)
    uid = new_user()
    counter = seed_pro(original, uid, 125)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported at 125
    ts_ids = [str(uuid.uuid4()) for _ in range(10)]
    turn = threading.Semaphore(0)  # one round of the TypeScript app per request of ours
    failures: list[BaseException] = []

    def typescript_app() -> None:
        """`incrementKeywordUsage` (INCRBY, then EXPIRE) and `createSavedSearch`, straight to
        Redis, a round after each of our keyword searches (it races the mirror that follows)."""
        try:
            with redis.Redis.from_url(server.url) as r:
                for n in range(ORIGINAL_INCREMENTS):
                    if n % (ORIGINAL_INCREMENTS // OUR_SEARCHES + 1) == 0:
                        turn.acquire()
                    r.incrby(counter, 1)
                    r.expire(counter, counter_ttl(next_month_start(utcnow()), utcnow()))
                    if n % 4 == 0:
                        sid = ts_ids[n // 4]
                        record = search_record(uid, sid, created=utcnow(), name=f"TS {n}")
                        r.set(keys.saved_search(uid, sid), dumps(record), ex=keys.ONE_YEAR_S)
                        r.sadd(keys.saved_searches(uid), sid)
        except BaseException as error:  # surfaced below
            failures.append(error)

    writer = threading.Thread(target=typescript_app)
    writer.start()
    ours = []
    for n in range(OUR_SEARCHES):
        keyword_search(app, uid, n)
        turn.release()
        if n % 3 == 0:
            made = app("searches", "POST", "/api/searches", user=uid, json_body=BODY)
            assert made.status == 201
            ours.append(made.json["search"]["id"])
    writer.join()
    assert failures == []
    keyword_search(app, uid, OUR_SEARCHES)  # after the writer: Postgres learns its last counts

    total = 125 + ORIGINAL_INCREMENTS + 2 * (OUR_SEARCHES + 1)
    assert int(original.get(counter) or 0) == total  # nothing of either app overwritten
    assert sql(
        direct_database_url,
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        uid,
    ) == [(total, total)]
    assert 0 < original.ttl(counter) <= 31 * 86_400
    members = {m.decode() for m in original.smembers(keys.saved_searches(uid))}
    assert members == set(ts_ids) | set(ours)
    assert bridge.pending_repairs() == 0


def counted(url: str, uid: str) -> tuple[int, int]:
    [row] = sql(
        url,
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        uid,
    )
    return row[0], row[1]


def searched(call: Caller, uid: str, n: int) -> int:
    body = {"keywords": [f"kettle {n} {k}" for k in range(2)], "matchType": "phrase"}
    return call("keywords", "POST", "/api/keywords", user=uid, json_body=body).status


@pytest.mark.parametrize("tier", ["pro", "pro, Postgres last counted last month", "trial"])
def test_in_dual_the_quota_is_decided_on_the_typescript_app_s_count_too(
    app: Caller,
    original: redis.Redis,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tier: str,
) -> None:
    """s55t6 F1: the TypeScript app counts in Redis while dual runs; a search is refused when
    the larger of the two counts leaves no room for it, however far Postgres lags."""
    monkeypatch.setenv("BILLING_ENABLED", "true")
    mode(monkeypatch, "dual")
    uid = new_user()
    created = utcnow() - timedelta(days=2)
    if tier.startswith("pro"):
        counter, limit = seed_pro(original, uid, 400), 1000
    else:
        record = user_record(uid, f"{uid}@example.com", created=created)
        original.set(keys.user(uid), dumps(record), ex=keys.ONE_YEAR_S)
        original.set(keys.email(record["email"]), uid, ex=keys.ONE_YEAR_S)
        counter, limit = keys.trial_usage(uid, created), 300
        original.set(counter, "100", ex=86_400)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported
    if tier.endswith("last month"):
        sql(
            direct_database_url,
            'UPDATE users SET "monthlyResetAt" = %s WHERE id = %s',
            month_start(utcnow()) - timedelta(days=3),
            uid,
        )
    before = counted(direct_database_url, uid)
    original.incrby(counter, limit - 1 - int(original.get(counter) or 0))  # the TS app's count
    assert int(original.get(counter) or 0) == limit - 1

    assert searched(app, uid, 0) == 429  # 2 keywords: the shared count has room for 1
    assert counted(direct_database_url, uid) == before  # a refusal changes nothing
    assert int(original.get(counter) or 0) == limit - 1
    body = {"keywords": ["last one"], "matchType": "phrase"}
    assert app("keywords", "POST", "/api/keywords", user=uid, json_body=body).status == 200
    assert int(original.get(counter) or 0) == limit
    assert counted(direct_database_url, uid)[1 if tier == "trial" else 0] == limit
    assert searched(app, uid, 1) == 429


def test_parallel_searches_in_dual_never_overshoot_the_shared_count(
    app: Caller, original: redis.Redis, direct_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s55t6 F1: eight searches at once, Postgres at 200 and the TypeScript app's counter at
    990: exactly five fit the 1,000."""
    from shared.legacy import bridge

    monkeypatch.setenv("BILLING_ENABLED", "true")
    mode(monkeypatch, "dual")
    uid = new_user()
    counter = seed_pro(original, uid, 200)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported at 200
    original.set(counter, "990", keepttl=True)
    statuses: list[int] = []

    def one(n: int) -> None:
        statuses.append(searched(app, uid, n))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(statuses) == [200] * 5 + [429] * 3
    assert original.get(counter) == b"1000"
    assert counted(direct_database_url, uid)[0] == 1000
    assert bridge.pending_repairs() == 0


def test_a_legacy_counter_too_large_for_postgres_stays_owed_and_the_search_still_answers(
    app: Caller,
    original: redis.Redis,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.legacy import bridge

    mode(monkeypatch, "dual")
    uid, clean = new_user(), new_user()
    counter = seed_pro(original, uid, 99_999_999_999)  # the backfill quarantines this counter
    clean_counter = seed_pro(original, clean, 10)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported, used 0
    assert app("searches", "GET", "/api/searches", user=clean).status == 200

    keyword_search(app, uid, 1)  # 200, with results and history: not a 500 after charging
    assert sql(
        direct_database_url, 'SELECT count(*) FROM search_history WHERE "userId" = %s', uid
    ) == [(1,)]
    assert original.get(counter) == b"99999999999"  # left untouched
    reason = "legacy key left untouched: usage counter would be larger than 2147483647"
    owed = 'SELECT "userId", delta, error FROM legacy_counter_deltas ORDER BY "userId"'
    assert sql(direct_database_url, owed) == [(uid, 2, reason)]

    # Another user's delta owed too (written while Redis was away): the repair run records the
    # bad counter's reason again and goes on to it.
    sql(
        direct_database_url,
        'INSERT INTO legacy_counter_deltas (id, key, "userId", delta, "expiresAt", "createdAt", '
        '"updatedAt") VALUES (%s, %s, %s, 5, %s, now(), now() + interval \'1 minute\')',
        str(uuid.uuid4()), clean_counter, clean, next_month_start(utcnow()).replace(tzinfo=None),
    )  # fmt: skip
    summary = bridge.repair_pending()
    assert (summary.repaired, summary.failed, summary.remaining) == (1, 1, 1)
    assert original.get(clean_counter) == b"15"
    assert sql(direct_database_url, owed) == [(uid, 2, reason)]
    assert original.get(counter) == b"99999999999"


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_the_reconcile_cron_gives_back_to_both_stores_while_the_original_app_counts(
    app: Caller,
    original: redis.Redis,
    server: LocalRedis,
    direct_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """Six searches of ours were killed after reserving 5 keywords each; the cron gives them
    back in three batches, and after each batch's commit (before our INCRBY) the TypeScript
    app counts a round of its own. Neither store loses a count of either app."""
    from shared import db, storage
    from shared.config import get_settings
    from shared.cron import reservations as reconcile
    from shared.cron.runner import run_job
    from shared.legacy import bridge
    from shared.quotas import Limits
    from shared.repositories import reservations, users

    monkeypatch.setenv("CRON_BATCH_SIZE", "2")
    mode(monkeypatch, name)
    uid = new_user()
    counter = seed_pro(original, uid, 125)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported at 125
    limits, now = Limits.from_settings(get_settings()), utcnow()
    for _ in range(6):

        def killed_search(conn: Any) -> None:
            hold = reservations.Hold(str(uuid.uuid4()), now + timedelta(minutes=5))
            users.reserve_keywords(
                conn, uid, f"{uid}@example.com", 5, limits=limits, enforce=False, now=now,
                hold=hold,
            )  # fmt: skip
            storage.count_legacy_usage(conn, uid, 5, now)

        db.run(killed_search)
        storage.mirror_usage(uid)
    assert int(original.get(counter) or 0) == 125 + 30

    turn, done = threading.Semaphore(0), threading.Semaphore(0)
    failures: list[BaseException] = []

    def typescript_app() -> None:
        try:
            with redis.Redis.from_url(server.url) as r:
                for _ in range(3):
                    assert turn.acquire(timeout=60)
                    for _ in range(ORIGINAL_INCREMENTS // 4):
                        r.incrby(counter, 1)
                        r.expire(counter, counter_ttl(next_month_start(utcnow()), utcnow()))
                    done.release()
        except BaseException as error:  # surfaced below
            failures.append(error)

    real_mirror = storage.mirror_usage

    def after_the_original_counted(user_id: str) -> None:
        turn.release()
        assert done.acquire(timeout=60)
        real_mirror(user_id)

    monkeypatch.setattr(storage, "mirror_usage", after_the_original_counted)
    writer = threading.Thread(target=typescript_app)
    writer.start()
    summary = run_job(reconcile.JOB, now=now + timedelta(minutes=10))
    writer.join()
    assert failures == []
    assert summary["processed"] == 6 and summary["keywordsGivenBack"] == 30

    total = 125 + 3 * (ORIGINAL_INCREMENTS // 4)
    assert int(original.get(counter) or 0) == total  # our give-backs landed as increments
    assert sql(
        direct_database_url,
        'SELECT "keywordSearchesThisMonth", "keywordSearchesTotal" FROM users WHERE id = %s',
        uid,
    ) == [(total, total)]  # Postgres gave back ours and learned the original's
    assert sql(direct_database_url, "SELECT count(*) FROM keyword_reservations") == [(0,)]
    assert bridge.pending_repairs() == 0
    again = run_job(reconcile.JOB, now=now + timedelta(minutes=15))
    assert again["processed"] == 0 and int(original.get(counter) or 0) == total


def test_a_user_record_the_original_rewrites_is_merged_not_overwritten(
    app: Caller, original: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compare-and-set: a record changed between our read and our write is read again."""
    from shared import storage
    from shared.legacy import bridge, store

    mode(monkeypatch, "dual")
    uid = new_user()
    assert app("searches", "GET", "/api/searches", user=uid).status == 200
    real_get = store._get
    rewritten: list[str] = []

    def original_writes_in_between(client: Redis, key: str) -> str | None:
        value = real_get(client, key)
        if key == keys.user(uid) and not rewritten and value is not None:
            record = {**json.loads(value), "keywordsUsedThisMonth": 7}
            original.set(key, dumps(record))  # the TS app's updateUser lands now
            rewritten.append(key)
        return value

    monkeypatch.setattr(store, "_get", original_writes_in_between)
    storage.mirror_user(uid)
    stored = original.get(keys.user(uid))
    assert stored is not None and rewritten == [keys.user(uid)]
    assert parse_user(keys.user(uid), stored.decode()).keywordsUsedThisMonth == 7
    assert bridge.pending_repairs() == 0


def _subscription_event(name: str, uid: str, status: str, created: int) -> str:
    subscription = {
        "id": f"sub_{uid}",
        "object": "subscription",
        "customer": f"cus_{uid}",
        "status": status,
        "created": created,
        "metadata": {"clerkUserId": uid},
    }
    return json.dumps(
        {
            "id": f"evt_{name}_{uid}",
            "object": "event",
            "created": created,
            "type": "customer.subscription.updated",
            "data": {"object": subscription},
        }
    )


@pytest.mark.parametrize("name", ["dual", "fallback"])
def test_a_stripe_tier_change_reaches_the_original_record_keeping_what_it_wrote(
    app: Caller,
    original: redis.Redis,
    emulator: UpstashEmulator,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """Our Stripe webhook writes the tier and Stripe ids into `user:{id}` (the original's shape)
    by the outbox discipline: the copy is owed in the event's transaction, written after the
    commit by compare-and-set, so what the TypeScript app wrote meanwhile is merged, not
    overwritten; with Redis down the event still succeeds and the repair job copies it."""
    import stripe
    from starlette.testclient import TestClient

    from functions import webhooks_stripe
    from shared.legacy import bridge, store

    secret = "whsec_legacy_billing"
    monkeypatch.setenv("BILLING_ENABLED", "true")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", secret)
    mode(monkeypatch, name)
    uid = new_user()
    created = utcnow() - timedelta(days=2)
    record = user_record(uid, f"{uid}@example.com", created=created, stale_usage=3)
    original.set(keys.user(uid), dumps(record), ex=keys.ONE_YEAR_S)
    original.set(keys.email(record["email"]), uid, ex=keys.ONE_YEAR_S)
    assert app("searches", "GET", "/api/searches", user=uid).status == 200  # imported

    real_get = store._get
    rewritten: list[str] = []

    def original_writes_in_between(client: Redis, key: str) -> str | None:
        value = real_get(client, key)
        if key == keys.user(uid) and not rewritten and value is not None:
            changed = {**json.loads(value), "keywordsUsedThisMonth": 9}
            original.set(key, dumps(changed))  # the TS app's updateUser lands now
            rewritten.append(key)
        return value

    def deliver(body: str) -> int:
        signature = stripe.WebhookSignature.generate_signature_header(body, secret)
        with TestClient(webhooks_stripe.app, base_url="https://api.keyflash.test") as client:
            headers = {"content-type": "application/json", "stripe-signature": signature}
            return client.post("/api/webhooks/stripe", content=body, headers=headers).status_code

    def stored() -> Any:
        raw = original.get(keys.user(uid))
        assert raw is not None
        return parse_user(keys.user(uid), raw.decode())

    monkeypatch.setattr(store, "_get", original_writes_in_between)
    now = int(utcnow().timestamp())
    assert deliver(_subscription_event("active", uid, "active", now)) == 200
    monkeypatch.setattr(store, "_get", real_get)
    pro = stored()
    assert rewritten == [keys.user(uid)]
    assert (pro.tier, pro.stripeCustomerId, pro.subscriptionId, pro.subscriptionStatus) == (
        "pro",
        f"cus_{uid}",
        f"sub_{uid}",
        "active",
    )
    assert pro.keywordsUsedThisMonth == 9  # the original's write is kept
    assert (pro.email, iso_ms(pro.trialStartedAt)) == (record["email"], record["trialStartedAt"])
    assert original.get(keys.stripe(f"cus_{uid}")) == uid.encode()
    assert bridge.pending_repairs() == 0

    # Redis down: the event still succeeds (Postgres committed), the copy stays owed.
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")
    reload()
    assert deliver(_subscription_event("canceled", uid, "canceled", now + 60)) == 200
    assert bridge.pending_repairs() == 1
    assert stored().tier == "pro"
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", emulator.url)
    reload()
    summary = bridge.repair_pending()
    assert (summary.repaired, summary.remaining) == (1, 0)
    canceled = stored()
    assert (canceled.tier, canceled.subscriptionStatus) == ("trial", "canceled")
    assert canceled.keywordsUsedThisMonth == 9


# --- Redis killed mid-write ---------------------------------------------------------------------


@pytest.mark.faults
def test_redis_killed_mid_write_loses_nothing_and_never_answers_500(
    api_env: Keys,
    admin_conn: psycopg.Connection[Any],
    direct_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    breaker_clock: BreakerClock,
) -> None:
    """A real redis-server is SIGKILLed after Postgres committed a create and before its copy
    reached Redis. Every request still succeeds (the SDK's pipeline raises AttributeError on
    the emulator's error page: a Redis failure like any other; after three, the container's
    breaker sends none); once Redis is back (empty, as after a crash without persistence) and
    the breaker's pause is over, the repair job makes it whole again."""
    from shared.legacy import bridge, store

    with LocalRedis(tmp_path / "redis") as local, UpstashEmulator(local.url) as up:
        monkeypatch.setenv("UPSTASH_REDIS_REST_URL", up.url)
        monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", up.token)
        mode(monkeypatch, "dual")
        call = Caller("lambda_v2", api_env)
        uid = new_user()
        assert call("searches", "GET", "/api/searches", user=uid).status == 200
        real_write = store.write_saved_search
        writes: list[str] = []

        def killed_on_the_third(client: Redis, user_id: str, search_id: str, search: Any) -> None:
            writes.append(search_id)
            if len(writes) == 3:
                local.kill()  # Postgres has committed this create; Redis dies now
            real_write(client, user_id, search_id, search)

        monkeypatch.setattr(store, "write_saved_search", killed_on_the_third)
        statuses, created = [], []
        for n in range(6):
            made = call("searches", "POST", "/api/searches", user=uid, json_body=BODY)
            statuses.append(made.status)
            if made.status == 201:
                created.append(made.json["search"]["id"])
            body = {"keywords": [f"espresso {n}", f"grinder {n}"], "matchType": "phrase"}
            statuses.append(
                call("keywords", "POST", "/api/keywords", user=uid, json_body=body).status
            )
        assert statuses == [201, 200] * 6 and len(created) == 6

        pending = sql(direct_database_url, "SELECT key, error FROM legacy_repairs ORDER BY key")
        assert {key for key, _ in pending} == {keys.saved_search(uid, s) for s in created[2:]}
        errors = dict(pending)
        assert errors[keys.saved_search(uid, created[2])] == "redis: AttributeError"
        assert set(errors.values()) <= {"redis: AttributeError", "redis: UpstashCircuitOpenError"}
        owed = sql(direct_database_url, "SELECT sum(delta) FROM legacy_counter_deltas")
        assert owed == [(2 * 4,)]  # the four searches after the kill (the third's came after)

        local.start()  # same port, empty: the emulator reconnects
        breaker_clock.end_pause()
        summary = bridge.repair_pending()
        assert (summary.failed, summary.remaining) == (0, 0)
        index = bridge._client().smembers(keys.saved_searches(uid))
        assert set(created[2:]) <= set(index)
        [(total, started)] = sql(
            direct_database_url,
            'SELECT "keywordSearchesTotal", "trialStartedAt" FROM users WHERE id = %s',
            uid,
        )
        assert total == 2 * 6  # Postgres counted every reservation, and learned no less
        trial_counter = keys.trial_usage(uid, started.replace(tzinfo=UTC))
        assert bridge._client().get(trial_counter) == "8"  # what was owed, added once
