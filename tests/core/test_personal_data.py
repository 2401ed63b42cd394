"""Personal data end to end: what is stored (IPs reduced), how long (retention), what erasure
removes (every row and every Redis key) and what the export returns (everything).

Each completeness check enumerates what exists rather than what we remember: tables and columns
come from `information_schema`, Redis keys from a SCAN, key builders from `shared.legacy.keys`.
So a table, column or key added later fails here until it is handled or listed with a reason.
`tests/functions/test_me_api.py` keeps the per-table erasure and export contract; this module
adds the catalog- and keyspace-wide checks. Direct lane only: none of this depends on the pooler.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import insert, text
from upstash_redis import Redis

from shared import config, db, exports, flags, storage
from shared.clock import utcnow
from shared.cron import prune, runner
from shared.legacy import erase_user_keys, keys
from shared.models.webhook_events import WebhookEvent
from shared.redis import get_redis
from shared.repositories import (
    feature_flags,
    organizations,
    partitions,
    personal_data,
    retention,
    system_metrics,
    users,
    webhook_events,
)
from tests.support.http import Caller, Keys

IPV4 = "203.0.113.77"
IPV6 = "2001:db8:85a3::8a2e:370:7334"
VERCEL_IP = "198.51.100.23"
FULL_IP_FORMS = {
    IPV4,
    VERCEL_IP,
    IPV6,
    ipaddress.ip_address(IPV6).exploded,  # 2001:0db8:85a3:0000:0000:8a2e:0370:7334
    "8a2e:370:7334",  # the host part alone is already too much
}
REDUCED = {"203.0.113.0", "198.51.100.0", "2001:db8:85a3::"}
SEARCH = {
    "name": "Coffee",
    "searchParams": {"keywords": ["k"], "matchType": "exact", "location": "US"},
}
TEAM = "org_team"
KEYWORDS = {"keywords": ["espresso", "latte art"], "matchType": "phrase", "location": "US"}


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """What is stored does not depend on the lane: direct only."""
    return direct_database_url


@pytest.fixture
def call(api_env: Keys) -> Caller:
    return Caller("lambda_v2", api_env)


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config.get_settings.cache_clear()


def public_tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        " AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'"
    )
    return {name for (name,) in rows}


def columns(conn: psycopg.Connection[Any], table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    )
    return {name for (name,) in rows}


def rows_mentioning(conn: psycopg.Connection[Any], needles: set[str]) -> dict[str, int]:
    """Per table, the rows in which any column (as JSON text) contains one of `needles`
    (case-insensitively); tables without such rows are left out."""
    found = {}
    for table in sorted(public_tables(conn)):
        row = conn.execute(
            f'SELECT count(*) FROM "{table}" t WHERE EXISTS ('
            " SELECT 1 FROM unnest(%s::text[]) n WHERE strpos(lower(to_jsonb(t)::text), n) > 0)",
            ([needle.lower() for needle in needles],),
        ).fetchone()
        assert row is not None
        if row[0]:
            found[table] = row[0]
    return found


def scan(client: Redis, pattern: str = "*") -> dict[str, Any]:
    """Every key matching `pattern`, with its value (strings, sets) for comparisons.

    The emulator is shared with other test processes, whose keys come and go and may be hashes,
    lists or sorted sets: those are compared by their type, never read with GET (WRONGTYPE).
    """
    cursor, found = 0, []
    while True:
        cursor, batch = client.scan(cursor, match=pattern, count=1000)
        found.extend(batch)
        if cursor == 0:
            break
    values: dict[str, Any] = {}
    for key in found:
        kind = client.type(key)
        if kind == "set":
            values[key] = sorted(client.smembers(key))
        elif kind == "string":
            values[key] = client.get(key)
        else:  # another type, or "none": gone since the SCAN
            values[key] = f"<{kind}>"
    return values


# --- IPs are stored reduced -----------------------------------------------------------------


def traffic_from_distinctive_addresses(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches and list calls from an IPv4 and an IPv6 client through API Gateway (v2 and v1
    events), and from a client behind Vercel's edge (forwarding headers, trusted there)."""
    for style, ip in (("lambda_v2", IPV4), ("lambda_v1", IPV6), ("asgi", IPV6)):
        caller = Caller(style, api_env)
        assert caller("keywords", "POST", "/api/keywords", user="ip_user", json_body=KEYWORDS,
                      source_ip=ip).status == 200  # fmt: skip
        assert (
            caller("searches", "GET", "/api/searches", user="ip_user", source_ip=ip).status == 200
        )
    configure(monkeypatch, VERCEL="1")
    vercel = Caller("asgi", api_env)
    forwarded = {"x-forwarded-for": f"{VERCEL_IP}, 10.0.0.1", "x-real-ip": VERCEL_IP}
    result = vercel("keywords", "POST", "/api/keywords", user="ip_user", json_body=KEYWORDS,
                    headers=forwarded, source_ip="10.0.0.1")  # fmt: skip
    assert result.status == 200
    vercel("history", "GET", "/api/history", user="ip_user", headers=forwarded)


