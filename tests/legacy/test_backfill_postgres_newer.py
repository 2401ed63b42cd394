"""The backfill never brings back an older state: a row Postgres holds newer (a later
`updatedAt`, or a mirror to Redis still owed), a search deleted with its mirror owed, or an
erased identity (docs/migration-from-redis.md, "What a re-run keeps"). Each is a counted
outcome of the report, and `repair` still deletes what an erasure owes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from upstash_redis import Redis

from devkit.legacy import Tally, backfill, verify
from devkit.upstash_emulator import UpstashEmulator
from shared.clock import iso_ms
from shared.legacy import keys
from tests.support.legacy import (
    Writer,
    scan_all,
    search_record,
    user_record,
    write_search,
    write_user,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=3)


@pytest.fixture
def redis_client() -> Iterator[Redis]:
    with UpstashEmulator() as emulator:
        yield Redis(url=emulator.url, token=emulator.token)


def _sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def _owe(url: str, key: str, kind: str, user_id: str) -> None:
    """What a dual-mode write leaves when Redis was down: the outbox row."""
    _sql(
        url,
        'INSERT INTO legacy_repairs (key, kind, "userId", "updatedAt") VALUES (%s, %s, %s, now())',
        key,
        kind,
        user_id,
    )


def _seed(client: Redis, user_id: str, searches: int = 0) -> list[str]:
    w = Writer(client)
    write_user(w, user_record(user_id, f"{user_id}@example.com", created=CREATED))
    ids = [str(uuid.uuid4()) for _ in range(searches)]
    for search_id in ids:
        write_search(w, search_record(user_id, search_id, created=CREATED, name="old name"))
    w.set(keys.trial_usage(user_id, CREATED), "7")
    w.flush()
    return ids


def test_a_paid_upgrade_whose_mirror_is_owed_survives_a_re_run(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Finding 1: Stripe's webhook upgraded the user while Redis was down."""
    _seed(redis_client, "payer")
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    _sql(
        direct_database_url,
        "UPDATE users SET tier = 'PRO', \"stripeCustomerId\" = 'cus_p', "
        "\"stripeSubscriptionId\" = 'sub_p', \"subscriptionStatus\" = 'active', "
        "\"updatedAt\" = %s WHERE id = 'payer'",
        NOW.replace(tzinfo=None),
    )
    _owe(direct_database_url, keys.user("payer"), "user", "payer")
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert _sql(
        direct_database_url,
        'SELECT tier::text, "stripeCustomerId", "subscriptionStatus" FROM users',
    ) == [("PRO", "cus_p", "active")]
    assert again.quarantined == []
    assert again.users == Tally(kept=1)


