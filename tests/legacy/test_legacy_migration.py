"""Backfill and verify: the original Redis layout (docs/original-app.md#redis-layout) copied into
Postgres (devkit.legacy).

The legacy data is written in the original layout through the real upstash-redis SDK into the
Upstash emulator, and read back the same way. The large dataset (2,000 users, 20,000 saved
searches, counters, invalid records and orphans) is generated once per module and backfilled on
the direct lane; the targeted tests use small data and run on both lanes.
`pytest -s` prints the measured backfill throughput.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from upstash_redis import Redis

from devkit import legacy
from devkit.legacy import Difference, Tally, backfill, default_checkpoint, verify
from devkit.upstash_emulator import UpstashEmulator
from shared.clock import iso_ms, month_start, next_month_start
from shared.contracts import saved_searches as contract
from shared.legacy import erase_user_keys, keys
from shared.legacy.mapping import counter_ttl
from shared.legacy.schemas import LegacyRecordError, parse_saved_search, parse_user, storable
from shared.repositories.legacy_import import saved_searches_by_id
from tests.support.legacy import (
    LegacyDataset,
    Writer,
    assert_outcomes,
    keyword_result,
    quarantined,
    scan_all,
    search_record,
    snapshot_values,
    user_record,
    write_search,
    write_user,
)
from tests.support.processes import ROOT, child_env
from tests.support.redis import LocalRedis

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def legacy_backend() -> Iterator[str | None]:
    """A private redis-server behind the emulators when installed (faster and the real thing),
    else None: each emulator then has its own in-process fakeredis."""
    if not LocalRedis.binary():
        yield None
        return
    with (
        tempfile.TemporaryDirectory(prefix="keyflash-legacy-") as tmp,
        LocalRedis(Path(tmp)) as server,
    ):
        yield server.url


def _emulated(backend: str | None, db: int) -> Iterator[Redis]:
    url = None if backend is None else backend.rsplit("/", 1)[0] + f"/{db}"
    with UpstashEmulator(url) as emulator:
        yield Redis(url=emulator.url, token=emulator.token)


@pytest.fixture(scope="module")
def big_redis(legacy_backend: str | None) -> Iterator[Redis]:
    """The large dataset's Redis (database 1 of the private server: nothing else in it)."""
    yield from _emulated(legacy_backend, 1)


@pytest.fixture(scope="module")
def dataset(big_redis: Redis) -> LegacyDataset:
    started = time.perf_counter()
    data = LegacyDataset().write(big_redis)
    print(
        f"\nlegacy dataset: {data.expected.users} users, {data.expected.searches} saved searches, "
        f"{data.commands} commands in {time.perf_counter() - started:.1f}s"
    )
    return data


@pytest.fixture(scope="module")
def small_redis(legacy_backend: str | None) -> Iterator[Redis]:
    yield from _emulated(legacy_backend, 2)


@pytest.fixture(scope="module")
def small(small_redis: Redis) -> LegacyDataset:
    """Every kind of record of the large dataset, at 1/16 the size: for interruption tests."""
    return LegacyDataset(users=125, searches_per_user=8).write(small_redis)


@pytest.fixture
def redis_client() -> Iterator[Redis]:
    """A fresh, empty legacy Redis for one test (nothing is ever flushed)."""
    with UpstashEmulator() as emulator:
        yield Redis(url=emulator.url, token=emulator.token)


@pytest.fixture
def direct_env(
    direct_database_url: str, clean_tables: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The app on the direct lane only: for the large dataset, one lane is enough."""
    from shared.config import get_settings
    from shared.db import dispose_engine

    monkeypatch.setenv("DATABASE_URL", direct_database_url)
    monkeypatch.setenv("DIRECT_DATABASE_URL", direct_database_url)
    get_settings.cache_clear()
    dispose_engine()
    yield direct_database_url
    dispose_engine()
    get_settings.cache_clear()


def row_versions(url: str) -> dict[str, tuple[str, datetime]]:
    """Every row's xmin and updatedAt: equal before and after means nothing was rewritten."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT 'u:' || id, xmin::text, \"updatedAt\" FROM users "
            "UNION ALL SELECT 's:' || id, xmin::text, \"updatedAt\" FROM saved_searches"
        ).fetchall()
    return {key: (xmin, updated) for key, xmin, updated in rows}


def count_rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


# --- the large dataset ------------------------------------------------------------------------