def test_client_ips_are_stored_only_as_their_network(
    api_env: Keys, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/24 for IPv4, /48 for IPv6 (IP_STORAGE=reduced, the default), and the full address in
    no column of any table."""
    traffic_from_distinctive_addresses(api_env, monkeypatch)
    assert rows_mentioning(admin_conn, FULL_IP_FORMS) == {}
    stored = {
        ip
        for table in ("api_usage", "search_history")
        for (ip,) in admin_conn.execute(f'SELECT DISTINCT "ipAddress" FROM {table}')
    }
    assert stored == REDUCED  # every platform's address, each reduced
    assert rows_mentioning(admin_conn, REDUCED).keys() == {"api_usage", "search_history"}


def test_ip_storage_none_stores_no_address_at_all(
    api_env: Keys, admin_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, IP_STORAGE="none")
    traffic_from_distinctive_addresses(api_env, monkeypatch)
    assert rows_mentioning(admin_conn, FULL_IP_FORMS | REDUCED) == {}


def test_a_full_ip_reaches_redis_only_in_hour_long_rate_limit_counters(
    api_env: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous callers are rate limited by address (docs/original-app.md#security-rules: IPs only
    in a 1 h store)."""
    configure(monkeypatch, RATE_LIMIT_ENABLED="true")
    ip = f"203.0.113.{uuid.uuid4().int % 200 + 20}"  # the emulator is shared: a fresh address
    caller = Caller("lambda_v2", api_env)
    caller("health", "GET", "/api/health", source_ip=ip)
    caller("keywords", "POST", "/api/keywords", json_body=KEYWORDS, source_ip=ip)  # 401
    client = get_redis()
    assert client is not None
    holding = [k for k, value in scan(client).items() if k.endswith(f":{ip}") or ip in str(value)]
    assert sorted(k.split(":")[1] for k in holding) == ["health", "keywords"]
    for key in holding:
        assert key.startswith("rate:") and 0 < client.ttl(key) <= 3600


# --- retention --------------------------------------------------------------------------------

# Where each table's personal data ends; every table must be in exactly one of these.
PRUNED_BY_AGE = {"search_history", "api_usage", "webhook_events", "system_metrics"}
KEPT_WITH_REASON = {
    "users": "the account itself: erased by DELETE /api/me or Clerk's user.deleted",
    "saved_searches": "the user's own content: lives with the account (cascade on erasure)",
    "feature_flags": "operator configuration; user ids leave allowedUsers on erasure",
    "legacy_repairs": "outbox: a row lives only until Redis matches Postgres (repair job)",
    "legacy_counter_deltas": "outbox: a delta lives only until Redis has added it (repair "
    "job); an erasure drops the user's",
    "cron_leases": "no personal data: one lease and resume state per job",
    "search_daily_rollups": "no personal data: counts per day and provider",
    "erased_billing_customers": "a SHA-256 of an erased customer's Stripe id, nothing else: "
    "recognises that customer's events for as long as Stripe may send them",
    "keyword_reservations": "transient: a row lives only until its search is recorded, fails "
    "or the reconcile_reservations cron gives it back (minutes); cascade on erasure",
    "account_tombstones": "erasure's retention exception: keyed HMACs, a trial end, a count",
    "data_exports": "deleted by the exports cron once expiresAt passes; with the user on erasure",
    "organizations": "a team's own row (name, tier, counters, billing): lives as long as the "
    "organization; names no member",
    "organization_members": "Clerk's memberships mirrored: the user's are deleted on erasure",
}


def test_every_table_has_a_retention_rule_or_a_reason(
    admin_conn: psycopg.Connection[Any], db_env: str
) -> None:
    """A table added later fails here until the prune job covers it or a reason is written."""
    assert not PRUNED_BY_AGE & KEPT_WITH_REASON.keys()
    assert public_tables(admin_conn) == PRUNED_BY_AGE | KEPT_WITH_REASON.keys()
    settings = config.get_settings()
    assert set(prune.retention_days(settings)) == PRUNED_BY_AGE
    assert set(retention.TARGETS) | set(partitions.LAYOUTS) == PRUNED_BY_AGE
    assert all(days > 0 for days in prune.retention_days(settings).values())  # defaults prune


def test_prune_removes_personal_data_rows_past_their_retention(
    call: Caller, admin_conn: psycopg.Connection[Any]
) -> None:
    """Rows holding personal data (history and usage rows written by real requests, with the
    reduced IP, user agent and user id; ledger rows with a customer's email; metrics tagged
    with a user id), aged one day past their table's retention, are gone after one prune run;
    the same rows one day inside it stay. Unprocessed webhook events stay by design (still owed
    a retry, or kept for a human): the documented exception."""
    for _ in range(2):
        call("keywords", "POST", "/api/keywords", user="old_user", json_body=KEYWORDS)
    for event_id in ("evt_old", "evt_new"):
        db.transaction(
            lambda s, e=event_id: webhook_events.claim(
                s, e, "checkout.session.completed",
                {"data": {"object": {"customer_email": "old.user@example.com"}}},
            )
        )  # fmt: skip
        db.run(lambda s, e=event_id: webhook_events.mark_processed(s, e))
    db.run(
        lambda conn: webhook_events.mark_failed(
            conn, "evt_unprocessed", "invoice.paid", {"customer": "cus_old"}, "no such user"
        )
    )
    sample = system_metrics.Sample("searches.count", 2.0, {"userId": "old_user"})
    db.run(lambda conn: system_metrics.record_many(conn, [sample, sample]))
    days = prune.retention_days(config.get_settings())
    time_columns = {"search_history": "searchedAt", "api_usage": "timestamp",
                    "webhook_events": "createdAt", "system_metrics": "timestamp"}  # fmt: skip
    now = utcnow()
    for table, column in time_columns.items():
        ids = [row[0] for row in admin_conn.execute(f"SELECT id FROM {table} ORDER BY id")]
        assert len(ids) >= 2, table
        old, kept = ids[0::2], ids[1::2]
        if table == "webhook_events":
            old, kept = ["evt_old", "evt_unprocessed"], ["evt_new"]
        for group, age in ((old, days[table] + 1), (kept, days[table] - 1)):
            admin_conn.execute(
                f'UPDATE {table} SET "{column}" = %s WHERE id = ANY(%s)',
                ((now - timedelta(days=age)).replace(tzinfo=None), group),
            )
    summary = runner.run_job(prune.JOB, now=now)
    assert summary["complete"] is True
    for table in time_columns:
        left = admin_conn.execute(
            f'SELECT count(*) FILTER (WHERE "{time_columns[table]}" < %s) FROM {table}',
            ((now - timedelta(days=days[table])).replace(tzinfo=None),),
        ).fetchone()
        expected = 1 if table == "webhook_events" else 0  # evt_unprocessed
        assert left == (expected,), table
    ledger = admin_conn.execute("SELECT id FROM webhook_events ORDER BY id").fetchall()
    assert ledger == [("evt_new",), ("evt_unprocessed",)]


# --- erasure: every row and every Redis key ---------------------------------------------------


@dataclass
class Person:
    user_id: str
    email: str

    @property
    def customer(self) -> str:
        return f"cus_{self.user_id}"

    @property
    def subscription(self) -> str:
        return f"sub_{self.user_id}"

    def identifiers(self) -> set[str]:
        return {self.user_id, self.email, self.customer, self.subscription}

    def token_headers(self, call: Caller) -> dict[str, str]:
        return {"authorization": f"Bearer {call.token(self.user_id, email=self.email)}"}


def person(name: str) -> Person:
    suffix = uuid.uuid4().hex[:10]
    return Person(f"{name}_{suffix}", f"{name}.{suffix}@example.org")


def live_a_little(call: Caller, who: Person, ip: str) -> None:
    """What a user leaves behind through the API: an account, a saved search, keyword searches
    (history, usage rows, counters), Stripe ids, a flag naming them, a ledger row, a metric."""
    headers = who.token_headers(call)
    assert call("me", "GET", "/api/me", headers=headers, source_ip=ip).status == 200
    assert call("searches", "POST", "/api/searches", headers=headers, json_body=SEARCH,
                source_ip=ip).status == 201  # fmt: skip
    for _ in range(2):
        assert call("keywords", "POST", "/api/keywords", headers=headers, json_body=KEYWORDS,
                    source_ip=ip).status == 200  # fmt: skip
    db.run(
        lambda conn: users.update_user(
            conn, who.user_id, stripe_customer_id=who.customer,
            stripe_subscription_id=who.subscription, subscription_status="canceled",
        )
    )  # fmt: skip
    storage.mirror_user(who.user_id)  # the legacy copy (dual mode) gets the stripe: index too
    # A team they belong to and a search they shared with it (it stays, creator-less, on erasure).
    db.run(lambda conn: organizations.ensure(conn, TEAM))
    db.transaction(
        lambda conn: (
            conn.session.execute(
                text(
                    """INSERT INTO organization_members ("organizationId", "userId", role,
                           "updatedAt") VALUES (:org, :user, 'org:member', now())"""
                ),
                {"org": TEAM, "user": who.user_id},
            ),
            conn.session.execute(
                text(
                    """INSERT INTO saved_searches (id, "userId", "organizationId", name,
                           keywords, "updatedAt")
                       VALUES (gen_random_uuid()::text, :user, :org, 'Team', '{mocha}', now())"""
                ),
                {"org": TEAM, "user": who.user_id},
            ),
        )
    )
    event_id = f"evt_{uuid.uuid4().hex[:12]}"  # ids that do not themselves name the user
    payload = {"data": {"object": {"customer": who.customer, "customer_email": who.email,
                                   "metadata": {"clerkUserId": who.user_id}}}}  # fmt: skip
    db.transaction(
        lambda conn: webhook_events.claim(conn, event_id, "checkout.session.completed", payload)
    )
    db.run(
        lambda conn: system_metrics.record_many(
            conn, [system_metrics.Sample("searches.count", 1.0, {"userId": who.user_id})]
        )
    )


def allow_flag(*people: Person) -> None:
    ids = tuple(p.user_id for p in people)
    db.run(
        lambda conn: feature_flags.upsert(
            conn, "beta", feature_flags.FlagValues(enabled=True, allowed_users=ids)
        )
    )
    flags.invalidate_cache()


@pytest.fixture
def two_people(call: Caller) -> Iterator[tuple[Person, Person]]:
    a, b = person("ada"), person("bob")
    live_a_little(call, a, IPV4)
    live_a_little(call, b, VERCEL_IP)
    allow_flag(a, b)
    yield a, b


def test_erasure_leaves_no_row_anywhere_that_mentions_the_user(
    call: Caller, admin_conn: psycopg.Connection[Any], two_people: tuple[Person, Person]
) -> None:
    """After DELETE /api/me, no column of any table (catalog-wide, JSON text) contains the
    user's id, email, Stripe customer or subscription; the other user's rows are untouched."""
    a, b = two_people
    assert rows_mentioning(admin_conn, a.identifiers()).keys() >= {
        "users", "saved_searches", "search_history", "api_usage", "feature_flags",
        "webhook_events", "system_metrics",
    }  # fmt: skip
    before_b = rows_mentioning(admin_conn, b.identifiers())
    result = call("me", "DELETE", "/api/me", headers=a.token_headers(call))
    assert (result.status, result.json) == (200, {"deleted": True})
    assert rows_mentioning(admin_conn, a.identifiers()) == {}
    assert rows_mentioning(admin_conn, b.identifiers()) == before_b


# The builders in `shared.legacy.keys` that are not a user's Redis key, each with the reason.
NOT_USER_KEYS = {
    "erasure": "names a pending erasure in the outbox; not a Redis key",
    "user_id_of": "parser",
    "saved_search_ids_of": "parser",
    "index_owner_of": "parser",
    "glob_escape": "SCAN pattern helper",
    "signed_in": "the rate limiter's identity of a user: part of their `rate_limit` keys",
    "is_users_rate_limit": "matcher (erasure)",
    "is_users_item": "matcher (erasure)",
}
# docs/original-app.md#key-table key families that are never about one user (shared caches, event
# ids).
SHARED_KEY_FAMILIES = {
    "kw:": "keyword cache: keyed by keywords and provider, shared by all users",
    "related:": "related-keyword cache: keyed by seed keyword and provider, shared by all users",
    "brief:": "content-brief cache: keyed by a hash of the keyword, shared by all users",
    "stripe-webhook:": "the original's event marks: event ids only",
}


def legacy_keys_of(who: Person, at: datetime) -> dict[str, str]:
    """Builder name → one key of that kind for `who` (the original app's layout)."""
    return {
        "user": keys.user(who.user_id),
        "email": keys.email(who.email),
        "stripe": keys.stripe(who.customer),
        "lock": keys.lock(who.user_id),
        "usage": keys.usage(who.user_id, at - timedelta(days=40)),
        "trial_usage": keys.trial_usage(who.user_id, at - timedelta(days=3)),
        "saved_searches": keys.saved_searches(who.user_id),
        "saved_search": keys.saved_search(who.user_id, str(uuid.uuid4())),
        "rate_limit": keys.rate_limit("keywords", keys.signed_in(who.user_id)),
    }


def test_every_key_builder_is_covered_by_the_redis_erasure_test() -> None:
    """A key kind added to `shared.legacy.keys` fails here until the erasure test writes one."""
    builders = {
        name
        for name, function in inspect.getmembers(keys, inspect.isfunction)
        if function.__module__ == keys.__name__
    }
    sample = legacy_keys_of(person("x"), utcnow())
    assert builders == sample.keys() | NOT_USER_KEYS.keys()
    assert not sample.keys() & NOT_USER_KEYS.keys()


@pytest.fixture
def dual_mode(api_env: Keys, monkeypatch: pytest.MonkeyPatch) -> Redis:
    """Phase 1 of the migration (writes reach the original Redis layout too), with rate limits
    on: every kind of Redis key a user can come to own is really written."""
    configure(
        monkeypatch,
        STORAGE_MODE="dual",
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_HMAC_SECRET="r" * 32,
        RATE_LIMIT_REQUESTS_PER_HOUR="100",
        # The checks SCAN and read the whole shared emulator, key by key: on a loaded machine
        # one of those calls outlasted the default 1 s (httpx.ReadTimeout in the test's scan).
        REDIS_TIMEOUT_S="10",
    )
    client = get_redis()
    assert client is not None
    return client


def test_erasure_deletes_every_redis_key_of_the_user_and_only_theirs(
    call: Caller, dual_mode: Redis
) -> None:
    """Keys written by real requests (user record, email/stripe index, counters, saved
    searches, per-user rate limits) plus the ones only the original app wrote (lock, last
    month's counter, an unindexed search): after DELETE /api/me none names the user, and the
    other user's keys are exactly as they were."""
    a, b = person("ada"), person("bob")
    now = utcnow()
    for who, ip in ((a, IPV4), (b, VERCEL_IP)):
        live_a_little(call, who, ip)
        for kind, key in legacy_keys_of(who, now).items():
            if not dual_mode.exists(key):
                dual_mode.set(key, "1" if kind != "saved_searches" else who.user_id, ex=86_400)

    def keys_of(who: Person) -> dict[str, Any]:
        return {
            key: value
            for key, value in scan(dual_mode).items()
            if any(i.lower() in key.lower() for i in who.identifiers())
        }

    mine = keys_of(a)
    families = {key.split(":")[0] for key in mine}
    assert families >= {"user", "email", "stripe", "lock", "usage", "trial-usage",
                        "saved-searches", "saved-search", "rate"}, families  # fmt: skip
    theirs = keys_of(b)
    result = call("me", "DELETE", "/api/me", headers=a.token_headers(call))
    assert (result.status, result.json) == (200, {"deleted": True})
    assert keys_of(a) == {}, "left behind"
    assert keys_of(b) == theirs
    assert all(not key.startswith(tuple(SHARED_KEY_FAMILIES)) for key in mine)


def test_redis_erasure_spares_users_whose_id_extends_the_erased_one(api_env: Keys) -> None:
    """The SCAN pattern is a prefix match: `ada_1`'s erasure must not take `ada_10`'s keys."""
    client = get_redis()
    assert client is not None
    gone = f"ada_{uuid.uuid4().hex[:8]}"
    longer = gone + "0"
    doomed = [
        keys.rate_limit("keywords", keys.signed_in(gone)),
        keys.rate_limit("health", keys.signed_in(gone)),
        keys.usage(gone, utcnow()),
    ]
    spared = [
        keys.rate_limit("keywords", keys.signed_in(longer)),
        keys.rate_limit("keywords", f"ip:203.0.113.9:{gone}"),  # not a user's identity
        keys.usage(longer, utcnow()),
        keys.user(longer),
    ]
    for key in doomed + spared:
        client.set(key, "1", ex=600)
    assert erase_user_keys(client, gone, None, None) == len(doomed)
    assert [bool(client.exists(key)) for key in doomed + spared] == [False] * 3 + [True] * 4


# --- export: everything stored about the user -------------------------------------------------

# Table → the export's key for its rows about the caller (whole rows, every stored column).
EXPORTED_ROWS = {
    "users": "user",
    "organization_members": "organizationMemberships",
    "saved_searches": "savedSearches",
    "search_history": "searchHistory",
    "api_usage": "apiUsage",
    "webhook_events": "webhookEvents",
    "system_metrics": "systemMetrics",
}
# Tables that mention a user but are exported in part, or not at all, with the reason.
EXPORTED_OTHERWISE = {
    "feature_flags": "only the keys of the flags naming the caller (`featureFlags`): the rest "
    "of the row is operator configuration and names other users",
    "legacy_repairs": "transient outbox of Redis key names to copy; nothing beyond the user id",
    "legacy_counter_deltas": "transient usage increments owed to the legacy Redis counters: "
    "the counts themselves are in the exported user row",
    "keyword_reservations": "transient quota holds of searches in flight (minutes); the "
    "counters they hold are in `user`",
    "data_exports": "the export requests themselves (status, sizes, storage key of the export "
    "being delivered); nothing about the person beyond the user id",
}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?")


def comparable(value: Any) -> Any:
    """Stored (to_jsonb) and exported values on one footing: timestamps as UTC datetimes."""
    if isinstance(value, str) and TIMESTAMP.fullmatch(value):
        return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=UTC)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def stored_rows_about(
    conn: psycopg.Connection[Any], table: str, who: Person
) -> dict[str, dict[str, Any]]:
    """The table's rows that mention `who` (any column), whole, by id."""
    needles = [i.lower() for i in who.identifiers()]
    rows = conn.execute(
        f'SELECT to_jsonb(t) FROM "{table}" t WHERE EXISTS ('
        " SELECT 1 FROM unnest(%s::text[]) n WHERE strpos(lower(to_jsonb(t)::text), n) > 0)",
        (needles,),
    )
    return {row_key(row): row for (row,) in rows}


