"""Legacy Redis data in the original app's layout, written through the real upstash-redis SDK.

`user_record` / `search_record` build records exactly as the TypeScript services stored them
(docs/original-app.md#user-service-operations, #saved-search-record); `LegacyDataset` writes
thousands of them with pipelines, plus the invalid records and orphans the backfill must quarantine,
and remembers what it wrote; `write_mess` adds what only a raw Redis connection can write.
Shared by the tests and the migration benchmark.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from upstash_redis import Redis

from shared.clock import iso_ms, next_month_start
from shared.legacy import keys

ONE_YEAR = 31_536_000


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def user_record(
    user_id: str,
    email: str,
    *,
    created: datetime,
    tier: str = "trial",
    customer: str | None = None,
    subscription: str | None = None,
    status: str | None = None,
    stale_usage: int = 0,
) -> dict[str, Any]:
    """What the original `createUser`/`upgradeToProTier` left in `user:{id}`."""
    record: dict[str, Any] = {
        "clerkUserId": user_id,
        "email": email,
        "tier": tier,
        "trialStartedAt": iso_ms(created),
        "trialExpiresAt": iso_ms(created + timedelta(days=7)),
        "keywordsUsedThisMonth": stale_usage,  # vestigial, must never be used
        "monthlyResetAt": iso_ms(next_month_start(created)),
        "createdAt": iso_ms(created),
        "updatedAt": iso_ms(created + timedelta(minutes=5)),
    }
    if customer:
        record["stripeCustomerId"] = customer
    if subscription:
        record["subscriptionId"] = subscription
    if status:
        record["subscriptionStatus"] = status
    return record


def keyword_result(keyword: str, volume: float, *, trends: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {
        "keyword": keyword,
        "searchVolume": volume,
        "difficulty": 42,
        "cpc": 1.25,
        "competition": "medium",
        "intent": "commercial",
    }
    if trends:
        result["trends"] = [{"month": 1, "year": 2026, "volume": 900}]
    return result


def search_record(
    user_id: str,
    search_id: str,
    *,
    created: datetime,
    name: str = "Running shoes",
    keywords: list[str] | None = None,
    description: str | None = None,
    results: list[dict[str, Any]] | None = None,
    language: str | None = "en",
    match_type: str = "phrase",
    last_run: datetime | None = None,
) -> dict[str, Any]:
    """What the original `createSavedSearch` left in `saved-search:{uid}:{sid}`."""
    params: dict[str, Any] = {
        "keywords": keywords or ["trail shoes", "running shoes"],
        "matchType": match_type,
        "location": "US",
    }
    if language is not None:
        params["language"] = language
    metadata: dict[str, Any] = {
        "createdAt": iso_ms(created),
        "updatedAt": iso_ms(created + timedelta(hours=1)),
    }
    if last_run is not None:
        metadata["lastRunAt"] = iso_ms(last_run)
    record: dict[str, Any] = {"id": search_id, "clerkUserId": user_id, "name": name}
    if description is not None:
        record["description"] = description
    record["searchParams"] = params
    if results is not None:
        record["results"] = results
        metadata["resultCount"] = len(results)
    record["metadata"] = metadata
    return record


class Writer:
    """Queues commands on SDK pipelines of `chunk` commands each (one HTTP request per chunk)."""

    def __init__(self, client: Redis, chunk: int = 2000) -> None:
        self.client = client
        self.chunk = chunk
        self.pipe = client.pipeline()
        self.queued = 0
        self.commands = 0

    def _count(self) -> None:
        self.queued += 1
        self.commands += 1
        if self.queued >= self.chunk:
            self.flush()

    def set(self, key: str, value: str, ex: int | None = ONE_YEAR) -> None:
        self.pipe.set(key, value, ex=ex)
        self._count()

    def sadd(self, key: str, *members: str) -> None:
        self.pipe.sadd(key, *members)
        self._count()

    def flush(self) -> None:
        if self.queued:
            self.pipe.exec()
            self.queued = 0


def write_user(w: Writer, record: dict[str, Any]) -> None:
    w.set(keys.user(record["clerkUserId"]), dumps(record))
    w.set(keys.email(record["email"]), record["clerkUserId"])
    if record.get("stripeCustomerId"):
        w.set(keys.stripe(record["stripeCustomerId"]), record["clerkUserId"])


def write_search(w: Writer, record: dict[str, Any], *, indexed: bool = True) -> None:
    uid, sid = record["clerkUserId"], record["id"]
    w.set(keys.saved_search(uid, sid), dumps(record))
    if indexed:
        w.sadd(keys.saved_searches(uid), sid)


def _base36(rng: random.Random, width: int) -> str:
    return "".join(rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(width))


@dataclass
class Expected:
    """What a correct backfill of the dataset must produce."""

    users: int = 0
    searches: int = 0  # copied
    unindexed: int = 0  # items no index set lists: reported (kind `unindexed`), not copied
    invalid: set[str] = field(default_factory=set)
    wrong_type: set[str] = field(default_factory=set)
    orphans: set[str] = field(default_factory=set)
    conflicts: set[str] = field(default_factory=set)

    @property
    def records(self) -> int:
        return self.users + self.searches + self.unindexed


@dataclass
class LegacyDataset:
    """`users` valid users with `searches_per_user` searches each, counters, and bad records."""

    users: int = 2000
    searches_per_user: int = 10
    seed: int = 20261125
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    expected: Expected = field(default_factory=Expected)
    commands: int = 0

    def write(self, client: Redis) -> LegacyDataset:
        rng = random.Random(self.seed)
        w = Writer(client)
        for i in range(self.users):
            self._valid_user(w, rng, i)
        self._bad_users(w)
        self._bad_searches(w, rng)
        self._noise(w)
        w.flush()
        self.commands = w.commands
        return self

    def _created(self, rng: random.Random) -> datetime:
        return self.now - timedelta(
            days=rng.randint(0, 60),
            seconds=rng.randint(0, 86_399),
            milliseconds=rng.randint(0, 999),
        )

    def _valid_user(self, w: Writer, rng: random.Random, i: int) -> None:
        uid = f"user_{i:05d}"
        created = self._created(rng)
        email = f"{uid}@keyflash.local" if i % 7 == 0 else f"Person.{i}@Example.COM"
        pro = i % 3 == 0
        record = user_record(
            uid,
            email,
            created=created,
            tier="pro" if pro else "trial",
            customer=f"cus_{i:06d}" if pro else None,
            subscription=f"sub_{i:06d}" if pro else None,
            status=("past_due" if i % 9 == 0 else "active") if pro else None,
            stale_usage=rng.randint(0, 50),
        )
        write_user(w, record)
        if pro and i % 2 == 0:
            w.set(keys.usage(uid, self.now), str(rng.randint(1, 900)), ex=3600)
        if not pro and i % 2 == 1:
            w.set(keys.trial_usage(uid, created), str(rng.randint(1, 300)), ex=3600)
        self.expected.users += 1
        for j in range(self.searches_per_user):
            if (i * self.searches_per_user + j) % 50 == 0:
                sid = f"{1_700_000_000_000 + i * 100 + j}-{_base36(rng, 7)}"
            else:
                sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            results = None
            if j % 3 == 0:
                results = [keyword_result("trail shoes", 1200), keyword_result("shoes", 90_000)]
            write_search(
                w,
                search_record(
                    uid,
                    sid,
                    created=created + timedelta(hours=j),
                    name=f"Search {j} of {uid}",
                    keywords=[f"keyword {k}" for k in range(1 + j % 4)],
                    description=f"notes {j}" if j % 2 else None,
                    results=results,
                    language=None if j % 4 == 1 else "de",
                    match_type="exact" if j % 2 else "phrase",
                    last_run=created + timedelta(days=1) if j % 5 == 0 else None,
                ),
            )
            self.expected.searches += 1

    def _bad_users(self, w: Writer) -> None:
        created = self.now - timedelta(days=3)
        exp = self.expected
        for k in range(5):
            uid = f"bad_email_{k}"
            write_user(w, {**user_record(uid, "x@y.z", created=created), "email": "not-an-email"})
            exp.invalid.add(keys.user(uid))
            if k == 0:  # searches of a quarantined user are orphans
                for n in range(3):
                    sid = str(uuid.UUID(int=10_000 + n, version=4))
                    write_search(w, search_record(uid, sid, created=created))
                    exp.orphans.add(keys.saved_search(uid, sid))
        for k in range(5):
            uid = f"bad_tier_{k}"
            write_user(w, user_record(uid, f"{uid}@example.com", created=created, tier="gold"))
            exp.invalid.add(keys.user(uid))
        for k in range(5):
            uid = f"bad_json_{k}"
            w.set(keys.user(uid), '{"clerkUserId": "' + uid + '", "email": ')
            exp.invalid.add(keys.user(uid))
        for k in range(2):
            uid = f"null_field_{k}"
            record = {**user_record(uid, f"{uid}@example.com", created=created)}
            record["stripeCustomerId"] = None
            w.set(keys.user(uid), dumps(record))
            exp.invalid.add(keys.user(uid))
        for k in range(2):
            uid = f"wrong_type_{k}"
            w.sadd(keys.user(uid), "not", "json")
            exp.wrong_type.add(keys.user(uid))
        for k in range(2):  # the counter is quarantined, the user copied without it
            uid = f"bad_counter_{k}"
            write_user(w, user_record(uid, f"{uid}@example.com", created=created, tier="pro"))
            w.set(keys.usage(uid, self.now), "lots", ex=3600)
            exp.invalid.add(keys.usage(uid, self.now))
            exp.users += 1
        for k in range(3):  # same email in another case, two ids: the email: index decides
            for side in ("a", "b"):  # b is written last, so the index names b
                uid = f"pair_{side}_{k}"
                email = f"Twin{k}@Example.com" if side == "a" else f"twin{k}@example.COM"
                write_user(w, user_record(uid, email, created=created))
            exp.users += 1
            exp.conflicts.add(keys.user(f"pair_a_{k}"))

    def _bad_searches(self, w: Writer, rng: random.Random) -> None:
        created = self.now - timedelta(days=2)
        exp = self.expected
        owner = "user_00001"

        def new_id() -> str:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))

        # Accepted at create, refused on read by the original (docs/original-app.md#d9).
        for _ in range(10):
            sid = new_id()
            results = [keyword_result("shoes", 1200.5)]
            write_search(w, search_record(owner, sid, created=created, results=results))
            exp.invalid.add(keys.saved_search(owner, sid))
        for _ in range(5):
            sid = new_id()
            w.set(keys.saved_search(owner, sid), '{"id": "' + sid + '", "name": ')
            w.sadd(keys.saved_searches(owner), sid)
            exp.invalid.add(keys.saved_search(owner, sid))
        for _ in range(2):  # the record names another search than its key
            sid = new_id()
            w.set(
                keys.saved_search(owner, sid),
                dumps(search_record(owner, new_id(), created=created)),
            )
            exp.invalid.add(keys.saved_search(owner, sid))
        for k in range(10):
            ghost, sid = f"ghost_{k}", new_id()
            write_search(w, search_record(ghost, sid, created=created))
            exp.orphans.add(keys.saved_search(ghost, sid))
        for _ in range(15):
            sid = new_id()
            w.sadd(keys.saved_searches(owner), sid)  # no item behind it
            exp.orphans.add(keys.saved_search(owner, sid))
        for k in range(4):  # never in the index: the original's list hid them
            uid = f"user_{k + 10:05d}"
            write_search(w, search_record(uid, new_id(), created=created), indexed=False)
            exp.unindexed += 1  # reported, not copied

    def _noise(self, w: Writer) -> None:
        """Keys of other families that the backfill must neither read nor touch."""
        w.set("kw:United States:en:phrase:2bbb2bb4a7032e9d", dumps({"data": []}), ex=600)
        w.set("rate:203.0.113.9:deadbeef", "3", ex=600)
        w.set(keys.lock("user_00002"), "1", ex=600)
        w.set("stripe-webhook:evt_123", "1", ex=600)


def write_mess(data: LegacyDataset, raw: redis.Redis) -> None:
    """What a production keyspace holds beyond the bad records `LegacyDataset` writes through
    the SDK: bytes that are not UTF-8, emoji counted in UTF-16 units, counters of the wrong
    type or not whole numbers, JSON nested too deeply, a date a hair before year 10000, a NUL
    character, index keys of the wrong type or with unreadable members. Written with redis-py
    straight into the Redis behind the emulator (the SDK cannot send invalid UTF-8), as the
    original app or a botched script would have left them; `data.expected` learns every
    outcome. Needs `data.users >= 6` (users 3 to 5 are borrowed)."""
    now, exp = data.now, data.expected
    created = now - timedelta(days=3)

    def user(uid: str, **options: Any) -> dict[str, Any]:
        return user_record(uid, f"{uid}@example.com", created=created, **options)

    def put_user(record: dict[str, Any]) -> None:
        uid = record["clerkUserId"]
        raw.set(keys.user(uid), dumps(record), ex=ONE_YEAR)
        raw.set(keys.email(record["email"]), uid, ex=ONE_YEAR)

    valid = dumps(user("mess_bytes")).encode()
    raw.set(keys.user("mess_bytes"), valid.replace(b"mess_bytes@", b"mess_\xff\xfe@"))
    exp.invalid.add(keys.user("mess_bytes"))
    raw.set(keys.user("mess_deep"), "[" * 100_000 + "]" * 100_000)
    exp.invalid.add(keys.user("mess_deep"))
    raw.set(b"user:\xff\xfe", b"{}")  # a key name that is not UTF-8 (a botched script)
    exp.invalid.add("user:\\xff\\xfe")
    # JS reads …59.999Z, the last millisecond of year 9999, so the record is copied (rounding
    # the fourth digit up would take it past year 9999).
    far = {**user("mess_far_future"), "createdAt": "9999-12-31T23:59:59.9999Z"}
    put_user(far)
    exp.users += 1
    # Counters the original could not have written: each is quarantined, its user copied.
    counters: list[tuple[str, str, Any]] = [
        ("mess_hash_counter", "pro", None),
        ("mess_float_trial", "trial", "12.5"),
        ("mess_huge_counter", "pro", "99999999999"),
        ("mess_bytes_counter", "pro", b"\xff\xfe"),
    ]
    for uid, tier, value in counters:
        put_user(user(uid, tier=tier))
        counter = keys.usage(uid, now) if tier == "pro" else keys.trial_usage(uid, created)
        if value is None:
            raw.hset(counter, "count", "3")
            exp.wrong_type.add(counter)
        else:
            raw.set(counter, value, ex=3600)
            exp.invalid.add(counter)
        exp.users += 1

    owner = "user_00003"
    ids = [str(uuid.UUID(int=0xE1100 + n, version=4)) for n in range(5)]

    def put_search(sid: str, payload: bytes) -> None:
        raw.set(keys.saved_search(owner, sid), payload, ex=ONE_YEAR)
        raw.sadd(keys.saved_searches(owner), sid)

    def utf8(record: dict[str, Any]) -> bytes:
        return json.dumps(record, ensure_ascii=False).encode()  # as JSON.stringify writes

    def search(sid: str, **fields: Any) -> dict[str, Any]:
        return {**search_record(owner, sid, created=created), **fields}

    latin1 = dumps(search(ids[0], name="caf_latin1")).encode().replace(b"caf_latin1", b"caf\xe9")
    put_search(ids[0], latin1)  # Latin-1, not UTF-8
    exp.invalid.add(keys.saved_search(owner, ids[0]))
    emoji = search_record(
        owner, ids[1], created=created, name="🔥" * 50, keywords=["☕ café", "😀 smile"]
    )
    put_search(ids[1], utf8(emoji))  # 100 UTF-16 units: what zod allowed
    exp.searches += 1
    put_search(ids[2], utf8(search(ids[2], name="🔥" * 60)))  # 120 units
    exp.invalid.add(keys.saved_search(owner, ids[2]))
    put_search(ids[3], utf8(search(ids[3], description="tab\u0000nul")))
    exp.invalid.add(keys.saved_search(owner, ids[3]))  # Postgres text cannot hold NUL

    wrong_index = keys.saved_searches("user_00004")  # its items stay, no longer listed
    raw.delete(wrong_index)
    raw.set(wrong_index, "not a set")
    exp.wrong_type.add(wrong_index)
    exp.searches -= data.searches_per_user  # reported as unindexed, not copied
    exp.unindexed += data.searches_per_user
    unreadable_index = keys.saved_searches("user_00005")
    raw.sadd(unreadable_index, b"\xff\xfe")
    exp.invalid.add(unreadable_index)
