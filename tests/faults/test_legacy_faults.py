"""STORAGE_MODE=fallback when Redis stalls at a legacy user's sign-in
(docs/migration-from-redis.md#dual-write-guarantees).

Redis is a real process: the Upstash REST emulator (over a private redis-server when one is
installed), SIGSTOPped so that it accepts connections and never answers, slower than
`REDIS_TIMEOUT_S`. The legacy record is written and read back through the real SDK.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from upstash_redis import Redis

from devkit._host import wait_for
from shared import config, redis
from shared.clock import iso_ms, utcnow
from shared.legacy import keys
from tests.support.http import Caller, Keys
from tests.support.legacy import Writer, snapshot_values, user_record, write_user
from tests.support.processes import UpstashProcess, private_upstash

pytestmark = pytest.mark.faults


@pytest.fixture
def database_url(direct_database_url: str, clean_tables: None) -> str:
    """One database lane is enough: Redis is what fails here."""
    return direct_database_url


@pytest.fixture
def upstash_process(tmp_path: Path) -> Iterator[UpstashProcess]:
    with private_upstash(tmp_path) as upstash:
        yield upstash


@pytest.fixture
def fallback(
    api_env: Keys, upstash_process: UpstashProcess, monkeypatch: pytest.MonkeyPatch
) -> Caller:
    """A warm container in fallback mode on that emulator."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", upstash_process.url)
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", upstash_process.token)
    monkeypatch.setenv("REDIS_TIMEOUT_S", "0.5")
    monkeypatch.setenv("STORAGE_MODE", "fallback")
    config.get_settings.cache_clear()
    redis.reset_redis()
    return Caller("lambda_v2", api_env)


def test_a_sign_in_during_a_stall_gets_a_new_trial_and_never_overwrites_the_original_record(
    fallback: Caller,
    upstash_process: UpstashProcess,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Redis cannot say who the user is, so they get a new trial (as documented); the copy of
    that new account owed to `user:{id}` finds the original's record of another account (its
    `createdAt`) and leaves it, and its trial counter, exactly as they were."""
    from shared.legacy import bridge

    client = Redis(url=upstash_process.url, token=upstash_process.token)
    uid = f"user_{uuid.uuid4().hex[:12]}"
    created = utcnow() - timedelta(days=3)
    w = Writer(client)
    write_user(w, user_record(uid, f"{uid}@example.com", created=created))
    w.set(keys.trial_usage(uid, created), "250")
    w.flush()
    legacy = [keys.user(uid), keys.email(f"{uid}@example.com"), keys.trial_usage(uid, created)]
    before = snapshot_values(client, legacy)

    upstash_process.freeze()
    me = fallback("me", "GET", "/api/me", user=uid)
    upstash_process.thaw()
    assert wait_for(upstash_process.answers, timeout=30)

    assert me.status == 200, me.text
    assert me.json["usage"]["total"] == 0  # a new trial: Redis could not be read
    assert me.json["trialEndsAt"] > iso_ms(created + timedelta(days=7))
    summary = bridge.repair_pending()
    assert (summary.repaired, summary.failed) == (0, 1)
    assert snapshot_values(client, legacy) == before
    assert admin_conn.execute("SELECT key, error FROM legacy_repairs").fetchall() == [
        (
            keys.user(uid),
            "legacy key left untouched: createdAt differs from the user row's: another "
            "account's record (the original never changes it), never overwritten",
        )
    ]