def row_key(row: dict[str, Any]) -> str:
    """A row's id; a membership's (the user being the caller) is its organization."""
    return str(row["id"] if "id" in row else row["organizationId"])


def test_the_export_holds_every_stored_column_of_every_row_about_the_caller(
    call: Caller, admin_conn: psycopg.Connection[Any], two_people: tuple[Person, Person]
) -> None:
    """Catalog-driven: every table with a row mentioning the caller is exported or listed with
    a reason; for exported tables, each such row appears with every non-NULL column of the
    table (as `information_schema` lists them) and the stored value; nothing of the other
    user appears."""
    a, b = two_people
    mentioned = rows_mentioning(admin_conn, a.identifiers()).keys()
    with_user_column = {t for t in public_tables(admin_conn) if "userId" in columns(admin_conn, t)}
    assert not EXPORTED_ROWS.keys() & EXPORTED_OTHERWISE.keys()
    assert (mentioned | with_user_column) - {"users"} <= (
        EXPORTED_ROWS.keys() | EXPORTED_OTHERWISE.keys()
    ), "rows about the user in a table the export neither covers nor explains"
    stored = {table: stored_rows_about(admin_conn, table, a) for table in EXPORTED_ROWS}

    result = call("me_export", "GET", "/api/me/export", headers=a.token_headers(call))
    assert result.status == 200, result.text
    body = result.json
    for table, section in EXPORTED_ROWS.items():
        items = body.get(section)
        exported = (
            {items["id"]: items}
            if isinstance(items, dict)
            else {row_key(i): i for i in items or []}
        )
        assert exported.keys() == stored[table].keys(), table
        table_columns = columns(admin_conn, table)
        for row_id, row in stored[table].items():
            assert set(row) == table_columns  # to_jsonb walks the same catalog
            present = {k: v for k, v in row.items() if v is not None}
            assert exported[row_id].keys() == present.keys(), (table, row_id)
            assert comparable(exported[row_id]) == comparable(present), (table, row_id)
    assert body["featureFlags"] == ["beta"]
    leaked = [i for i in b.identifiers() if i.lower() in result.text.lower()]
    assert not leaked, f"the export names the other user: {leaked}"