def test_large_backfill_verifies_clean_and_a_second_run_changes_nothing(
    dataset: LegacyDataset, big_redis: Redis, direct_env: str, tmp_path: Path
) -> None:
    expected = dataset.expected
    lines: list[str] = []
    report_path = tmp_path / "report.json"
    report = backfill(
        big_redis,
        batch_size=1000,
        report_path=report_path,
        progress=lambda p: lines.append(p.line()),
        now=dataset.now,
    )
    print(
        f"\nbackfill: {report.records_read} records in {report.elapsed_s:.2f}s = "
        f"{report.records_per_s:,.0f} records/s ({report.batches} batches)"
    )

    assert report.complete and not default_checkpoint(report_path).exists()
    assert_outcomes(report, expected)
    assert count_rows(direct_env, "users") == expected.users
    assert count_rows(direct_env, "saved_searches") == expected.searches
    assert lines and lines[-1].startswith("[indexes]") and "records/s" in lines[-1]
    written = json.loads(report_path.read_text())
    assert written["complete"] is True and written["records_per_s"] > 0
    assert written["quarantined_by_kind"]["orphan"] == len(expected.orphans)

    assert verify(big_redis, now=dataset.now) == []

    before = row_versions(direct_env)
    again = backfill(
        big_redis, batch_size=1000, report_path=tmp_path / "again.json", now=dataset.now
    )
    assert again.users == Tally(unchanged=expected.users)
    assert again.saved_searches == Tally(unchanged=expected.searches)
    assert row_versions(direct_env) == before  # same xmin and updatedAt: no row was rewritten