def test_a_pending_mirror_alone_keeps_the_row(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Even with an `updatedAt` no later than the record's, an owed mirror means Postgres's
    state is the one Redis must receive, not the other way round."""
    _seed(redis_client, "owed")
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    _sql(direct_database_url, "UPDATE users SET \"subscriptionStatus\" = 'active'")
    _owe(direct_database_url, keys.user("owed"), "user", "owed")
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert _sql(direct_database_url, 'SELECT "subscriptionStatus" FROM users') == [("active",)]
    assert again.users == Tally(kept=1)


def test_a_newer_postgres_row_keeps_its_columns_but_learns_the_counters(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Postgres mode: a change made through the API (later `updatedAt`, no mirror) is kept;
    the TypeScript app's increments (which never touch its record) still raise the count; a
    second run writes nothing."""
    _seed(redis_client, "renamed")
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    _sql(
        direct_database_url,
        "UPDATE users SET email = 'new@example.com', \"updatedAt\" = %s",
        NOW.replace(tzinfo=None),
    )
    redis_client.set(keys.trial_usage("renamed", CREATED), "12")
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert _sql(
        direct_database_url,
        'SELECT email, "keywordSearchesTotal", "keywordSearchesThisMonth" FROM users',
    ) == [("new@example.com", 12, 12)]
    assert again.users == Tally(kept=1)
    before = _sql(direct_database_url, "SELECT xmin::text FROM users")
    assert backfill(redis_client, report_path=tmp_path / "3.json", now=NOW).users == Tally(kept=1)
    assert _sql(direct_database_url, "SELECT xmin::text FROM users") == before


def test_a_renamed_or_deleted_search_is_not_reverted(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """A rename (later `updatedAt`) and a deletion whose Redis mirror is owed stay as they are."""
    renamed, deleted, untouched = _seed(redis_client, "searcher", searches=3)
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    _sql(
        direct_database_url,
        "UPDATE saved_searches SET name = 'new name', \"updatedAt\" = %s WHERE id = %s",
        NOW.replace(tzinfo=None),
        renamed,
    )
    _sql(direct_database_url, "DELETE FROM saved_searches WHERE id = %s", deleted)
    _owe(direct_database_url, keys.saved_search("searcher", deleted), "saved_search", "searcher")
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert sorted(_sql(direct_database_url, "SELECT id, name FROM saved_searches")) == sorted(
        [(renamed, "new name"), (untouched, "old name")]
    )
    assert again.saved_searches == Tally(unchanged=1, kept=2)


def test_an_erasure_redis_has_not_seen_is_not_undone(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Finding 2: erased while Redis was down. The backfill imports nothing of the identity
    (counted as erased), verify is not clean while the keys remain, and repair deletes them."""
    from shared import accounts, db
    from shared.legacy import bridge

    _seed(redis_client, "gone", searches=2)
    _seed(redis_client, "stays")
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)

    def erase(conn: db.Conn) -> None:
        accounts.erase(conn, "gone")
        bridge.mark_erasure(conn, "gone")  # what dual mode commits with the erasure

    db.transaction(erase)
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert _sql(direct_database_url, "SELECT id FROM users") == [("stays",)]
    assert _sql(direct_database_url, "SELECT count(*) FROM saved_searches") == [(0,)]
    assert again.quarantined == []
    assert again.users == Tally(unchanged=1, erased=1)
    assert again.saved_searches == Tally(erased=2)
    assert verify(redis_client, now=NOW) != []  # the erased person's keys are still there

    summary = bridge.repair_pending(redis_client)
    assert (summary.repaired, summary.remaining) == (1, 0)
    assert [k for k in scan_all(redis_client) if "gone" in k] == []
    assert verify(redis_client, now=NOW) == []


def test_a_tombstone_alone_keeps_the_identity_out(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """An erasure made with no Redis configured (postgres mode) owes nothing to Redis, but
    its tombstone still says the identity is erased: a later backfill does not import it."""
    from shared import accounts, db

    _seed(redis_client, "tomb", searches=1)
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    db.transaction(lambda conn: accounts.erase(conn, "tomb"))
    _sql(direct_database_url, "DELETE FROM legacy_repairs")
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert _sql(direct_database_url, "SELECT count(*) FROM users") == [(0,)]
    assert (again.users, again.saved_searches) == (Tally(erased=1), Tally(erased=1))


def test_repair_deletes_an_owed_erasure_even_when_the_row_came_back(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Something recreated the row after the erasure (a sign-in, an old backfill): the owed
    deletion still happens, and the row left behind shows in verify."""
    from shared import db
    from shared.legacy import bridge
    from shared.repositories import tombstones

    _seed(redis_client, "back", searches=1)
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)

    def erased_then_recreated(conn: db.Conn) -> None:
        tombstones.record(conn, "back")  # what every erasure keeps
        bridge.mark_erasure(conn, "back")  # the Redis deletion, owed

    db.transaction(erased_then_recreated)
    summary = bridge.repair_pending(redis_client)
    assert (summary.repaired, summary.remaining) == (1, 0)
    assert [k for k in scan_all(redis_client) if "back" in k] == []
    differences = [str(d) for d in verify(redis_client, now=NOW)]
    assert 'user:back row: redis="missing" postgres="present"' in differences


def test_reattach_leaves_out_a_stripe_id_another_row_holds_and_goes_on(
    redis_client: Redis,
    db_env: str,
    direct_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Finding 6 (it crashed on the unique index and abandoned the next ids): a Stripe id
    another row holds is left out (the account keeps its tier; support decides whose customer
    it is), and every id is reattached."""
    from devkit.legacy import reattach

    w = Writer(redis_client)
    write_user(w, user_record("st1", "st1@example.com", created=CREATED, tier="pro",
                              customer="cus_SAME", subscription="sub_1"))  # fmt: skip
    w.flush()
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    w = Writer(redis_client)  # the conflicts, written after: the index keys stay st1's
    w.set(keys.user("st4"), json.dumps(user_record("st4", "st4@example.com", created=CREATED,
          tier="pro", customer="cus_SAME", subscription="sub_4")))  # fmt: skip
    w.set(keys.user("caseF"), json.dumps(user_record("caseF", "ST1@example.com", created=CREATED)))
    w.flush()
    assert reattach(redis_client, ["st4", "caseF"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "user:st4: reattached, 0 saved search(es) imported",
        "user:caseF: reattached, 0 saved search(es) imported",
    ]
    rows = _sql(direct_database_url, 'SELECT id, "stripeCustomerId", tier::text FROM users')
    assert sorted(rows) == [("caseF", None, "FREE"), ("st1", "cus_SAME", "PRO"),
                            ("st4", None, "PRO")]  # fmt: skip


@pytest.mark.parametrize("owner", ["st_a", "st_b"])
def test_the_stripe_index_decides_who_keeps_a_shared_customer(
    owner: str, redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Finding 10: two records on one customer; `stripe:{cus}` (the original's answer to
    "whose customer is this") decides, whatever order SCAN meets them in."""
    w = Writer(redis_client)
    for user_id in ("st_a", "st_b"):
        write_user(w, user_record(user_id, f"{user_id}@example.com", created=CREATED,
                                  tier="pro", customer="cus_SHARED"))  # fmt: skip
    w.set(keys.stripe("cus_SHARED"), owner)
    w.flush()
    report = backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    assert _sql(
        direct_database_url, 'SELECT id FROM users WHERE "stripeCustomerId" = %s', "cus_SHARED"
    ) == [(owner,)]
    other = "st_b" if owner == "st_a" else "st_a"
    assert [(q.key, q.kind, q.reason) for q in report.quarantined] == [
        (
            keys.user(other),
            "conflict",
            f"the stripe: index key of its Stripe customer id names user:{owner}",
        )
    ]


def test_an_email_swap_and_a_handover_converge_in_one_run(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """Finding 9: the TypeScript app swapped two users' addresses, and gave a third user's
    old address to a new user (index keys moved with them): one re-run follows the `email:`
    index, a second writes nothing."""
    w = Writer(redis_client)
    for user_id in ("sw_a", "sw_b", "mover"):
        write_user(w, user_record(user_id, f"{user_id}@example.com", created=CREATED))
    w.flush()
    backfill(redis_client, report_path=tmp_path / "1.json", now=NOW)
    later = NOW - timedelta(hours=1)
    w = Writer(redis_client)
    for user_id, email in (
        ("sw_a", "sw_b@example.com"),
        ("sw_b", "sw_a@example.com"),
        ("mover", "moved@example.com"),
        ("aaa_new", "mover@example.com"),
    ):
        record = user_record(user_id, email, created=CREATED)
        record["updatedAt"] = iso_ms(later)
        write_user(w, record)
    w.flush()
    again = backfill(redis_client, report_path=tmp_path / "2.json", now=NOW)
    assert sorted(_sql(direct_database_url, "SELECT id, email FROM users")) == [
        ("aaa_new", "mover@example.com"),
        ("mover", "moved@example.com"),
        ("sw_a", "sw_b@example.com"),
        ("sw_b", "sw_a@example.com"),
    ]
    assert again.quarantined == []
    assert again.users == Tally(inserted=1, updated=3)
    third = backfill(redis_client, report_path=tmp_path / "3.json", now=NOW)
    assert third.users == Tally(unchanged=4)
    assert verify(redis_client, now=NOW) == []