def test_export_sections_are_exactly_the_listed_ones(
    call: Caller, two_people: tuple[Person, Person]
) -> None:
    a, _ = two_people
    body = call("me_export", "GET", "/api/me/export", headers=a.token_headers(call)).json
    assert set(body) == set(EXPORTED_ROWS.values()) | {"featureFlags", "onErasure"}


def test_the_email_is_matched_in_ledger_rows_whatever_its_case(api_env: Keys) -> None:
    """Emails are case-insensitive (accounts-and-privacy.md): a Stripe payload holding the
    address in capitals is the user's, exported and cleared; ids stay exact."""

    def setup(conn: Any) -> None:
        users.create(conn, "user_m", "user_m@example.com")
        conn.session.execute(insert(WebhookEvent), [
            {"id": "wh_upper", "type": "customer.updated",
             "payload": {"data": {"email": "USER_M@EXAMPLE.COM"}}},
            {"id": "wh_error", "type": "x", "payload": {}, "error": "no user User_M@Example.com"},
            {"id": "wh_other", "type": "x",
             "payload": {"email": "USER_MZ@EXAMPLE.COM", "id": "USER_M"}},
        ])  # fmt: skip

    db.transaction(setup)
    exported = json.loads(exports.build("user_m"))
    assert [row["id"] for row in exported["webhookEvents"]] == ["wh_error", "wh_upper"]
    db.transaction(lambda conn: personal_data.erase(conn, "user_m"))
    left = db.run(
        lambda conn: dict(
            conn.session.execute(text("SELECT id, payload FROM webhook_events")).all()
        )
    )
    assert left == {"wh_upper": None, "wh_error": None,
                    "wh_other": {"email": "USER_MZ@EXAMPLE.COM", "id": "USER_M"}}  # fmt: skip