def test_an_interrupted_backfill_resumes_from_its_checkpoint(
    small: LegacyDataset, small_redis: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    checkpoint = default_checkpoint(report_path)
    seen: list[legacy.Progress] = []

    def interrupt_midway(progress: legacy.Progress) -> None:
        seen.append(progress)
        searches_batches = [p for p in seen if p.phase == "saved_searches"]
        if len(searches_batches) == 3:
            raise KeyboardInterrupt  # Ctrl-C, after the batch committed and was checkpointed

    with pytest.raises(KeyboardInterrupt):
        backfill(
            small_redis,
            batch_size=100,
            scan_count=100,
            report_path=report_path,
            progress=interrupt_midway,
            now=small.now,
        )
    state = json.loads(checkpoint.read_text())
    assert state["phase"] == "saved_searches" and state["cursor"] != 0
    partial = json.loads(report_path.read_text())
    assert partial["complete"] is False
    copied = count_rows(direct_database_url, "saved_searches")
    assert 0 < copied < small.expected.searches
    assert count_rows(direct_database_url, "users") == small.expected.users

    resumed: list[legacy.Progress] = []
    report = backfill(
        small_redis,
        batch_size=100,
        scan_count=100,
        report_path=report_path,
        progress=resumed.append,
        now=small.now,
    )
    assert resumed[0].phase == "saved_searches"  # the users were not read again
    assert resumed[0].batches == seen[-1].batches + 1
    assert report.complete and not checkpoint.exists()
    # One report across both runs: every record counted once, quarantines kept.
    assert report.users == Tally(inserted=small.expected.users)
    assert report.saved_searches == Tally(inserted=small.expected.searches)
    assert quarantined(report, "invalid") == small.expected.invalid
    assert quarantined(report, "orphan") == small.expected.orphans
    assert verify(small_redis, now=small.now) == []


def test_resuming_replays_a_batch_that_committed_before_its_checkpoint(
    small: LegacyDataset, small_redis: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """A crash between a batch's COMMIT and its checkpoint: the batch is read again and its
    upsert changes nothing."""
    report_path = tmp_path / "report.json"
    checkpoint = default_checkpoint(report_path)
    saved: list[str] = []

    def keep_first_checkpoint(progress: legacy.Progress) -> None:
        if progress.phase == "saved_searches" and not saved:
            saved.append(checkpoint.read_text())  # the state after the first item batch
        elif (
            progress.phase == "saved_searches"
            and progress.batches == int(json.loads(saved[0])["report"]["batches"]) + 2
        ):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill(
            small_redis,
            batch_size=100,
            scan_count=100,
            report_path=report_path,
            progress=keep_first_checkpoint,
            now=small.now,
        )
    checkpoint.write_text(saved[0])  # as if the last two checkpoints were never written
    report = backfill(
        small_redis, batch_size=100, scan_count=100, report_path=report_path, now=small.now
    )
    replayed = report.saved_searches.unchanged  # read again, found equal, not rewritten
    assert replayed > 0 and report.saved_searches.updated == 0
    assert report.saved_searches.inserted + replayed == small.expected.searches
    assert count_rows(direct_database_url, "saved_searches") == small.expected.searches
    assert verify(small_redis, now=small.now) == []


# --- targeted: mapping, quarantine, verify, CLI ---------------------------------------------


def test_users_are_mapped_with_their_real_usage_counters(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    created = datetime(2026, 11, 15, 23, 30, 0, 123_000, tzinfo=UTC)
    w = Writer(redis_client)
    pro = user_record(
        "user_pro", "Pro@Example.com", created=created, tier="pro", customer="cus_1",
        subscription="sub_1", status="active", stale_usage=999,
    )  # fmt: skip
    trial = user_record("user_trial", "trial@example.com", created=created, stale_usage=77)
    idle = user_record("user_idle", "idle@example.com", created=created, tier="pro")
    for record in (pro, trial, idle):
        write_user(w, record)
    w.set(keys.usage("user_pro", NOW), "412")
    w.set(keys.usage("user_pro", NOW - timedelta(days=40)), "999")  # an older month: not ours
    w.set(keys.trial_usage("user_trial", created), "120")
    w.flush()

    backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    with psycopg.connect(direct_database_url) as conn:
        rows = {
            row[0]: row[1:]
            for row in conn.execute(
                'SELECT id, email, tier::text, "keywordSearchesThisMonth", "keywordSearchesTotal",'
                ' "monthlyResetAt", "stripeCustomerId", "stripeSubscriptionId",'
                ' "subscriptionStatus", "trialStartedAt", "trialEndsAt", "createdAt", "updatedAt"'
                " FROM users"
            )
        }
    naive = created.replace(tzinfo=None)
    start = month_start(NOW).replace(tzinfo=None)
    assert rows["user_pro"] == (
        "Pro@Example.com", "PRO", 412, 412, start, "cus_1", "sub_1", "active", naive,
        naive + timedelta(days=7), naive, naive + timedelta(minutes=5),
    )  # fmt: skip
    assert rows["user_trial"][:5] == ("trial@example.com", "FREE", 120, 120, start)
    assert rows["user_trial"][5:8] == (None, None, None)
    assert rows["user_idle"][2:4] == (0, 0)
    assert verify(redis_client, now=NOW) == []


def test_saved_searches_keep_their_ids_and_read_back_as_the_original_record(
    redis_client: Redis, db_env: str, tmp_path: Path
) -> None:
    created = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    legacy_id, modern_id = "1700000000000-abc1234", str(uuid.uuid4())
    full = search_record(
        "user_a", legacy_id, created=created, description="Q3", language="de",
        results=[keyword_result("trail shoes", 1200)], last_run=created + timedelta(days=2),
    )  # fmt: skip
    bare = search_record("user_a", modern_id, created=created, language=None)
    w = Writer(redis_client)
    write_user(w, user_record("user_a", "a@example.com", created=created))
    write_search(w, full)
    write_search(w, bare)
    w.flush()

    backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    from shared import db

    rows = db.run(lambda conn: saved_searches_by_id(conn, [legacy_id, modern_id]))
    assert rows[legacy_id]["resultCount"] == 1 and rows[legacy_id]["keywordCount"] == 2
    assert rows[legacy_id]["lastAccessedAt"] == rows[legacy_id]["lastRunAt"]
    # Absent in Redis (docs/original-app.md#redis-to-postgres-field-mapping).
    assert rows[modern_id]["language"] == "en"
    assert rows[modern_id]["results"] is None and rows[modern_id]["resultCount"] is None

    from shared.legacy.mapping import orm, saved_search_row
    from shared.models.saved_searches import SavedSearch

    # What the API now answers for the migrated row is the record the original stored.
    assert contract.record(orm(SavedSearch, rows[legacy_id])) == full
    assert contract.record(orm(SavedSearch, rows[modern_id])) == {
        **bare,
        "searchParams": {**bare["searchParams"], "language": "en"},
    }
    assert orm(SavedSearch, saved_search_row(parse_saved_search(
        keys.saved_search("user_a", legacy_id), json.dumps(full), original_rules=True
    ))).id == legacy_id  # fmt: skip


def test_each_kind_of_bad_record_is_quarantined_with_a_reason_and_no_value(
    redis_client: Redis, db_env: str, tmp_path: Path
) -> None:
    created = NOW - timedelta(days=1)
    w = Writer(redis_client)
    write_user(w, user_record("ok", "secret.person@example.com", created=created))
    write_user(w, {**user_record("bad_mail", "x@y.z", created=created), "email": "secret@@x"})
    write_user(w, user_record("bad_tier", "t@example.com", created=created, tier="gold"))
    w.set(keys.user("bad_json"), "{nope")
    w.set(keys.user("mismatch"), json.dumps(user_record("someone_else", "m@x.io", created=created)))
    w.sadd(keys.user("a_set"), "x")
    sid = str(uuid.uuid4())
    write_search(w, search_record("ok", sid, created=created, results=[keyword_result("k", 1.5)]))
    w.sadd(keys.saved_searches("ok"), "not-an-id")
    w.set("saved-search:broken", "{}")
    w.set(keys.saved_searches("ok") + "x", "a string where a set belongs")
    w.flush()

    report = backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    reasons = {q.key: (q.kind, q.reason) for q in report.quarantined}
    assert reasons["user:bad_mail"] == (
        "invalid",
        "email: Value error, must be a valid email address",
    )
    assert reasons["user:bad_tier"][0] == "invalid" and "tier" in reasons["user:bad_tier"][1]
    assert reasons["user:bad_json"][1].startswith("malformed JSON")
    assert reasons["user:mismatch"][1] == "clerkUserId does not match the key"
    assert reasons["user:a_set"] == ("wrong_type", "expected a string holding JSON, found set")
    assert "must be an integer" in reasons[keys.saved_search("ok", sid)][1]
    assert reasons["saved-search:ok:not-an-id"] == (
        "orphan",
        "listed in its index set but has no item",
    )
    assert reasons["saved-search:broken"][0] == "invalid"
    assert reasons["saved-searches:okx"][0] == "wrong_type"
    assert "secret" not in json.dumps([q.reason for q in report.quarantined])  # no values
    assert report.users == Tally(inserted=1)
    assert report.saved_searches == Tally()


def test_what_js_could_hold_but_the_original_could_not_read_or_postgres_store_is_quarantined(
    redis_client: Redis, db_env: str, tmp_path: Path
) -> None:
    """JSON as JS wrote it: a half-cut emoji escaped as a lone surrogate, `1e400` (JS reads
    Infinity; zod refuses it), a `NaN` literal (not JSON), a trailing newline in an address.
    Each is quarantined with a reason and no value, the good records of the same batch are
    written, and verify, reading the same way, finds nothing missing."""
    created = NOW - timedelta(days=1)
    w = Writer(redis_client)
    write_user(w, user_record("good", "good@example.com", created=created))
    cut = json.dumps(user_record("cut", "cut@example.com", created=created, customer="cus_X"))
    w.set(keys.user("cut"), cut.replace("cus_X", "cus_X\\ud83d"))
    write_user(w, user_record("newline", "newline@example.com\n", created=created))
    stamp = user_record("stamp", "stamp@example.com", created=created)
    write_user(w, {**stamp, "createdAt": stamp["createdAt"] + "\n"})
    ids = {name: str(uuid.uuid4()) for name in ("kept", "huge", "nan", "surrogate")}
    for name, sid in ids.items():
        record = search_record("good", sid, created=created, results=[keyword_result("k", 90)])
        raw = json.dumps(record)
        raw = {
            "kept": raw,
            "huge": raw.replace('"cpc": 1.25', '"cpc": 1e400'),
            "nan": raw.replace('"cpc": 1.25', '"cpc": NaN'),
            "surrogate": raw.replace('"trail shoes"', '"trail \\udc00shoes"'),
        }[name]
        assert raw != json.dumps(record) or name == "kept"
        w.set(keys.saved_search("good", sid), raw)
        w.sadd(keys.saved_searches("good"), sid)
    w.flush()

    report = backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    assert report.complete
    reasons = {q.key: (q.kind, q.reason) for q in report.quarantined}
    surrogate = "holds an unpaired UTF-16 surrogate, which Postgres cannot store"
    assert reasons == {
        "user:cut": ("invalid", surrogate),
        "user:newline": ("invalid", "email: Value error, must be a valid email address"),
        "user:stamp": (
            "invalid",
            "createdAt: Value error, must be an ISO 8601 timestamp in UTC ending in Z",
        ),
        keys.saved_search("good", ids["huge"]): (
            "invalid",
            "results.0.cpc: Value error, must be a finite number",
        ),
        keys.saved_search("good", ids["nan"]): ("invalid", "malformed JSON (NaN is not JSON)"),
        keys.saved_search("good", ids["surrogate"]): ("invalid", surrogate),
    }
    assert report.users == Tally(inserted=1)
    assert report.saved_searches == Tally(inserted=1)
    assert verify(redis_client, echo=lambda line: None, now=NOW) == []


def test_backfill_only_reads_redis(redis_client: Redis, db_env: str, tmp_path: Path) -> None:
    small = LegacyDataset(users=30, searches_per_user=3).write(redis_client)
    before = snapshot_values(redis_client, scan_all(redis_client))
    report = backfill(redis_client, batch_size=7, scan_count=10, report_path=tmp_path / "r.json")
    assert report.users.inserted == small.expected.users
    assert snapshot_values(redis_client, scan_all(redis_client)) == before


def test_verify_prints_every_difference(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    created = NOW - timedelta(days=2)
    sid, gone = str(uuid.uuid4()), str(uuid.uuid4())
    w = Writer(redis_client)
    write_user(w, user_record("u1", "u1@example.com", created=created, tier="pro"))
    write_user(w, user_record("u2", "u2@example.com", created=created))
    write_search(w, search_record("u1", sid, created=created, name="Original"))
    write_search(w, search_record("u1", gone, created=created))
    w.flush()
    backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        conn.execute("UPDATE saved_searches SET name = 'Renamed' WHERE id = %s", (sid,))
        conn.execute("DELETE FROM saved_searches WHERE id = %s", (gone,))
        conn.execute("UPDATE users SET tier = 'FREE' WHERE id = 'u1'")
        conn.execute("UPDATE users SET tier = 'ENTERPRISE' WHERE id = 'u2'")  # trial ≠ enterprise
    lines: list[str] = []
    differences = verify(redis_client, echo=lines.append, now=NOW)
    assert sorted(differences, key=str) == sorted(
        [
            Difference("user:u1", "tier", legacy.UserTier.PRO, legacy.UserTier.FREE),
            Difference("user:u2", "tier", legacy.UserTier.FREE, legacy.UserTier.ENTERPRISE),
            Difference(keys.saved_search("u1", sid), "name", "Original", "Renamed"),
            Difference(keys.saved_search("u1", gone), "row", "present", "missing"),
        ],
        key=str,
    )
    assert f'{keys.saved_search("u1", sid)} name: redis="Original" postgres="Renamed"' in lines
    assert "user:u1 tier: redis=PRO postgres=FREE" in lines


def test_backfill_merges_what_postgres_knows_better(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """ENTERPRISE stays (Redis calls it pro), the lifetime total only grows."""
    created = NOW - timedelta(days=2)
    w = Writer(redis_client)
    write_user(w, user_record("big", "big@example.com", created=created, tier="pro"))
    w.set(keys.usage("big", NOW), "10")
    w.flush()
    backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE users SET tier = 'ENTERPRISE', \"keywordSearchesTotal\" = 5000 WHERE id = 'big'"
        )
    again = backfill(redis_client, report_path=tmp_path / "r2.json", now=NOW)
    assert again.users == Tally(unchanged=1)
    with psycopg.connect(direct_database_url) as conn:
        row = conn.execute(
            "SELECT tier::text, \"keywordSearchesTotal\" FROM users WHERE id = 'big'"
        ).fetchone()
    assert row == ("ENTERPRISE", 5000)
    assert verify(redis_client, now=NOW) == []


def test_cli_backfill_verify_and_exit_codes(
    redis_client: Redis,
    db_env: str,
    direct_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = Writer(redis_client)
    write_user(w, user_record("cli", "cli@example.com", created=NOW - timedelta(days=1)))
    w.flush()
    url = redis_client._url
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", redis_client._headers["Authorization"][7:])
    report = tmp_path / "cli.json"
    assert legacy.main(["backfill", "--report", str(report), "--batch-size", "10"]) == 0
    out = capsys.readouterr()
    assert "backfill complete" in out.out and "[indexes]" in out.err
    assert json.loads(report.read_text())["users"]["inserted"] == 1
    assert legacy.main(["verify"]) == 0
    assert "0 difference(s)" in capsys.readouterr().out
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'other@example.com'")
    assert legacy.main(["verify"]) == 1
    assert 'user:cli email: redis="cli@example.com"' in capsys.readouterr().out
    assert legacy.main(["repair"]) == 0
    with psycopg.connect(direct_database_url, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO legacy_repairs (key, kind, "userId", "updatedAt") '
            "VALUES ('saved-search:bad', 'saved_search', 'cli', now())"
        )
    assert legacy.main(["repair"]) == 1  # a mark it cannot copy stays, and says so
    assert "failed 1" in capsys.readouterr().out
    monkeypatch.delenv("UPSTASH_REDIS_REST_TOKEN")
    with pytest.raises(SystemExit, match="UPSTASH_REDIS_REST_TOKEN"):
        legacy.main(["verify"])


@pytest.mark.parametrize("redis_answers", ["refused", "never"])
def test_the_module_entry_fails_in_one_line_as_keyflash_legacy_does(
    redis_answers: str, direct_database_url: str, tmp_path: Path
) -> None:
    """s51t6 D4: `python -m devkit.legacy backfill`, the command the docs give, ends as
    `keyflash legacy` does: one `keyflash:` line and exit 1 when Redis refuses the connection,
    `interrupted` and 130 on Ctrl-C, never a traceback; the report is written either way."""
    report = tmp_path / "r.json"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        if redis_answers == "never":
            listener.listen()
        child = subprocess.Popen(
            [sys.executable, "-m", "devkit.legacy", "backfill", "--report", str(report)],
            cwd=ROOT,
            env=child_env(
                UPSTASH_REDIS_REST_URL=f"http://127.0.0.1:{listener.getsockname()[1]}",
                UPSTASH_REDIS_REST_TOKEN="token",
                DATABASE_URL=direct_database_url,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A job a non-interactive shell starts in the background (a CI runner's) ignores
            # SIGINT, and so would the child: Python then installs no KeyboardInterrupt.
            preexec_fn=_default_sigint,
        )
        if redis_answers == "never":
            connection, _ = listener.accept()  # its first SCAN waits for an answer: Ctrl-C
            child.send_signal(signal.SIGINT)
            connection.close()
        out, err = child.communicate(timeout=120)
    expected = {
        "refused": (1, "keyflash: ConnectError: [Errno 111] Connection refused "
                    "(run with --debug for the traceback)"),
        "never": (130, "keyflash: interrupted"),
    }  # fmt: skip
    assert (child.returncode, err.strip()) == expected[redis_answers], err
    assert out == ""
    assert json.loads(report.read_text())["complete"] is False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_row_refused_inside_a_batch_is_left_out_and_the_rest_written(db_env: str) -> None:
    """The pre-checks catch known conflicts; a race (an owner deleted meanwhile) or a value
    Postgres cannot store still only costs the offending rows: the batch is retried row by
    row, a savepoint each."""
    from shared import db
    from shared.legacy.mapping import user_row
    from shared.legacy.schemas import UserData
    from shared.repositories import legacy_import

    record = UserData.model_validate(user_record("owner", "o@example.com", created=NOW))
    db.run(lambda conn: legacy_import.upsert_users(conn, [user_row(record, legacy.Counters(), NOW)],
                                                overwrite=True))  # fmt: skip
    rows = [
        legacy.saved_search_row(
            parse_saved_search(
                keys.saved_search(owner, sid),
                json.dumps(search_record(owner, sid, created=NOW)),
                original_rules=True,
            )
        )
        for owner, sid in (("owner", str(uuid.uuid4())), ("nobody", str(uuid.uuid4())))
    ]
    rows.append({**rows[0], "id": str(uuid.uuid4()), "name": "NUL \u0000 in a name"})
    written, refused = legacy._write(legacy_import.upsert_saved_searches, rows)
    assert written == legacy.Upserted(inserted=1)
    assert refused == [
        (rows[1]["id"], "conflict", "the owner has no user row"),
        (rows[2]["id"], "invalid", "Postgres cannot store a value of it (SQLSTATE 22P05)"),
    ]


def test_a_checkpoint_from_another_version_is_refused(redis_client: Redis, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    default_checkpoint(report).write_text(json.dumps({"version": 0, "phase": "users"}))
    with pytest.raises(ValueError, match="not a checkpoint this version can resume"):
        backfill(redis_client, report_path=report)


# --- erasure ------------------------------------------------------------------------------------


def test_erase_user_keys_deletes_every_legacy_key_of_the_user_and_only_those(
    redis_client: Redis,
) -> None:
    created = NOW - timedelta(days=3)
    w = Writer(redis_client)
    gone = user_record("gone", "Gone@Example.com", created=created, tier="pro", customer="cus_g")
    stays = user_record("stays", "stays@example.com", created=created, customer="cus_s")
    write_user(w, gone)
    write_user(w, stays)
    sid, unindexed, theirs = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    write_search(w, search_record("gone", sid, created=created))
    write_search(w, search_record("gone", unindexed, created=created), indexed=False)
    write_search(w, search_record("stays", theirs, created=created))
    w.set(keys.usage("gone", NOW), "5")
    w.set(keys.usage("gone", NOW - timedelta(days=35)), "9")
    w.set(keys.trial_usage("gone", created), "3")
    w.set(keys.usage("stays", NOW), "7")
    w.set(keys.lock("gone"), "1")
    w.set(keys.email("old-address@example.com"), "stays")  # not ours to delete
    w.flush()
    before = set(scan_all(redis_client))

    deleted = erase_user_keys(redis_client, "gone", "old-address@example.com", "cus_g")

    remaining = set(scan_all(redis_client))
    assert {k for k in remaining if "gone" in k.lower()} == set()
    assert before - remaining == {
        keys.user("gone"), keys.email("gone@example.com"), keys.stripe("cus_g"),
        keys.saved_searches("gone"), keys.saved_search("gone", sid),
        keys.saved_search("gone", unindexed), keys.usage("gone", NOW),
        keys.usage("gone", NOW - timedelta(days=35)), keys.trial_usage("gone", created),
        keys.lock("gone"),
    }  # fmt: skip
    assert deleted == len(before - remaining)
    assert erase_user_keys(redis_client, "gone", "gone@example.com", "cus_g") == 0


# --- schemas and keys (no stores) -----------------------------------------------------------------


def test_key_builders_use_utc_and_the_original_shapes() -> None:
    from datetime import timezone

    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # Dec 1 UTC
    assert keys.usage("u", late) == "usage:u:2026-12"
    assert keys.trial_usage("u", late) == "trial-usage:u:2026-12-01"
    assert keys.email("MiXed@Example.COM") == "email:mixed@example.com"
    assert keys.saved_search_ids_of("saved-search:user_1:abc") == ("user_1", "abc")
    assert keys.saved_search_ids_of("saved-searches:user_1") is None
    assert keys.glob_escape("a*b?[c]") == r"a\*b\?\[c\]"
    late_utc = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    assert counter_ttl(next_month_start(late_utc), late_utc) == 3600


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"keywordsUsedThisMonth": "3"}, "keywordsUsedThisMonth: Value error, must be a number"),
        ({"keywordsUsedThisMonth": 2.5}, "must be an integer"),
        ({"keywordsUsedThisMonth": -1}, "greater than or equal to 0"),
        ({"createdAt": "2026-11-20T12:00:00+00:00"}, "createdAt: Value error, must be an ISO"),
        ({"createdAt": "2026-11-20T12:00:00Z\n"}, "createdAt: Value error, must be an ISO"),
        ({"email": "u@example.com\n"}, "email: Value error, must be a valid email address"),
        ({"keywordsUsedThisMonth": 10**400}, "must be a finite number"),  # JS: Infinity
        ({"subscriptionId": None}, "subscriptionId: null is not allowed"),
        ({"subscriptionStatus": "trialing"}, "subscriptionStatus"),
        ({"clerkUserId": ""}, "clerkUserId"),
    ],
)
def test_user_schema_is_the_originals(change: dict[str, Any], fragment: str) -> None:
    record = {**user_record("u", "u@example.com", created=NOW), **change}
    with pytest.raises(LegacyRecordError) as error:
        parse_user("user:u", json.dumps(record))
    assert fragment in error.value.reason


def test_a_number_too_long_for_python_is_malformed_json_not_a_crash() -> None:
    record = json.dumps(user_record("u", "u@example.com", created=NOW))
    raw = record.replace('"keywordsUsedThisMonth": 0', '"keywordsUsedThisMonth": 1' + "0" * 5000)
    with pytest.raises(LegacyRecordError) as error:
        parse_user("user:u", raw)
    assert error.value.reason == "malformed JSON (a number too long to read)"


def test_only_copies_check_what_postgres_can_store() -> None:
    """The bridge reads records the original reads fine; only a copy into Postgres refuses
    NUL and lone surrogates (`storable`)."""
    record = {**user_record("u", "u@example.com", created=NOW), "stripeCustomerId": "cus_\u0000"}
    parsed = parse_user("user:u", json.dumps(record))
    with pytest.raises(LegacyRecordError) as error:
        storable("user:u", parsed)
    assert error.value.reason == "holds a NUL character, which Postgres cannot store"


def test_user_schema_accepts_what_js_wrote() -> None:
    record = {
        **user_record("u", "u@example.com", created=NOW),
        "keywordsUsedThisMonth": 3.0,  # a JS number
        "createdAt": "2026-11-20T12:00:00Z",  # no fraction
        "updatedAt": "2026-11-20T12:00:00.1234567Z",  # more than milliseconds
        "unknown": "dropped",
    }
    parsed = parse_user("user:u", json.dumps(record))
    assert parsed.keywordsUsedThisMonth == 3
    assert parsed.updatedAt == datetime(2026, 11, 20, 12, 0, 0, 123_000, tzinfo=UTC)
    assert iso_ms(parsed.createdAt) == "2026-11-20T12:00:00.000Z"


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("2026-12-04T23:59:59.9996Z", "2026-12-04T23:59:59.999Z"),
        ("2026-12-04T23:59:59.123456789012Z", "2026-12-04T23:59:59.123Z"),
        ("2026-12-04T23:59:59.0009999Z", "2026-12-04T23:59:59.000Z"),
        ("2026-12-04T23:59:59.5Z", "2026-12-04T23:59:59.500Z"),
    ],
)
def test_timestamps_are_read_as_js_date_reads_them(written: str, read: str) -> None:
    """Node's `new Date(s).toISOString()` for each (V8 keeps the first three fraction digits):
    a trial started a hair before midnight names its counter by that day, as the original
    named it."""
    record = {**user_record("u", "u@example.com", created=NOW), "trialStartedAt": written}
    parsed = parse_user("user:u", json.dumps(record))
    assert iso_ms(parsed.trialStartedAt) == read
    assert keys.trial_usage("u", parsed.trialStartedAt) == f"trial-usage:u:{read[:10]}"


def test_saved_search_integer_rule_applies_only_under_the_original_rules() -> None:
    record = search_record("u", str(uuid.uuid4()), created=NOW, results=[keyword_result("k", 1.5)])
    key = keys.saved_search("u", record["id"])
    assert parse_saved_search(key, json.dumps(record), original_rules=False).results
    with pytest.raises(LegacyRecordError, match=r"results\.0\.searchVolume"):
        parse_saved_search(key, json.dumps(record), original_rules=True)


@pytest.mark.parametrize("field", ["name", "description"])
def test_a_lone_surrogate_in_a_length_checked_field_gets_the_documented_reason(field: str) -> None:
    """JS counts a lone surrogate as one code unit, so the length rule passes; the record is
    then refused by `storable` with the documented reason, which quotes no value and no
    position (not a Python codec message)."""
    record = search_record("u", str(uuid.uuid4()), created=NOW, name="trail")
    record[field] = "trail \ud83d"
    key = keys.saved_search("u", record["id"])
    parsed = parse_saved_search(key, json.dumps(record), original_rules=True)
    with pytest.raises(LegacyRecordError) as error:
        storable(key, parsed)
    assert error.value.reason == "holds an unpaired UTF-16 surrogate, which Postgres cannot store"


def test_searches_the_original_never_showed_are_reported_not_copied(
    redis_client: Redis, db_env: str, direct_database_url: str, tmp_path: Path
) -> None:
    """The original listed `SMEMBERS saved-searches:{id}` only: an item its index does not
    list (a delete whose DEL failed after the SREM) or whose index is not a set was never
    shown, so it is not imported as a live search; the report lists its key as `unindexed`
    (no value), so an operator can still recover it, and verify does not call it missing."""
    created = NOW - timedelta(days=3)
    w = Writer(redis_client)
    write_user(w, user_record("shown", "shown@example.com", created=created))
    write_user(w, user_record("broken", "broken@example.com", created=created))
    listed = [str(uuid.uuid4()) for _ in range(2)]
    deleted = [str(uuid.uuid4()) for _ in range(2)]
    for n, sid in enumerate(listed):
        write_search(w, search_record("shown", sid, created=created + timedelta(minutes=n)))
    for sid in deleted:  # newer than every listed one: they would head the list
        record = search_record("shown", sid, created=created + timedelta(days=1), name="secret")
        write_search(w, record, indexed=False)
    hidden = str(uuid.uuid4())
    write_search(w, search_record("broken", hidden, created=created), indexed=False)
    w.set(keys.saved_searches("broken"), "not a set")
    w.flush()

    report = backfill(redis_client, report_path=tmp_path / "r.json", now=NOW)
    assert report.saved_searches == Tally(inserted=2)
    assert report.unindexed_searches == 3
    reasons = {q.key: q.reason for q in report.quarantined if q.kind == "unindexed"}
    assert reasons == {
        **{
            keys.saved_search("shown", sid): "saved-searches:shown does not list it, "
            "so the original never showed it; not copied"
            for sid in deleted
        },
        keys.saved_search("broken", hidden): "saved-searches:broken is not a set, "
        "so the original never showed it; not copied",
    }
    assert "secret" not in json.dumps(report.to_dict())
    assert report.to_dict()["quarantined_by_kind"]["unindexed"] == 3
    with psycopg.connect(direct_database_url) as conn:
        rows = conn.execute('SELECT id FROM saved_searches ORDER BY "updatedAt" DESC').fetchall()
    assert [sid for (sid,) in rows] == listed[::-1]
    assert verify(redis_client, echo=lambda line: None, now=NOW) == []