def test_a_placeholder_email_is_matched_in_ledger_rows_exactly(api_env: Keys) -> None:
    """Reviewer s53r L7: placeholders carry case-sensitive ids (`users_email_lower_key` holds
    them exactly), so another id's placeholder differing only in case is not the user's."""

    def setup(conn: Any) -> None:
        users.create(conn, "user_p", "user_p@keyflash.local")
        conn.session.execute(insert(WebhookEvent), [
            {"id": "wh_mine", "type": "x", "payload": {"email": "user_p@keyflash.local"}},
            {"id": "wh_other", "type": "x", "payload": {"email": "USER_P@keyflash.local"}},
            {"id": "wh_error", "type": "x", "payload": {},
             "error": "no user USER_P@keyflash.local"},
        ])  # fmt: skip

    db.transaction(setup)
    exported = json.loads(exports.build("user_p"))
    assert [row["id"] for row in exported["webhookEvents"]] == ["wh_mine"]
    db.transaction(lambda conn: personal_data.erase(conn, "user_p"))
    left = db.run(
        lambda conn: dict(
            conn.session.execute(
                text("SELECT id, (payload, error)::text FROM webhook_events")
            ).all()
        )
    )
    assert left == {
        "wh_mine": "(,)",
        "wh_other": '("{""email"": ""USER_P@keyflash.local""}",)',
        "wh_error": '({},"no user USER_P@keyflash.local")',
    }
